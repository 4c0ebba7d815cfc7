"""Observers: the torch side. Hooks reduce tensors to a few numbers *on the device*;
the numbers cross to the host once per sampled step, in one transfer per device.

Life of a watched step (``Recorder``):

* always on, every step (cheap: no per-layer hooks, no host sync):
  - the tensor ``.backward()`` is called on (the loss) is kept, detached;
  - the gradient L2 norm of every parameter, in one ``torch._foreach_norm`` call;
  - parameter ``_version`` counters (host ints) tell whether an update happened.
* sampled steps only (``dense_steps`` first steps, then every ``sample_every``-th, and
  every step for a while after a non-finite value shows up): forward hooks on every
  module (registered when the step starts, *removed* when it ends, so unsampled steps
  pay no hook dispatch), input/label statistics, the loss's autograd graph, update
  norms from a parameter snapshot around the update.
* sync points (end of each sampled step, and the end of ``watch()``): everything
  pending is concatenated and moved to the host in one ``.tolist()``.

Invariants the hooks rely on:
* hooks hold module *paths* and a weak reference to the model, never modules;
* a hook never raises into the user's forward/backward: a failing observer is switched
  off and recorded in ``Observations.notes``;
* nothing here changes a tensor the user sees, consumes RNG, or calls ``.item()``.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ._patching import SharedPatch
from ._observations import (
    ActivationRecord,
    InputRecord,
    LabelRecord,
    LossGraph,
    ModuleMeta,
    NonFiniteEvent,
    Observations,
    ParamMeta,
    StepRecord,
)

__all__ = ["Recorder", "Schedule", "categorize", "backward_interceptor", "scaler_interceptor"]


# --------------------------------------------------------------------------------------
# Module categories (the only place that looks at torch classes)
# --------------------------------------------------------------------------------------
_RELU = (nn.ReLU, nn.ReLU6)
_NORM = (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_ACT = (
    nn.GELU, nn.SiLU, nn.ELU, nn.LeakyReLU, nn.PReLU, nn.SELU, nn.CELU, nn.Mish,
    nn.Softplus, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softmax, nn.LogSoftmax,
)


def categorize(module: nn.Module) -> str:
    if isinstance(module, _RELU):
        return "relu"
    if isinstance(module, nn.Sigmoid):
        return "sigmoid"
    if isinstance(module, nn.Tanh):
        return "tanh"
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return "batchnorm"
    if isinstance(module, (*_NORM, nn.modules.instancenorm._InstanceNorm)):
        return "norm"
    if isinstance(module, (nn.Linear, nn.Bilinear)):
        return "linear"
    if isinstance(module, _CONV):
        return "conv"
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return "embedding"
    if isinstance(module, nn.modules.dropout._DropoutNd):
        return "dropout"
    if isinstance(module, _ACT):
        return "activation"
    if isinstance(module, nn.modules.loss._Loss):
        return "loss"
    if isinstance(module, (nn.RNNBase, nn.RNNCellBase)):
        return "recurrent"
    if isinstance(module, (nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd,
                           nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd,
                           nn.modules.pooling._LPPoolNd)):
        return "pool"
    if isinstance(module, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
        return "container"
    if next(module.children(), None) is not None:
        return "container"
    return "other"


def _is_stock(module: nn.Module) -> bool:
    return type(module).__module__.startswith("torch.")


def _fan_in(param: torch.Tensor) -> int | None:
    if param.dim() < 2:
        return None
    receptive = 1
    for s in param.shape[2:]:
        receptive *= int(s)
    return int(param.shape[1]) * receptive


# --------------------------------------------------------------------------------------
# Process-wide wrappers (installed while a Recorder listens; see _patching.SharedPatch)
# --------------------------------------------------------------------------------------
def _install_backward(patch: SharedPatch) -> list[tuple[Any, str, Callable[..., Any]]]:
    """``Tensor.backward`` calls ``torch.autograd.backward`` through the module
    attribute, so wrapping that attribute sees every ``loss.backward()`` and
    ``torch.autograd.backward(loss)`` — whatever code computed the loss."""
    original = torch.autograd.backward

    def backward(tensors: Any, *args: Any, **kwargs: Any) -> Any:
        listeners = patch.listeners
        for lst in listeners:
            lst.before_backward(tensors)
        result = original(tensors, *args, **kwargs)
        for lst in listeners:
            lst.after_backward(tensors)
        return result

    return [(torch.autograd, "backward", backward)]


def _install_scaler(patch: SharedPatch) -> list[tuple[Any, str, Callable[..., Any]]] | None:
    """GradScaler.scale (to report the loss unscaled) and GradScaler.update (the end of
    every AMP step, including the ones whose optimizer step the scaler skipped because
    of inf/NaN gradients)."""
    try:
        from torch.amp.grad_scaler import GradScaler
    except Exception:  # torch without torch.amp.GradScaler: nothing to intercept
        return None
    orig_scale, orig_update = GradScaler.__dict__["scale"], GradScaler.__dict__["update"]

    def scale(scaler: Any, outputs: Any) -> Any:
        result = orig_scale(scaler, outputs)
        if isinstance(result, torch.Tensor) and result is not outputs:
            for lst in patch.listeners:
                lst.on_scaled(result, scaler)
        return result

    def update(scaler: Any, *args: Any, **kwargs: Any) -> Any:
        for lst in patch.listeners:
            lst.on_scaler_update(scaler)
        return orig_update(scaler, *args, **kwargs)

    return [(GradScaler, "scale", scale), (GradScaler, "update", update)]


backward_interceptor = SharedPatch(_install_backward)
scaler_interceptor = SharedPatch(_install_scaler)


# --------------------------------------------------------------------------------------
# Schedule
# --------------------------------------------------------------------------------------
@dataclass
class Schedule:
    """Which steps get the full (hooked) treatment."""

    dense_steps: int = 4
    sample_every: int = 20
    trace_steps_after_nonfinite: int = 3

    def __post_init__(self) -> None:
        if self.sample_every < 1 or self.dense_steps < 0:
            raise ValueError(
                f"sample_every must be >= 1 and dense_steps >= 0 (got {self.sample_every}, "
                f"{self.dense_steps})"
            )

    def sampled(self, step: int) -> bool:
        return step < self.dense_steps or step % self.sample_every == 0


# --------------------------------------------------------------------------------------
# Helpers on tensors (device-side, no sync)
# --------------------------------------------------------------------------------------
def _flatten_tensors(obj: Any, prefix: str = "", depth: int = 0) -> list[tuple[str, torch.Tensor]]:
    """Tensors inside outputs that are tensors, tuples, lists, dicts or dataclass-likes,
    labelled with their position ("[0]", "['boxes']")."""
    if isinstance(obj, torch.Tensor):
        return [(prefix, obj)]
    if depth > 3:
        return []
    out: list[tuple[str, torch.Tensor]] = []
    if isinstance(obj, (tuple, list)):
        for i, v in enumerate(obj):
            out.extend(_flatten_tensors(v, f"{prefix}[{i}]", depth + 1))
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.extend(_flatten_tensors(v, f"{prefix}[{k!r}]", depth + 1))
    return out


def _clone_tree(obj: Any) -> Any:
    """Detached clones of the tensors in a (nested) structure; other values as they are."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, tuple):
        return tuple(_clone_tree(v) for v in obj)
    if isinstance(obj, list):
        return [_clone_tree(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _clone_tree(v) for k, v in obj.items()}
    return obj


def _float_tensors(obj: Any) -> list[tuple[str, torch.Tensor]]:
    return [(k, t) for k, t in _flatten_tensors(obj) if t.is_floating_point() and t.numel() > 0]


_NAN = float("nan")


def _tensor_stats(x: torch.Tensor) -> torch.Tensor:
    """[mean, std] of ``x`` in float32. A non-finite element makes the mean non-finite,
    which is how non-finite outputs are detected.

    On CUDA one fused Welford reduction (``var_mean``: one kernel). On CPU ``var_mean``
    is ~100x slower than a plain sum (measured: 5 ms vs 0.05 ms on 1M floats), so the
    mean comes from a sum and the std from the norm of the centred values (two-pass, so
    no cancellation when |mean| >> std)."""
    xf = x.detach()
    if xf.dtype not in (torch.float32, torch.float64):
        xf = xf.float()
    if xf.is_cuda:
        var, mean = torch.var_mean(xf, correction=0)
        return torch.stack([mean.float(), var.float().sqrt()])
    n = max(xf.numel(), 1)
    mean = xf.sum() / n
    std = torch.linalg.vector_norm(xf - mean) / math.sqrt(n)
    return torch.stack([mean.float(), std.float()])


# --------------------------------------------------------------------------------------
# Pending device data, resolved at sync points
# --------------------------------------------------------------------------------------
@dataclass
class _Pending:
    """Device tensors waiting for the next sync, with what to do with their values."""

    tensors: list[torch.Tensor] = field(default_factory=list)
    sinks: list[Callable[[list[float]], None]] = field(default_factory=list)

    def add(self, tensor: torch.Tensor, sink: Callable[[list[float]], None]) -> None:
        self.tensors.append(tensor.detach().reshape(-1))
        self.sinks.append(sink)

    def resolve(self) -> None:
        if not self.tensors:
            return
        tensors, sinks = self.tensors, self.sinks
        self.tensors, self.sinks = [], []
        by_device: dict[torch.device, list[int]] = {}
        for i, t in enumerate(tensors):
            by_device.setdefault(t.device, []).append(i)
        values: list[list[float]] = [[] for _ in tensors]
        for idxs in by_device.values():
            flat = torch.cat([tensors[i].to(torch.float64) for i in idxs])
            host = flat.tolist()  # the one device->host transfer for this device
            pos = 0
            for i in idxs:
                n = tensors[i].numel()
                values[i] = host[pos : pos + n]
                pos += n
        for sink, vals in zip(sinks, values):
            sink(vals)


# --------------------------------------------------------------------------------------
# Loss graph analysis (host-side walk over grad_fn nodes; no device work)
# --------------------------------------------------------------------------------------
_ANCHORS = {
    "NllLossBackward0": "nll",
    "NllLoss2DBackward0": "nll",
    "NllLoss2dBackward0": "nll",
    "BinaryCrossEntropyBackward0": "bce",
    "BinaryCrossEntropyWithLogitsBackward0": "bce_logits",
    "MseLossBackward0": "mse",
    "L1LossBackward0": "l1",
    "SmoothL1LossBackward0": "smooth_l1",
    "HuberLossBackward0": "huber",
    "KlDivBackward0": "kl_div",
}
_PASS_THROUGH = (
    "ViewBackward0", "ReshapeAliasBackward0", "UnsafeViewBackward0", "PermuteBackward0",
    "TransposeBackward0", "TransposeBackward1", "UnsqueezeBackward0", "SqueezeBackward0",
    "SqueezeBackward1", "SqueezeBackward2", "CloneBackward0", "ToCopyBackward0",
    "ExpandBackward0", "SliceBackward0", "SelectBackward0", "ContiguousBackward0",
)


def _first_input(node: Any) -> Any:
    for nxt, _ in getattr(node, "next_functions", ()):  # pragma: no branch
        if nxt is not None:
            return nxt
    return None


def _skip_views(node: Any) -> Any:
    for _ in range(16):
        if node is None or node.name() not in _PASS_THROUGH:
            return node
        node = _first_input(node)
    return node


def analyse_loss_graph(loss: torch.Tensor, max_nodes: int = 400) -> tuple[LossGraph, Any]:
    """What kind of loss this is and what fed it. Returns (LossGraph, nll_node or None)."""
    root = loss.grad_fn
    if root is None:
        return LossGraph(kind="other"), None
    anchors: list[tuple[str, Any]] = []
    seen: set[int] = set()
    stack = [root]
    names: list[str] = []
    reaches_param = False
    log_softmaxes: list[Any] = []
    while stack and len(seen) < max_nodes:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        name = node.name()
        if len(names) < 12:
            names.append(name)
        kind = _ANCHORS.get(name)
        if kind is not None:
            anchors.append((kind, node))
            continue
        if name == "LogSoftmaxBackward0":
            log_softmaxes.append(node)
            continue  # label smoothing's second term ends here
        if name.endswith("AccumulateGrad"):  # "torch::autograd::AccumulateGrad" in torch 2.13
            reaches_param = True
            continue
        for nxt, _ in node.next_functions:
            if nxt is not None:
                stack.append(nxt)
    if not anchors:
        if log_softmaxes:
            # -(target * log_softmax(x)).sum(): a cross-entropy with soft (probability)
            # targets, written by hand or F.cross_entropy with probability targets.
            feeders = [_skip_views(_first_input(n)) for n in log_softmaxes]
            fed = "softmax" if any(f is not None and f.name() == "SoftmaxBackward0" for f in feeders) else "log_softmax"
            return LossGraph(kind="soft_cross_entropy", fed_by=fed, nodes=names, multi_term=reaches_param), None
        return LossGraph(kind="other", nodes=names), None
    multi = len(anchors) > 1 or reaches_param
    kind, node = anchors[0]
    graph = LossGraph(kind=kind, multi_term=multi, nodes=names)
    try:
        graph.input_shape = tuple(int(d) for d in node._saved_self.shape)
    except Exception:  # not saved by this node type
        pass
    if kind == "nll":
        feeder = _skip_views(_first_input(node))
        fname = feeder.name() if feeder is not None else None
        if fname == "LogSoftmaxBackward0":
            upstream = _skip_views(_first_input(feeder))
            uname = upstream.name() if upstream is not None else None
            graph.kind = "cross_entropy"
            graph.fed_by = "softmax" if uname == "SoftmaxBackward0" else (
                "sigmoid" if uname == "SigmoidBackward0" else "log_softmax")
        elif fname == "LogBackward0":
            upstream = _skip_views(_first_input(feeder))
            graph.fed_by = "log_of_softmax" if upstream is not None and upstream.name() == "SoftmaxBackward0" else "log"
        else:
            graph.fed_by = "logits"
        try:
            logp = node._saved_self
            graph.n_classes = int(logp.shape[1]) if logp.dim() >= 2 else int(logp.shape[0])
            graph.reduction = {0: "none", 1: "mean", 2: "sum"}.get(int(node._saved_reduction))
        except Exception:  # saved tensors freed or layout unknown: leave unknown
            pass
        return graph, node
    if kind in ("bce_logits", "bce"):
        feeder = _skip_views(_first_input(node))
        fname = feeder.name() if feeder is not None else None
        graph.fed_by = "sigmoid" if fname == "SigmoidBackward0" else (
            "softmax" if fname == "SoftmaxBackward0" else "logits")
        return graph, node
    return graph, node


# --------------------------------------------------------------------------------------
# The recorder
# --------------------------------------------------------------------------------------
class Recorder:
    """Owns every hook handle of one watch; produces ``Observations``."""

    def __init__(
        self,
        model: nn.Module,
        *,
        optimizers: Sequence[torch.optim.Optimizer] = (),
        loss_fn: Any = None,
        schedule: Schedule | None = None,
        discover_optimizers: bool = True,
        on_sync: Callable[[Observations, list[StepRecord]], None] | None = None,
    ) -> None:
        self._model_ref = weakref.ref(model)
        self._optimizers = [weakref.ref(o) for o in optimizers]
        self._loss_fn = loss_fn
        self.schedule = schedule or Schedule()
        self._discover = discover_optimizers and not optimizers
        self._on_sync = on_sync
        self.obs = Observations()
        self._stack: contextlib.ExitStack | None = None
        self._step_hooks: list[Any] = []
        self._pending = _Pending()
        self._step = 0
        self._cur: StepRecord | None = None
        self._pending_close = False
        self._optimizer_mode = bool(optimizers)
        self._param_ids: dict[int, str] = {}
        self._module_ids: dict[int, str] = {}
        self._params: list[tuple[str, torch.Tensor]] = []
        self._version_sum = 0
        self._updated_since_backward = False
        self._backwards_in_step = 0
        self._call_counter = 0
        self._snapshot: tuple[list[str], list[torch.Tensor]] | None = None
        self._relu_active: dict[str, torch.Tensor] = {}
        self._relu_samples: dict[str, int] = {}
        self._trace_until = -1
        self._scanned = 0  # records already scanned for non-finite values
        self._thinned = False
        self._last_armed_for = -1
        self._failed = False
        self._in_root = 0
        self._first_sampled_forward_done = False
        self._unregistered: dict[int, dict[str, Any]] = {}
        self._global_probe: list[Any] = []
        self._unknown_depth = 0
        self._finished_steps: list[StepRecord] = []
        self._explicit_losses: set[int] = set()  # steps whose loss came from log_loss()
        self._seen_order: set[str] = set()
        # The first training batch seen (inputs as passed to the model, and the class
        # targets when the loss graph exposes them), cloned once, for the experiments.
        self.captured: dict[str, Any] = {}
        self._scaled: tuple[int, Any] | None = None  # (id of the scaled loss, scale tensor)
        self._stepped_since_backward = False
        self._opt_stepped = False

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def model(self) -> nn.Module:
        model = self._model_ref()
        if model is None:  # pragma: no cover - the Doctor holds the model while watching
            raise RuntimeError("the watched model was garbage-collected")
        return model

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        """The optimizers given or discovered (stepping this model's parameters)."""
        return [o for o in (r() for r in self._optimizers) if o is not None]

    @property
    def steps_completed(self) -> int:
        return self._step

    def attach(self) -> None:
        model = self.model
        self._stack = contextlib.ExitStack()
        try:
            self._describe(model)
            self._stack.callback(self._remove_step_hooks)
            h = model.register_forward_pre_hook(self._root_pre, with_kwargs=True)
            self._stack.callback(h.remove)
            h = model.register_forward_hook(self._root_post, always_call=True)
            self._stack.callback(h.remove)
            backward_interceptor.add(self)
            self._stack.callback(backward_interceptor.remove, self)
            scaler_interceptor.add(self)
            self._stack.callback(scaler_interceptor.remove, self)
            for ref in self._optimizers:
                opt = ref()
                if opt is None:
                    continue
                h1 = opt.register_step_pre_hook(self._opt_pre)
                h2 = opt.register_step_post_hook(self._opt_post)
                self._stack.callback(h1.remove)
                self._stack.callback(h2.remove)
            if self._discover:
                from torch.optim.optimizer import (
                    register_optimizer_step_post_hook,
                    register_optimizer_step_pre_hook,
                )

                h1 = register_optimizer_step_pre_hook(self._global_opt_pre)
                h2 = register_optimizer_step_post_hook(self._global_opt_post)
                self._stack.callback(h1.remove)
                self._stack.callback(h2.remove)
            if self._loss_fn is not None and isinstance(self._loss_fn, nn.Module):
                h = self._loss_fn.register_forward_pre_hook(self._loss_pre)
                self._stack.callback(h.remove)
            self._begin_step()
        except BaseException:
            self.detach()
            raise

    def detach(self) -> None:
        """Remove every hook (idempotent; runs on exceptions too)."""
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()
        self._remove_step_hooks()
        self._remove_global_probe()

    def finish(self) -> Observations:
        """Close the open step, sync, and return the observations (after detach)."""
        try:
            self._remove_step_hooks()
            if self._cur is not None and (self._cur.backward_calls or self._pending_close):
                self._close_step(begin_next=False)
            self._cur = None
            self._sync()
            self._finalize()
        except Exception as exc:  # evaluating must never raise into the user's code
            self.obs.notes.append(f"observer failed while finishing: {exc!r}")
        # Drop every reference to the user's tensors (parameters, snapshots).
        self._params = []
        self._snapshot = None
        self._relu_active.clear()
        self._pending = _Pending()
        return self.obs

    # -- description of the model (host side, once) -------------------------------------
    def _describe(self, model: nn.Module) -> None:
        obs = self.obs
        obs.model_class = type(model).__name__
        in_opt: set[int] | None = None
        opts = [r() for r in self._optimizers]
        opts = [o for o in opts if o is not None]
        if opts:
            in_opt = {id(p) for o in opts for g in o.param_groups for p in g["params"]}
            obs.has_optimizer = True
            obs.optimizers = [self._describe_optimizer(o) for o in opts]
        for path, module in model.named_modules():
            self._module_ids[id(module)] = path
            obs.modules[path] = ModuleMeta(
                path=path,
                class_name=type(module).__name__,
                category=categorize(module),
                is_leaf=next(module.children(), None) is None,
                n_params=sum(p.numel() for p in module.parameters(recurse=False)),
                stock=_is_stock(module),
                training=module.training,
            )
        weights = []
        for name, p in model.named_parameters():
            module_path, _, leaf = name.rpartition(".")
            cat = obs.modules[module_path].category if module_path in obs.modules else "other"
            role = "weight" if leaf == "weight" and p.dim() >= 2 else ("bias" if leaf == "bias" else "other")
            meta = ParamMeta(
                name=name, module=module_path, shape=tuple(p.shape), numel=p.numel(),
                requires_grad=p.requires_grad,
                in_optimizer=None if in_opt is None else id(p) in in_opt,
                category=cat, role=role, fan_in=_fan_in(p),
            )
            obs.params[name] = meta
            self._param_ids[id(p)] = name
            self._params.append((name, p))
            if role == "weight" and cat in ("linear", "conv") and p.is_floating_point() and p.numel() > 1:
                weights.append((meta, p))
        obs.n_parameters = sum(m.numel for m in obs.params.values())
        obs.n_trainable = sum(m.numel for m in obs.params.values() if m.requires_grad)
        # Initial weight statistics: one stacked reduction, resolved at the first sync.
        if weights:
            with torch.no_grad():
                stats = []
                for meta, p in weights:
                    var, mean = torch.var_mean(p.detach().float(), correction=0)
                    spread = p.detach().amax() - p.detach().amin()
                    stats.append(torch.stack([var.sqrt(), mean, spread.float()]))
                flat = torch.stack(stats)
            metas = [m for m, _ in weights]

            def sink(vals: list[float], metas: list[ParamMeta] = metas) -> None:
                for i, m in enumerate(metas):
                    m.init_std, m.init_mean, spread = vals[3 * i : 3 * i + 3]
                    m.init_all_equal = spread == 0.0

            self._pending.add(flat, sink)
        self._version_sum = self._versions()

    def _describe_optimizer(self, opt: torch.optim.Optimizer) -> dict[str, Any]:
        groups = []
        for g in opt.param_groups:
            hp = {}
            for k, v in g.items():
                if k == "params":
                    continue
                if isinstance(v, (int, float, bool, str)) or v is None:
                    hp[k] = v
            hp["n_params"] = len(g["params"])
            groups.append(hp)
        return {"class": type(opt).__name__, "groups": groups}

    def _versions(self) -> int:
        return sum(p._version for _, p in self._params)

    # -- steps ---------------------------------------------------------------------------
    def _is_sampled(self, step: int) -> bool:
        return self.schedule.sampled(step) or step <= self._trace_until

    def _begin_step(self) -> None:
        self._step_outputs: dict[tuple[Any, ...], int] = {}
        sampled = self._is_sampled(self._step)
        self._cur = StepRecord(step=self._step, sampled=sampled)
        self._backwards_in_step = 0
        self._call_counter = 0
        if sampled:
            self._install_step_hooks()

    def _close_step(self, begin_next: bool = True) -> None:
        cur = self._cur
        if cur is None:
            return
        self._pending_close = False
        try:
            model = self._model_ref()
            if model is not None:
                cur.training = model.training
            if cur.sampled and self._snapshot is not None:
                self._measure_update()
            opts = [r() for r in self._optimizers]
            for o in opts:
                if o is not None and o.param_groups:
                    lr = o.param_groups[0].get("lr")
                    if isinstance(lr, (int, float)):
                        cur.lr = float(lr)
                    break
        finally:
            self._remove_step_hooks()
            self.obs.steps.append(cur)
            self._finished_steps.append(cur)
            if len(self.obs.steps) > self.max_records:
                self._thin_records()  # cheap no-op until unsampled records exceed the bound
            if cur.sampled:
                self.obs.sampled_steps += 1
                self._sync()
            self._step += 1
            if begin_next and self._stack is not None:
                self._begin_step()
            else:
                self._cur = None

    # Long runs: every sampled record is kept; unsampled ones (a loss and a gradient
    # norm each) are thinned in the older half once there are too many.
    max_records = 20000

    def _thin_records(self) -> None:
        steps = self.obs.steps
        plain = [r for r in steps if not r.sampled]
        if len(plain) <= self.max_records:
            return
        older = {id(r) for i, r in enumerate(plain[: len(plain) // 2])
                 if i % 2 and not r.grad_nonfinite and (r.loss is None or math.isfinite(r.loss))}
        self.obs.steps = [r for r in steps if id(r) not in older]
        self._scanned = max(0, self._scanned - (len(steps) - len(self.obs.steps)))
        if not self._thinned:
            self._thinned = True
            self.obs.notes.append("long run: the older per-step records (loss, gradient norm) were thinned; "
                                  "every sampled step is kept")

    def _sync(self) -> None:
        try:
            self._pending.resolve()
        except Exception as exc:
            self._observer_failed("sync", exc)
        self._scan_nonfinite()
        if self._on_sync is not None and self._finished_steps:
            done, self._finished_steps = self._finished_steps, []
            try:
                self._on_sync(self.obs, done)
            except Exception as exc:
                self.obs.notes.append(f"live reporter failed and was switched off: {exc!r}")
                self._on_sync = None

    def _scan_nonfinite(self) -> None:
        """After values reached the host: the first non-finite loss or gradient seen on a
        step arms full tracing of the next steps (the one that went bad may not have been
        sampled), once per new bad step."""
        for rec in self.obs.steps[self._scanned:]:
            bad = bool(rec.grad_nonfinite) or (rec.loss is not None and not math.isfinite(rec.loss))
            if bad and rec.step > self._last_armed_for:
                self._last_armed_for = rec.step
                self._trace_until = max(self._trace_until, self._step + self.schedule.trace_steps_after_nonfinite)
        self._scanned = len(self.obs.steps)

    def _observer_failed(self, where: str, exc: BaseException) -> None:
        self.obs.notes.append(f"observer '{where}' failed and was switched off: {exc!r}")
        self._failed = True
        self._remove_step_hooks()

    # -- per-step hooks ------------------------------------------------------------------
    def _install_step_hooks(self) -> None:
        if self._failed or self._stack is None:
            return
        model = self._model_ref()
        if model is None:
            return
        for path, module in model.named_modules():
            if path == "":
                continue  # the root has its persistent hooks
            self._step_hooks.append(
                module.register_forward_hook(self._make_fwd_hook(path), always_call=True)
            )

    def _remove_step_hooks(self) -> None:
        hooks, self._step_hooks = self._step_hooks, []
        for h in reversed(hooks):
            h.remove()

    def _make_fwd_hook(self, path: str) -> Callable[..., None]:
        recorder = self
        meta = self.obs.modules[path]
        category = meta.category

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if recorder._failed:
                return
            if not torch.is_grad_enabled():
                # e.g. a frozen trunk run under torch.no_grad() inside forward: it is
                # used, just not measured.
                cur = recorder._cur
                if cur is not None and cur.sampled:
                    recorder.obs.called_modules.add(path)
                return
            try:
                recorder._record_call(path, category, module, args, output)
            except Exception as exc:  # never raise into the user's forward
                recorder._observer_failed(f"forward hook on {path or 'model'}", exc)

        return hook

    def _record_call(self, path: str, category: str, module: nn.Module, args: Any, output: Any) -> None:
        cur = self._cur
        if cur is None or not cur.sampled:
            return
        outs = _float_tensors(output)
        if category == "loss" or not outs:
            self.obs.called_modules.add(path)
            return
        self.obs.called_modules.add(path)
        if path not in self._seen_order:
            self._seen_order.add(path)
            self.obs.forward_order.append(path)
        call = self._call_counter
        self._call_counter += 1
        label0, primary = outs[0]
        nan = torch.full((1,), _NAN, device=primary.device)
        with torch.no_grad():
            # [mean, std] of the primary output: one fused pass; a non-finite element makes
            # the mean non-finite.
            parts = [_tensor_stats(primary)]
            # other output elements (tuple/dict outputs): one sum each, for non-finite flags
            parts.append(torch.stack([t.detach().sum(dtype=torch.float32) for _, t in outs[1:]])
                         if len(outs) > 1 else nan)
            # Inputs that are the outputs of a module measured earlier in this step are not
            # reduced again: the producer's flag is reused (find_nonfinite resolves it).
            input_calls: list[int] = []
            fresh = []
            for _, t in _float_tensors(args):
                key = (t.data_ptr(), tuple(t.shape), t.dtype)
                if key in self._step_outputs:
                    input_calls.append(self._step_outputs[key])
                else:
                    fresh.append(t)
            parts.append(torch.stack([t.detach().sum(dtype=torch.float32) for t in fresh]).sum().reshape(1)
                         if fresh else torch.zeros(1, device=primary.device))
            own = [p for p in module.parameters(recurse=False) if p.is_floating_point()]
            parts.append(torch.stack([p.detach().sum(dtype=torch.float32) for p in own]).sum().reshape(1)
                         if own else torch.zeros(1, device=primary.device))
            dead = sat = nan
            if category == "relu" and primary.dim() >= 2:
                # A unit is a channel (dim 1) of conv/linear outputs, the last dim of
                # (batch, tokens, features) outputs. One max-reduction, no copy.
                unit_dim = primary.dim() - 1 if primary.dim() == 3 else 1
                dims = tuple(d for d in range(primary.dim()) if d != unit_dim)
                active = primary.detach().amax(dim=dims) > 0
                prev = self._relu_active.get(path)
                self._relu_active[path] = active if prev is None or prev.shape != active.shape else (prev | active)
                self._relu_samples[path] = self._relu_samples.get(path, 0) + primary.numel() // max(active.numel(), 1)
                dead = (1.0 - active.float().mean()).reshape(1)
            elif category in ("sigmoid", "tanh"):
                y = primary.detach()
                sat_mask = ((y - 0.5).abs() > 0.4975) if category == "sigmoid" else (y.abs() > 0.995)
                sat = sat_mask.float().mean().reshape(1)
            parts += [dead, sat]
            vec = torch.cat([p.reshape(-1).float() for p in parts])
        for _, t in outs:
            self._step_outputs[(t.data_ptr(), tuple(t.shape), t.dtype)] = call
        n_extra = max(len(outs) - 1, 1)
        labels = [lab for lab, _ in outs]
        batch = int(primary.shape[0]) if primary.dim() >= 1 else None
        numel = int(primary.numel())
        spatial = math.prod(int(d) for d in primary.shape[2:]) if primary.dim() >= 3 else None
        if category == "batchnorm" and module.training and args and isinstance(args[0], torch.Tensor):
            if args[0].dim() >= 2 and args[0].shape[0] == 1:
                cur.bn_batch_one.append(path)

        def sink(vals: list[float]) -> None:
            mean, std = vals[0], vals[1]
            flags = [mean] + (vals[2 : 2 + n_extra] if len(labels) > 1 else [])
            in_sum, p_sum = vals[2 + n_extra], vals[3 + n_extra]
            dead_v, sat_v = vals[4 + n_extra], vals[5 + n_extra]
            bad_idx = next((i for i, v in enumerate(flags) if not math.isfinite(v)), None)
            cur.activations.append(
                ActivationRecord(
                    path=path, call=call, mean=mean, std=std, numel=numel,
                    out_nonfinite=bad_idx is not None,
                    in_nonfinite=not math.isfinite(in_sum),
                    batch=batch,
                    dead_fraction=None if math.isnan(dead_v) else dead_v,
                    saturated_fraction=None if math.isnan(sat_v) else sat_v,
                    params_nonfinite=not math.isfinite(p_sum),
                    output_index=(labels[bad_idx] or None) if bad_idx is not None and len(labels) > 1 else None,
                    input_calls=input_calls,
                    spatial=spatial,
                )
            )

        self._pending.add(vec, sink)

    # -- root hooks ----------------------------------------------------------------------
    def enter_forward(self, args: Any, kwargs: Any) -> None:
        """Attached from inside the model's forward pre-hook chain (the CLI runner
        discovers the model there): torch iterates over a snapshot of the hook dicts, so
        our own root pre-hook misses this call; run it by hand."""
        self._root_pre(self.model, args, kwargs or {})

    def _root_pre(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        try:
            if self._pending_close:
                self._close_step()
            cur = self._cur
            if cur is None or not cur.sampled or not torch.is_grad_enabled():
                return
            self._in_root += 1
            if self._in_root == 1 and not self._first_sampled_forward_done:
                self._install_global_probe()
            if cur.input is None:
                tensors = _flatten_tensors((args, kwargs))
                if tensors:
                    self._record_input(cur, tensors[0][1])
            if "args" not in self.captured:
                self.captured["args"], self.captured["kwargs"] = _clone_tree((args, kwargs))
        except Exception as exc:
            self._observer_failed("model forward pre-hook", exc)

    def _root_post(self, module: nn.Module, args: Any, output: Any) -> None:
        try:
            cur = self._cur
            if cur is None or not cur.sampled or not torch.is_grad_enabled():
                return
            if self._in_root > 0:
                self._in_root -= 1
            if self._in_root == 0 and self._global_probe:
                self._remove_global_probe()
                self._first_sampled_forward_done = True
            self._record_call("", "container", module, args, output)
            outs = _float_tensors(output)
            if outs and cur.output_shape is None:
                cur.output_shape = tuple(outs[0][1].shape)
        except Exception as exc:
            self._observer_failed("model forward hook", exc)

    # The unregistered-module probe: a global forward hook that lives only during the
    # first sampled forward of the model. Modules called inside the model's forward that
    # are not its sub-modules (kept in a plain list, created on the fly) are recorded.
    def _install_global_probe(self) -> None:
        from torch.nn.modules.module import (
            register_module_forward_hook,
            register_module_forward_pre_hook,
        )

        self._global_probe = [
            register_module_forward_pre_hook(self._probe_pre),
            register_module_forward_hook(self._probe_post, always_call=True),
        ]

    def _remove_global_probe(self) -> None:
        probe, self._global_probe = self._global_probe, []
        for h in reversed(probe):
            h.remove()
        self._unknown_depth = 0

    def _probe_pre(self, module: nn.Module, args: Any) -> None:
        if id(module) in self._module_ids:
            return
        if self._unknown_depth == 0 and id(module) not in self._unregistered:
            params = [p for p in module.parameters()]
            if params and all(id(p) in self._param_ids for p in params):
                # A wrapper around our own parameters (DDP, a compile wrapper): not a
                # module whose parameters are lost.
                self._unknown_depth += 1
                return
            known = {id(p) for ref in self._optimizers if ref() is not None for g in ref().param_groups for p in g["params"]}  # type: ignore[union-attr]
            self._unregistered[id(module)] = {
                "class": type(module).__name__,
                "parameters": int(sum(p.numel() for p in params)),
                "in_optimizer": (any(id(p) in known for p in params) if known else None),
            }
        self._unknown_depth += 1

    def _probe_post(self, module: nn.Module, args: Any, output: Any) -> None:
        if id(module) in self._module_ids:
            return
        self._unknown_depth = max(0, self._unknown_depth - 1)

    # -- inputs and labels ---------------------------------------------------------------
    def _record_input(self, cur: StepRecord, x: torch.Tensor) -> None:
        with torch.no_grad():
            xf = x.detach().float().reshape(-1)
            n = xf.numel()
            if n == 0:
                return
            stride = max(1, n // 4096)
            sample = xf[::stride]
            weights = torch.arange(1, sample.numel() + 1, device=xf.device, dtype=torch.float32)
            mean_std = _tensor_stats(xf)
            lo_hi = torch.aminmax(xf)
            vec = torch.stack([
                mean_std[0], mean_std[1], lo_hi.min, lo_hi.max, (xf == 0).float().mean(),
                sample.sum(), (sample * weights).sum(),
            ])
        dtype, shape, is_float = str(x.dtype).replace("torch.", ""), tuple(x.shape), x.is_floating_point()

        def sink(v: list[float]) -> None:
            cur.input = InputRecord(
                dtype=dtype, shape=shape, mean=v[0], std=v[1], min=v[2], max=v[3],
                zero_fraction=v[4], fingerprint=(v[5], v[6]), is_float=is_float,
            )

        self._pending.add(vec, sink)

    def _record_labels(self, cur: StepRecord, target: torch.Tensor, n_classes: int | None,
                       ignore_index: int | None) -> None:
        if cur.labels is not None or target.is_floating_point() or target.numel() == 0:
            return
        with torch.no_grad():
            t = target.detach().reshape(-1).long()
            if ignore_index is not None:
                valid = t != ignore_index
            else:
                valid = torch.ones_like(t, dtype=torch.bool)
            k = int(n_classes) if n_classes else 0
            big = torch.iinfo(torch.int64).max
            tmin = torch.where(valid, t, torch.full_like(t, big)).min()
            tmax = torch.where(valid, t, torch.full_like(t, -big)).max()
            n_valid = valid.sum()
            if 0 < k <= 4096:
                idx = torch.where(valid & (t >= 0) & (t < k), t, torch.full_like(t, k))
                counts = torch.zeros(k + 1, device=t.device, dtype=torch.float64)
                counts.scatter_add_(0, idx, torch.ones_like(idx, dtype=torch.float64))
            else:
                counts = torch.zeros(0, device=t.device, dtype=torch.float64)
            tf = t.double()
            w = torch.arange(1, tf.numel() + 1, device=t.device, dtype=torch.float64)
            vec = torch.cat([
                torch.stack([tmin.double(), tmax.double(), n_valid.double(), tf.sum(), (tf * w).sum()]),
                counts,
            ])

        def sink(v: list[float]) -> None:
            counts_map = {i: int(c) for i, c in enumerate(v[5 : 5 + k]) if c}
            cur.labels = LabelRecord(
                n=int(v[2]), counts=counts_map, min=int(v[0]) if v[2] else 0,
                max=int(v[1]) if v[2] else 0, fingerprint=(v[3], v[4]), ignore_index=ignore_index,
            )

        self._pending.add(vec, sink)

    def _loss_pre(self, module: nn.Module, args: Any) -> None:
        cur = self._cur
        if cur is None or not cur.sampled or not torch.is_grad_enabled():
            return
        try:
            if len(args) >= 2 and isinstance(args[1], torch.Tensor) and "target" not in self.captured:
                self.captured["target"] = _clone_tree(args[1])
            if len(args) >= 2 and isinstance(args[1], torch.Tensor) and not args[1].is_floating_point():
                logits = args[0] if isinstance(args[0], torch.Tensor) else None
                k = int(logits.shape[1]) if logits is not None and logits.dim() >= 2 else None
                self._record_labels(cur, args[1], k, getattr(module, "ignore_index", None))
        except Exception as exc:
            self._observer_failed("loss pre-hook", exc)

    # -- backward ------------------------------------------------------------------------
    def before_backward(self, tensors: Any) -> None:
        try:
            if self._pending_close:
                self._close_step()
            cur = self._cur
            if cur is None:
                return
            loss = tensors if isinstance(tensors, torch.Tensor) else (
                tensors[0] if isinstance(tensors, (tuple, list)) and tensors and isinstance(tensors[0], torch.Tensor) else None)
            if self._optimizer_mode:
                # An optimizer step since the last backward is the update (no need to
                # walk every parameter's version counter on each step).
                updated, self._stepped_since_backward = self._stepped_since_backward, False
            else:
                versions = self._versions()
                updated = versions != self._version_sum
                self._version_sum = versions
            first_after_update = self._backwards_in_step == 0 and updated
            if first_after_update:
                self.obs.updates_seen += 1
            self._backwards_in_step += 1
            cur.backward_calls += 1
            if loss is not None and loss.numel() == 1 and self._backwards_in_step == 1 and cur.step not in self._explicit_losses:
                value = loss.detach().reshape(())
                scaled, self._scaled = self._scaled, None
                if scaled is not None and scaled[0] == id(loss) and scaled[1] is not None:
                    # GradScaler multiplied the loss: report it in the user's units
                    # (a device division, no sync).
                    scale = scaled[1].detach().reshape(()).to(value.dtype)
                    value = torch.stack([value / scale, scale.to(value.dtype)])

                    def scaled_sink(v: list[float], cur: StepRecord = cur) -> None:
                        if cur.loss is None:
                            cur.loss, cur.loss_scale = v[0], v[1]

                    self._pending.add(value, scaled_sink)
                    value = None

                def loss_sink(v: list[float], cur: StepRecord = cur) -> None:
                    if cur.loss is None:
                        cur.loss = v[0]

                if value is not None:
                    self._pending.add(value, loss_sink)
            if not cur.sampled:
                return
            if loss is not None and loss.grad_fn is not None and cur.loss_graph is None:
                graph, nll = analyse_loss_graph(loss)
                cur.loss_graph = graph
                if nll is not None and "target" not in self.captured:
                    try:
                        self.captured["target"] = _clone_tree(nll._saved_target)
                        self.captured["loss_graph"] = graph
                    except Exception:
                        pass
                if nll is not None and graph.kind in ("cross_entropy", "nll") and cur.labels is None:
                    try:
                        target = nll._saved_target
                        ignore = int(nll._saved_ignore_index)
                        if ignore >= 2**63:  # saved as an unsigned 64-bit int
                            ignore -= 2**64
                        self._record_labels(cur, target, graph.n_classes, ignore)
                    except Exception:
                        pass
            if first_after_update:
                # Gradients of parameters that no optimizer updates are irrelevant here
                # (frozen-layer reports those parameters).
                stale = [p.grad for n, p in self._params if p.grad is not None and p.requires_grad
                         and self.obs.params[n].in_optimizer is not False]
                if stale:
                    with torch.no_grad():
                        norms = torch._foreach_norm([g.detach() for g in stale])
                        total = torch.stack(norms).float().norm()

                    def stale_sink(v: list[float], cur: StepRecord = cur) -> None:
                        cur.stale_grad_norm = v[0]

                    self._pending.add(total, stale_sink)
                else:
                    cur.stale_grad_norm = 0.0
            elif not self._optimizer_mode and self._backwards_in_step == 1:
                # Hand-written updates through `p.data` do not bump version counters:
                # fingerprint the weights (one norm per tensor) and the gradients already
                # present; whether the weights changed since the previous step's backward
                # is decided on the host at the end (see _finalize).
                self._fingerprint_for_stale_grads(cur)
        except Exception as exc:
            self._observer_failed("backward pre", exc)

    def _fingerprint_for_stale_grads(self, cur: StepRecord) -> None:
        weights = [p.detach() for _, p in self._params if p.requires_grad and p.is_floating_point()]
        if not weights:
            return
        grads = [p.grad.detach() for _, p in self._params if p.grad is not None and p.requires_grad]
        with torch.no_grad():
            fp = torch.stack(torch._foreach_norm(weights)).float()
            g = (torch.stack(torch._foreach_norm(grads)).float().norm().reshape(1) if grads
                 else torch.zeros(1, device=fp.device))
            vec = torch.cat([g, fp])

        def sink(v: list[float], cur: StepRecord = cur) -> None:
            cur.grad_before_backward, cur.weight_fingerprint = v[0], v[1:]

        self._pending.add(vec, sink)

    def after_backward(self, tensors: Any) -> None:
        try:
            if self._optimizer_mode:
                return
            # No optimizer seen (yet): the update, if any, happens by hand after this
            # backward, so the step closes lazily at the next forward/backward.
            self._measure_grads()
            if self._cur is not None and self._cur.sampled:
                self._take_snapshot()
            self._pending_close = True
        except Exception as exc:
            self._observer_failed("backward post", exc)

    def _measure_grads(self) -> None:
        cur = self._cur
        if cur is None:
            return
        names, grads, missing = [], [], []
        for name, p in self._params:
            if p.grad is not None:
                names.append(name)
                grads.append(p.grad.detach())
            elif p.requires_grad:
                missing.append(name)
        if cur.sampled:
            cur.grads_missing = missing
        if not grads:
            cur.grad_norms = {}
            return
        with torch.no_grad():
            norms = torch.stack(torch._foreach_norm(grads)).float()

        def sink(v: list[float], cur: StepRecord = cur, names: list[str] = names) -> None:
            bad = [n for n, x in zip(names, v) if not math.isfinite(x)]
            cur.grad_nonfinite = bad
            cur.grad_total = math.inf if bad else math.sqrt(sum(x * x for x in v))
            if cur.sampled:
                cur.grad_norms = dict(zip(names, v))

        self._pending.add(norms, sink)

    # Update/weight ratios are ratios of norms: on large tensors a fixed strided subset
    # of the elements estimates them well, and copying the subset instead of the whole
    # parameter keeps a sampled step cheap (measured: the full snapshot was ~40% of a
    # sampled step's cost on a 0.4M-parameter MLP).
    snapshot_elements = 4096

    def _subset(self, p: torch.Tensor) -> tuple[torch.Tensor, float]:
        flat = p.detach().reshape(-1)
        n = flat.numel()
        if n <= self.snapshot_elements:
            return flat, 1.0
        stride = n // self.snapshot_elements
        sub = flat[::stride]
        return sub, math.sqrt(n / sub.numel())

    def _take_snapshot(self) -> None:
        chosen = [(n, p) for n, p in self._params if p.requires_grad and p.is_floating_point()]
        if not chosen:
            return
        with torch.no_grad():
            subsets = [self._subset(p) for _, p in chosen]
            self._snapshot = ([n for n, _ in chosen], [s.clone() for s, _ in subsets], [k for _, k in subsets])

    def _measure_update(self) -> None:
        cur = self._cur
        snap, self._snapshot = self._snapshot, None
        if cur is None or snap is None:
            return
        names, before, scales = snap
        current = dict(self._params)
        after = [self._subset(current[n])[0] for n in names]
        with torch.no_grad():
            deltas = torch._foreach_sub(after, before)
            upd = torch.stack(torch._foreach_norm(deltas)).float()
            w = torch.stack(torch._foreach_norm(before)).float()
            vec = torch.cat([upd, w])
        n = len(names)

        def sink(v: list[float], cur: StepRecord = cur) -> None:
            # norms of a subset scaled to the whole tensor (an estimate; exact when small)
            cur.update_norms = {name: x * k for name, x, k in zip(names, v[:n], scales)}
            cur.weight_norms = {name: x * k for name, x, k in zip(names, v[n:], scales)}

        self._pending.add(vec, sink)

    # -- optimizer hooks -----------------------------------------------------------------
    def _owns(self, opt: torch.optim.Optimizer) -> bool:
        return any(id(p) in self._param_ids for g in opt.param_groups for p in g["params"])

    def _global_opt_pre(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if not self._owns(opt):
            return
        if not any(r() is opt for r in self._optimizers):
            self._optimizers.append(weakref.ref(opt))
            ids = {id(p) for g in opt.param_groups for p in g["params"]}
            for name, p in self._params:
                meta = self.obs.params[name]
                meta.in_optimizer = bool(meta.in_optimizer) or id(p) in ids
            self.obs.has_optimizer = True
            self.obs.optimizers.append(self._describe_optimizer(opt))
        if not self._optimizer_mode:
            # The first optimizer step tells us updates go through an optimizer: the
            # step that the last backward left open is closed by this optimizer's post hook.
            self._optimizer_mode = True
            self._pending_close = False
            self._snapshot = None
        self._opt_pre(opt, args, kwargs)

    def _global_opt_post(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self._owns(opt):
            self._opt_post(opt, args, kwargs)

    def _opt_pre(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        try:
            if self._pending_close:
                self._close_step()
            cur = self._cur
            if cur is None:
                return
            self._measure_grads()
            if cur.sampled and self._snapshot is None:
                self._take_snapshot()
        except Exception as exc:
            self._observer_failed("optimizer pre-step", exc)

    # -- AMP (GradScaler) ----------------------------------------------------------------
    def on_scaled(self, scaled_loss: torch.Tensor, scaler: Any) -> None:
        self._scaled = (id(scaled_loss), getattr(scaler, "_scale", None))

    def on_scaler_update(self, scaler: Any) -> None:
        """End of an AMP step. If no optimizer step happened since the last update while a
        backward did, the scaler skipped the step (inf/NaN gradients): close it as skipped."""
        try:
            stepped, self._opt_stepped = self._opt_stepped, False
            cur = self._cur
            if cur is not None and cur.backward_calls > 0 and not stepped:
                cur.skipped = True
                self._snapshot = None
                self._close_step()
        except Exception as exc:
            self._observer_failed("GradScaler.update", exc)

    def _opt_post(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._opt_stepped = True
        self._stepped_since_backward = True
        try:
            if self._cur is not None and (self._cur.backward_calls > 0 or self._cur.sampled):
                if self._cur.backward_calls > 0:
                    self._close_step()
        except Exception as exc:
            self._observer_failed("optimizer post-step", exc)

    # -- explicit loss -------------------------------------------------------------------
    def log_loss(self, loss: Any) -> None:
        cur = self._cur
        if cur is None:
            return
        if isinstance(loss, torch.Tensor):
            value = loss.detach().reshape(-1)[:1].float()
            self._explicit_losses.add(cur.step)

            def sink(v: list[float], cur: StepRecord = cur) -> None:
                cur.loss = v[0]

            self._pending.add(value, sink)
        else:
            cur.loss = float(loss)
            self._explicit_losses.add(cur.step)

    # -- finalisation --------------------------------------------------------------------
    def _finalize(self) -> None:
        obs = self.obs
        # ReLU units that were never active in any sampled batch.
        if self._relu_active:
            paths = list(self._relu_active)
            vals = torch.cat([(~self._relu_active[p]).float().sum().reshape(1).cpu() for p in paths]).tolist()
            for p, dead in zip(paths, vals):
                obs.relu_units[p] = {
                    "units": int(self._relu_active[p].numel()),
                    "dead": int(dead),
                    "samples": int(self._relu_samples.get(p, 0)),
                }
            self._relu_active.clear()
        obs.unregistered_modules = list(self._unregistered.values())
        # Stale gradients under hand-written `p.data` updates: the weights changed between
        # two consecutive steps' backwards, and gradients were already there.
        by_step = {r.step: r for r in obs.steps}
        for rec in obs.steps:
            prev = by_step.get(rec.step - 1)
            if (rec.stale_grad_norm is None and rec.weight_fingerprint is not None and prev is not None
                    and prev.weight_fingerprint is not None and rec.weight_fingerprint != prev.weight_fingerprint):
                rec.stale_grad_norm = rec.grad_before_backward
                obs.updates_seen += 1
        # Non-finite events, in step order.
        obs.nonfinite = find_nonfinite(obs)
        # Which parameters never changed over the watched update steps.
        changed: dict[str, bool] = {}
        for rec in obs.steps:
            for name, u in rec.update_norms.items():
                changed[name] = changed.get(name, False) or (u != 0.0)
        obs.params_changed = changed


def find_nonfinite(obs: Observations) -> list[NonFiniteEvent]:
    """The first forward producer, the first backward gradient and the first non-finite
    loss, from host-side records. Pure Python (kept here beside the recorder that knows
    what the records mean)."""
    events: list[NonFiniteEvent] = []
    order = {p: i for i, p in enumerate(obs.forward_order)}
    # Forward: the first step whose activations contain a non-finite output.
    for rec in obs.steps:
        bad = [a for a in rec.activations if a.out_nonfinite]
        if not bad:
            continue
        # Inputs that were another module's output carry that module's verdict.
        by_call = {a.call: a for a in rec.activations}
        for a in rec.activations:
            if any(by_call[c].out_nonfinite for c in a.input_calls if c in by_call):
                a.in_nonfinite = True
        bad.sort(key=lambda a: a.call)
        # The producer: its inputs were finite and none of the modules it called produced
        # the value (a module inside it that went bad earlier would be "called within").
        producer = None
        for a in bad:
            if a.in_nonfinite:
                continue
            inner = [b for b in bad if b.path.startswith(a.path + ".") if a.path] if a.path else [b for b in bad if b.path]
            inner_producers = [b for b in inner if not b.in_nonfinite]
            if inner_producers:
                continue
            producer = a
            break
        passes = [a.path for a in bad if a.in_nonfinite][:5]
        if producer is None:
            first = bad[0]
            events.append(NonFiniteEvent(
                direction="forward", step=rec.step, where=first.path or None, kind="nan/inf",
                detail={"producer_found": False, "first_bad_output": first.path, "passed_on_by": passes,
                        "params_nonfinite": first.params_nonfinite},
            ))
        else:
            events.append(NonFiniteEvent(
                direction="forward", step=rec.step, where=producer.path or None, kind="nan/inf",
                detail={
                    "producer_found": True,
                    "first_bad_layer": producer.path or "(model forward code)",
                    "class": obs.modules[producer.path].class_name if producer.path in obs.modules else None,
                    "own_code": bool(obs.modules.get(producer.path) and not obs.modules[producer.path].is_leaf),
                    "params_nonfinite": producer.params_nonfinite,
                    "output_index": producer.output_index,
                    "passed_on_by": passes,
                },
            ))
        break
    # Backward: the first step with a non-finite gradient, the first parameter in
    # backward order (the reverse of forward order of owning modules).
    for rec in obs.steps:
        bad_params = list(rec.grad_nonfinite)
        if not bad_params:
            continue

        def backward_rank(name: str) -> tuple[int, str]:
            mod = obs.module_of(name)
            return (-order.get(mod, -1), name)

        bad_params.sort(key=backward_rank)
        events.append(NonFiniteEvent(
            direction="backward", step=rec.step, where=bad_params[0], kind="nan/inf",
            detail={"first_bad_gradient": bad_params[0], "n_bad": len(bad_params),
                    "loss_finite": rec.loss is None or math.isfinite(rec.loss)},
        ))
        break
    for rec in obs.steps:
        if rec.loss is not None and not math.isfinite(rec.loss):
            events.append(NonFiniteEvent(
                direction="loss", step=rec.step, where=None,
                kind="nan" if math.isnan(rec.loss) else "inf", detail={"loss": rec.loss},
            ))
            break
    return events
