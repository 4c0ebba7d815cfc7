"""The experiments behind ``Doctor.checkup``: probes that run on copies of the model.

Each probe trains or evaluates a ``deepcopy`` of the model and leaves plain data (Python
numbers and lists) in ``Observations.experiments``; the checks in
``nndoctor.checks.experiments`` (and ``chance-level-loss``) judge that data. Everything
runs inside :func:`_isolated`, which forks every RNG stream and puts back the user's
``training`` flags and ``requires_grad`` map, so a checkup leaves no trace: the user's
model, optimizer, BatchNorm statistics and the next random number are exactly as before.

Probes and the observation keys they fill:

=================  ==================  ==========================================
probe              key                 read by
=================  ==================  ==========================================
loss at init       ``init``            ``chance-level-loss`` (nndoctor.checks.loss)
overfit            ``overfit``         ``overfit-tiny-batch``
random inputs      ``random_input``    ``random-input-loss``
LR sweep + range   ``lr_sweep``,       ``lr-sweep``
                   ``lr_range``
gradient check     ``gradcheck``       ``gradient-check``
=================  ==================  ==========================================
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import time
import math
import random
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from ._checkset import CheckSet, internal_error, judge
from ._observations import Observations
from ._report import Report
from .checks._base import Check
from .checks.experiments import GradientCheck, LrSweep, OverfitTinyBatch, RandomInputLoss

__all__ = ["run_checkup", "EXPERIMENT_IDS", "DEFAULT_OPTIONS"]

CHANCE_ID = "chance-level-loss"
EXPERIMENT_IDS = (
    CHANCE_ID,
    OverfitTinyBatch.id,
    RandomInputLoss.id,
    LrSweep.id,
    GradientCheck.id,
)

# Probe knobs (``run_checkup(..., **options)``). Thresholds of the checks are separate:
# ``thresholds={"overfit-tiny-batch": {"max_steps": 200}}``.
DEFAULT_OPTIONS: dict[str, Any] = {
    "seed": 0,
    "overfit_samples": 8,
    "random_input_steps": 30,
    "random_input_samples": 16,  # training half; as many again are held out when present
    "random_input_eval_every": 3,
    "sweep_steps": 25,
    "sweep_samples": 16,
    "range_iters": 100,
    "range_start_lr": 1e-7,
    "range_end_lr": 10.0,
    "range_batch": 8,
    "range_smoothing": 0.95,  # EMA weight of the old value (torch-lr-finder's 0.05 on the new)
    "range_stop_factor": 4.0,  # stop when the smoothed loss exceeds 4x the best (fastai, Lightning)
    "gradcheck_batch": 2,
    "gradcheck_directions": 4,
    "gradcheck_eps": 1e-6,
    "gradcheck_full_max_elements": 1024,
    "gradcheck_max_tensors": 200,
    "thresholds": None,
    # Seconds for all the probes together; checked between probes (a probe is never cut
    # short). The probes not started in time are skipped with the reason. None: no limit.
    "time_budget": None,
}

# `torch.autograd.gradcheck` is the function; its module holds the error class.
_GradcheckError = importlib.import_module("torch.autograd.gradcheck").GradcheckError

_DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


# ======================================================================================
# entry point
# ======================================================================================
def run_checkup(
    model: nn.Module,
    batch: Any,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    select: Any = None,
    ignore: Any = None,
    checks: "CheckSet | Mapping[str, Check] | None" = None,
    figures_dir: Any = None,
    **options: Any,
) -> Report:
    """Run the experiments on copies of ``model`` and judge them.

    ``batch`` is ``(inputs, targets)``; inputs may be a tensor, a tuple of tensors
    (``model(*inputs)``) or a dict (``model(**inputs)``); targets may be None when
    ``loss_fn(outputs, None)`` makes sense. ``loss_fn`` defaults to ``CrossEntropyLoss``
    for integer class targets and float logits. ``optimizer``: the copies are trained with
    its type and hyper-parameters (Adam(lr=1e-3) when None). ``checks``: the check set to
    judge with (a ``CheckSet``, or its ``.checkup`` mapping of id -> check, as the Doctor
    passes it); or else ``select`` / ``ignore``: check ids (a list or a comma-separated
    string) and ``thresholds=`` (resolved here into a check set). ``figures_dir``: PNG plots are written there
    and their paths put in ``report.experiments["figures"]``. Other keyword options are
    the probe knobs of ``DEFAULT_OPTIONS``.

    The user's model, optimizer, RNG streams, ``training`` flags and ``requires_grad``
    map are left exactly as they were.
    """
    unknown = set(options) - set(DEFAULT_OPTIONS)
    if unknown:
        raise TypeError(
            f"run_checkup() got unknown options {sorted(unknown)}; known: {sorted(DEFAULT_OPTIONS)}"
        )
    opts = {**DEFAULT_OPTIONS, **options}
    overrides = opts.pop("thresholds")
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise TypeError(
            "checkup needs batch=(inputs, targets); pass (inputs, None) when the loss takes "
            "no targets"
        )
    checks = _build_checks(checks, select, ignore, overrides)

    obs = Observations()
    obs.model_class = type(model).__name__
    obs.n_parameters = sum(p.numel() for p in model.parameters())
    obs.n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    # enable_grad: a checkup called under `torch.no_grad()` must still train its copies.
    with _isolated(model), torch.enable_grad():
        ctx = _Context.build(model, batch, optimizer, loss_fn, opts)
        probes: list[tuple[str, Callable[[], dict[str, Any]]]] = []
        if CHANCE_ID in checks:
            probes.append(("init", lambda: _probe_init(ctx)))
        if OverfitTinyBatch.id in checks:
            probes.append(("overfit", lambda: _probe_overfit(ctx, checks[OverfitTinyBatch.id])))
        if RandomInputLoss.id in checks:
            probes.append(("random_input", lambda: _probe_random_input(ctx)))
        if LrSweep.id in checks:
            probes.append(("lr_sweep", lambda: _probe_lr_sweep(ctx)))
            probes.append(("lr_range", lambda: _probe_lr_range(ctx)))
        if GradientCheck.id in checks:
            probes.append(("gradcheck", lambda: _probe_gradcheck(ctx, checks[GradientCheck.id])))
        started = time.monotonic()
        budget = opts.get("time_budget")
        for key, probe in probes:
            if budget is not None and time.monotonic() - started > budget:
                obs.experiments[key] = {
                    "skipped": f"the experiments' time budget ({budget:g} s) ran out before this one "
                               f"started; raise it (nndoctor check --timeout, or time_budget=...)",
                }
                continue
            torch.manual_seed(ctx.seed)
            try:
                obs.experiments[key] = probe()
            except _ProbeSkip as skip:
                obs.experiments[key] = {"skipped": skip.reason}
            except Exception as exc:  # a probe must never take the checkup down (strict mode: raise)
                obs.experiments[key] = {"skipped": internal_error(f"the {key} experiment", exc)}

    report = Report(
        model={
            "class": obs.model_class,
            "parameters": obs.n_parameters,
            "trainable": obs.n_trainable,
        },
        observations=obs,
    )
    verdict = judge(checks.values(), obs)
    report.findings.extend(verdict.findings)
    report.checks_run.extend(verdict.run)
    report.checks_skipped.extend(verdict.skipped)
    report.notes.extend(verdict.notes)
    report.sort()
    report.experiments = {k: v for k, v in obs.experiments.items()}
    if figures_dir is not None:
        from .reporters.experiment_figures import save_figures

        report.experiments["figures"] = save_figures(report.experiments, figures_dir)
    return report


def _build_checks(
    checks: "CheckSet | Mapping[str, Check] | None", select: Any, ignore: Any, thresholds: Any,
) -> dict[str, Check]:
    """The checkup's checks (id -> check): the given check set's, or one resolved from
    ``select``/``ignore``/``thresholds`` (unknown names raise a usage error)."""
    from ._checkset import CheckSet

    if checks is None:
        return CheckSet.resolve(select, ignore, thresholds).checkup
    if select is not None or ignore is not None or thresholds is not None:
        raise TypeError("run_checkup(): pass either checks= or select/ignore/thresholds, not both")
    if isinstance(checks, CheckSet):
        return checks.checkup
    return dict(checks)


# ======================================================================================
# isolation
# ======================================================================================
@contextlib.contextmanager
def _isolated(model: nn.Module) -> Iterator[None]:
    """Fork torch's CPU and CUDA RNGs, save numpy's and Python's, and put the model's
    ``training`` flags and ``requires_grad`` map back on exit (the probes only touch
    copies, so this is a second line of defence)."""
    py_state = random.getstate()
    np_state = np.random.get_state()
    training = [(m, m.training) for m in model.modules()]
    requires = [(p, p.requires_grad) for p in model.parameters()]
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    # Memorising a batch drives gradients into float32 denormals, which are 10-100x slower
    # on CPUs; flush them for the copies, and put the user's setting back (torch has no
    # getter: a denormal that survives a multiplication means flushing is off).
    flushing = float(torch.tensor([1e-40]) * 1.0) == 0.0
    torch.set_flush_denormal(True)
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        torch.set_flush_denormal(flushing)
        random.setstate(py_state)
        np.random.set_state(np_state)
        for m, flag in training:
            m.training = flag
        for p, flag in requires:
            if p.requires_grad != flag:
                p.requires_grad_(flag)


class _ProbeSkip(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _is_ours(fn: Any) -> bool:
    fn = getattr(fn, "func", fn)  # functools.partial
    fn = getattr(fn, "__func__", fn)  # bound method
    return str(getattr(fn, "__module__", "") or "").startswith("nndoctor")


def _strip_our_hooks(model: nn.Module) -> None:
    """A deepcopy carries the module hooks along; the Doctor's own observers must not fire
    on the experiment copies (they would record the copies' steps as the user's)."""
    names = (
        "_forward_hooks",
        "_forward_pre_hooks",
        "_backward_hooks",
        "_backward_pre_hooks",
    )
    for module in model.modules():
        for name in names:
            hooks = getattr(module, name, None)
            if not hooks:
                continue
            for key in [k for k, fn in hooks.items() if _is_ours(fn)]:
                del hooks[key]
                for extra in ("_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs"):
                    getattr(module, extra, {}).pop(key, None)
    for p in model.parameters():
        hooks = getattr(p, "_post_accumulate_grad_hooks", None)
        if hooks:
            for key in [k for k, fn in hooks.items() if _is_ours(fn)]:
                del hooks[key]
        hooks = getattr(p, "_backward_hooks", None)
        if hooks:
            for key in [k for k, fn in hooks.items() if _is_ours(fn)]:
                del hooks[key]


# ======================================================================================
# batch, loss and optimizer plumbing
# ======================================================================================
def _map_tensors(obj: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(_map_tensors(v, fn) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_tensors(v, fn) for v in obj)
    if isinstance(obj, dict):
        return type(obj)((k, _map_tensors(v, fn)) for k, v in obj.items())
    return obj


def _tensors(obj: Any) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    _map_tensors(obj, lambda t: out.append(t))
    return out


def _call(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def _float_outputs(out: Any) -> list[torch.Tensor]:
    return [t for t in _tensors(out) if t.is_floating_point() or t.is_complex()]


class _Context:
    """What every probe needs: the batch (on the model's device), the loss, how to build
    the user's optimizer for a copy, and how to slice the batch."""

    def __init__(self) -> None:
        self.model: nn.Module
        self.inputs: Any
        self.targets: Any
        self.loss_fn: Callable[..., torch.Tensor]
        self.loss_kind: str
        self.opts: dict[str, Any]
        self.seed: int
        self.batch_size: int
        self.user_optimizer: torch.optim.Optimizer | None
        self.param_names: dict[int, str]
        self.ignore_index: int | None

    @classmethod
    def build(cls, model: nn.Module, batch: Any, optimizer: Any, loss_fn: Any, opts: dict[str, Any]) -> "_Context":
        ctx = cls()
        ctx.model = model
        ctx.opts = opts
        ctx.seed = int(opts["seed"])
        ctx.user_optimizer = optimizer
        ctx.param_names = {id(p): n for n, p in model.named_parameters()}
        device = next((p.device for p in model.parameters()), None)
        if device is None:
            device = next((b.device for b in model.buffers()), torch.device("cpu"))
        inputs, targets = batch
        move = lambda t: t.detach().to(device)  # noqa: E731
        ctx.inputs = _map_tensors(inputs, move)
        ctx.targets = _map_tensors(targets, move)
        if isinstance(ctx.targets, torch.Tensor) and ctx.targets.dim() > 0:
            ctx.batch_size = int(ctx.targets.shape[0])
        else:
            first = next((t for t in _tensors(ctx.inputs) if t.dim() > 0), None)
            if first is None:
                raise TypeError("checkup: the inputs hold no tensor with a batch dimension")
            ctx.batch_size = int(first.shape[0])
        ctx.loss_fn, ctx.loss_kind = ctx._resolve_loss(loss_fn)
        ctx.ignore_index = getattr(ctx.loss_fn, "ignore_index", None)
        return ctx

    # -- loss ------------------------------------------------------------------------
    def _resolve_loss(self, loss_fn: Any) -> tuple[Callable[..., torch.Tensor], str]:
        if loss_fn is not None:
            return loss_fn, _loss_kind(loss_fn)
        targets = self.targets
        if isinstance(targets, torch.Tensor) and not targets.is_floating_point() and not targets.is_complex():
            probe = copy.deepcopy(self.model)
            _strip_our_hooks(probe)
            with torch.no_grad():
                out = _call(probe, self.inputs)
            if (
                isinstance(out, torch.Tensor)
                and out.is_floating_point()
                and out.dim() >= 2
                and tuple(targets.shape) == (out.shape[0], *out.shape[2:])
            ):
                return nn.CrossEntropyLoss(), "cross_entropy"
        raise ValueError(
            "checkup needs a loss function: pass loss_fn=... (an nn.Module loss or any "
            "callable loss_fn(outputs, targets) -> scalar tensor). Only integer class "
            "targets with float logits of shape (N, C, ...) get CrossEntropyLoss by default."
        )

    def loss(self, outputs: Any, targets: Any) -> torch.Tensor:
        value = self.loss_fn(outputs, targets)
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise ValueError(
                "loss_fn must return a scalar tensor; got "
                + (f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__)
                + " (use reduction='mean')"
            )
        return value.reshape(())

    # -- batch slicing ---------------------------------------------------------------
    def _slice(self, obj: Any, index: slice | torch.Tensor) -> Any:
        n = self.batch_size

        def cut(t: torch.Tensor) -> torch.Tensor:
            if t.dim() >= 1 and t.shape[0] == n:
                return t[index]
            if t.dim() >= 2 and t.shape[1] == n:  # sequence-first (T, N, ...) inputs
                return t[:, index]
            return t

        return _map_tensors(obj, cut)

    def take(self, start: int, stop: int) -> tuple[Any, Any]:
        s = slice(start, min(stop, self.batch_size))
        return self._slice(self.inputs, s), self._slice(self.targets, s)

    # -- task ------------------------------------------------------------------------
    @property
    def classification(self) -> bool:
        t = self.targets
        if self.loss_kind in ("cross_entropy", "nll"):
            return isinstance(t, torch.Tensor) and not t.is_floating_point()
        return self.loss_kind in ("bce", "bce_logits") and isinstance(t, torch.Tensor)

    def accuracy(self, outputs: Any, targets: Any) -> float | None:
        if not self.classification or not isinstance(outputs, torch.Tensor):
            return None
        with torch.no_grad():
            if self.loss_kind in ("cross_entropy", "nll"):
                if outputs.dim() < 2:
                    return None
                pred = outputs.argmax(dim=1)
                keep = targets != (self.ignore_index if self.ignore_index is not None else -100)
                if pred.shape != targets.shape or not bool(keep.any()):
                    return None
                return float((pred[keep] == targets[keep]).float().mean())
            if outputs.shape != targets.shape:
                return None
            cut = 0.0 if self.loss_kind == "bce_logits" else 0.5
            return float(((outputs > cut) == (targets > 0.5)).float().mean())

    # -- copies and optimizers -------------------------------------------------------
    def copy_model(self, *, dropout_off: bool = False) -> nn.Module:
        try:
            clone = copy.deepcopy(self.model)
        except Exception as exc:
            raise _ProbeSkip(f"the model could not be copied (copy.deepcopy raised {type(exc).__name__}: {exc})") from exc
        _strip_our_hooks(clone)
        for p in clone.parameters():
            p.grad = None
        if dropout_off:
            for m in clone.modules():
                if isinstance(m, _DROPOUT_TYPES):
                    m.eval()
        return clone

    def user_groups(self, clone: nn.Module) -> list[dict[str, Any]]:
        """The user's param groups mapped onto ``clone``'s parameters (by name)."""
        by_name = dict(clone.named_parameters())
        if self.user_optimizer is None:
            return [{"params": [p for p in clone.parameters() if p.requires_grad]}]
        groups = []
        for group in self.user_optimizer.param_groups:
            params = [by_name[self.param_names[id(p)]] for p in group["params"] if id(p) in self.param_names]
            if params:
                hp = {k: v for k, v in group.items() if k != "params"}
                groups.append({"params": params, **hp})
        if not groups:
            raise _ProbeSkip("none of the optimizer's parameters belong to the model")
        return groups

    def make_optimizer(
        self, clone: nn.Module, *, lr_scale: float = 1.0, lr: float | None = None, adam: bool = False
    ) -> torch.optim.Optimizer:
        """The user's optimizer type and hyper-parameters on ``clone`` (fresh state), with
        every group's LR scaled by ``lr_scale`` or set to ``lr``; Adam(lr=1e-3) when there is
        no user optimizer or ``adam`` is set."""
        if adam or self.user_optimizer is None:
            params = [p for p in clone.parameters() if p.requires_grad]
            if not params:
                raise _ProbeSkip("the model has no trainable parameters")
            return torch.optim.Adam(params, lr=(1e-3 if lr is None else lr) * lr_scale)
        groups = self.user_groups(clone)
        for g in groups:
            if lr is not None:
                g["lr"] = lr
            elif "lr" in g:
                g["lr"] = float(g["lr"]) * lr_scale
            g.pop("initial_lr", None)
        kind = type(self.user_optimizer)
        defaults = dict(getattr(self.user_optimizer, "defaults", {}) or {})
        if lr is not None:
            defaults["lr"] = lr
        elif "lr" in defaults:
            defaults["lr"] = float(defaults["lr"]) * lr_scale
        for attempt in (lambda: kind(groups, **defaults), lambda: kind(groups)):
            try:
                return attempt()
            except TypeError:
                continue
        raise _ProbeSkip(f"could not build a {kind.__name__} for the model copy")

    @property
    def base_lr(self) -> float:
        if self.user_optimizer is None:
            return 1e-3
        return float(self.user_optimizer.param_groups[0].get("lr", 1e-3))

    def optimizer_name(self, opt: torch.optim.Optimizer) -> str:
        g = opt.param_groups[0]
        parts = [f"lr={float(g['lr']):.3g}"] if "lr" in g else []
        for key in ("momentum", "weight_decay"):
            if g.get(key):
                parts.append(f"{key}={g[key]:.3g}")
        return f"{type(opt).__name__}({', '.join(parts)})"


def _loss_kind(loss_fn: Any) -> str:
    import torch.nn.functional as F

    table = [
        (nn.CrossEntropyLoss, "cross_entropy"),
        (nn.NLLLoss, "nll"),
        (nn.BCEWithLogitsLoss, "bce_logits"),
        (nn.BCELoss, "bce"),
        (nn.MSELoss, "mse"),
        (nn.L1Loss, "l1"),
        (nn.SmoothL1Loss, "smooth_l1"),
        (nn.HuberLoss, "smooth_l1"),
        (nn.KLDivLoss, "kl_div"),
    ]
    for cls, kind in table:
        if isinstance(loss_fn, cls):
            return kind
    functions = {
        F.cross_entropy: "cross_entropy",
        F.nll_loss: "nll",
        F.binary_cross_entropy_with_logits: "bce_logits",
        F.binary_cross_entropy: "bce",
        F.mse_loss: "mse",
        F.l1_loss: "l1",
        F.smooth_l1_loss: "smooth_l1",
        F.kl_div: "kl_div",
    }
    try:
        return functions.get(loss_fn, "other")
    except TypeError:  # unhashable callable
        return "other"


# ======================================================================================
# probe: loss at initialisation (read by chance-level-loss)
# ======================================================================================
def _probe_init(ctx: _Context) -> dict[str, Any]:
    clone = ctx.copy_model()
    order: list[tuple[str, nn.Module]] = []
    handles = []
    for name, m in clone.named_modules():
        bias = getattr(m, "bias", None)
        if isinstance(bias, torch.Tensor) and not list(m.children()):
            handles.append(m.register_forward_hook(lambda mod, i, o, name=name: order.append((name, mod))))
    try:
        with torch.no_grad():
            out = _call(clone, ctx.inputs)
            loss = float(ctx.loss(out, ctx.targets))
    finally:
        for h in handles:
            h.remove()
    result: dict[str, Any] = {
        "loss": loss,
        "n_classes": None,
        "loss_kind": ctx.loss_kind,
        "label_prior": None,
        "predicted_prior": None,
        "final_bias": None,
        "final_layer": None,
        "mode": "train" if ctx.model.training else "eval",
    }
    logits = out if isinstance(out, torch.Tensor) else None
    targets = ctx.targets if isinstance(ctx.targets, torch.Tensor) else None
    k = None
    if logits is not None and logits.is_floating_point():
        with torch.no_grad():
            if ctx.loss_kind in ("cross_entropy", "nll") and logits.dim() >= 2:
                k = int(logits.shape[1])
                moved = logits.movedim(1, -1).reshape(-1, k).double()
                probs = moved.softmax(-1) if ctx.loss_kind == "cross_entropy" else moved.exp()
                result["predicted_prior"] = [float(v) for v in probs.mean(0)]
                if targets is not None and not targets.is_floating_point():
                    flat = targets.reshape(-1)
                    ign = ctx.ignore_index if ctx.ignore_index is not None else -100
                    flat = flat[(flat != ign) & (flat >= 0) & (flat < k)]
                    if flat.numel():
                        counts = torch.bincount(flat, minlength=k).double()
                        result["label_prior"] = [float(v) for v in counts / counts.sum()]
            elif ctx.loss_kind in ("bce", "bce_logits"):
                k = int(logits.shape[-1]) if logits.dim() >= 2 else 1
                probs = logits.double().sigmoid() if ctx.loss_kind == "bce_logits" else logits.double()
                result["predicted_prior"] = [float(v) for v in probs.reshape(-1, k).mean(0)]
                if targets is not None and targets.shape == logits.shape:
                    result["label_prior"] = [float(v) for v in targets.double().reshape(-1, k).mean(0)]
    result["n_classes"] = k
    if k is not None:
        for name, mod in reversed(order):
            bias = getattr(mod, "bias", None)
            if isinstance(bias, torch.Tensor) and bias.numel() == k:
                result["final_bias"] = [float(v) for v in bias.detach().reshape(-1)]
                result["final_layer"] = name
                break
    return result


# ======================================================================================
# probe: overfit a tiny batch
# ======================================================================================
def _train_curve(
    ctx: _Context,
    clone: nn.Module,
    opt: torch.optim.Optimizer,
    inputs: Any,
    targets: Any,
    steps: int,
    *,
    stop: Callable[[list[float], list[float | None]], bool] | None = None,
    every: Callable[[int], None] | None = None,
) -> tuple[list[float], list[float | None]]:
    """Train ``clone`` for up to ``steps`` updates; returns the loss (and accuracy) seen
    at each step before its update, plus the loss after the last update."""
    losses: list[float] = []
    accs: list[float | None] = []
    for step in range(steps + 1):
        if every is not None:
            every(step)
        opt.zero_grad(set_to_none=True)
        out = _call(clone, inputs)
        loss = ctx.loss(out, targets)
        value = float(loss.detach())
        losses.append(value)
        accs.append(ctx.accuracy(out, targets))
        if not math.isfinite(value) or step == steps or (stop is not None and stop(losses, accs)):
            break
        loss.backward()
        opt.step()
    return losses, accs


def _probe_overfit(ctx: _Context, check: Check) -> dict[str, Any]:
    n = min(int(ctx.opts["overfit_samples"]), ctx.batch_size)
    inputs, targets = ctx.take(0, n)
    steps = int(check.max_steps)
    assert isinstance(check, OverfitTinyBatch)

    def stop(losses: list[float], accs: list[float | None]) -> bool:
        return check.fitted_at({"losses": losses, "accuracies": accs if accs[0] is not None else None}) is not None

    runs = []
    user = ctx.user_optimizer
    same_as_retry = user is None or (
        type(user) is torch.optim.Adam
        and all(float(g.get("lr", 0)) == 1e-3 and not g.get("weight_decay") for g in user.param_groups)
    )
    for adam in (False, True):
        if adam and same_as_retry:
            break
        torch.manual_seed(ctx.seed)
        clone = ctx.copy_model(dropout_off=True)
        opt = ctx.make_optimizer(clone, adam=adam)
        losses, accs = _train_curve(ctx, clone, opt, inputs, targets, steps, stop=stop)
        run = {
            "optimizer": ctx.optimizer_name(opt),
            "is_user": not adam and ctx.user_optimizer is not None,
            "losses": losses,
            "accuracies": accs if accs and accs[0] is not None else None,
        }
        runs.append(run)
        if stop(losses, accs):
            break
    return {
        "n_samples": n,
        "max_steps": steps,
        "task": "classification" if ctx.classification else "regression",
        "runs": runs,
        "regularisation_off": ["dropout"],
    }


# ======================================================================================
# probe: real vs noise vs zero inputs
# ======================================================================================
def _noise_like(t: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    if t.is_floating_point():
        std, mean = torch.std_mean(t.double()) if t.numel() > 1 else (torch.tensor(1.0), t.double().mean())
        if not math.isfinite(float(std)) or float(std) == 0:
            std = torch.tensor(1.0, dtype=torch.float64)
        noise = torch.randn(t.shape, generator=gen, dtype=torch.float64) * std + mean
        return noise.to(dtype=t.dtype, device=t.device)
    if t.dtype == torch.bool:
        return torch.randint(0, 2, t.shape, generator=gen).bool().to(t.device)
    lo, hi = int(t.min()), int(t.max())
    return torch.randint(lo, hi + 1, t.shape, generator=gen, dtype=torch.int64).to(dtype=t.dtype, device=t.device)


def _relative_change(a: Any, b: Any) -> float:
    ta, tb = _float_outputs(a), _float_outputs(b)
    if not ta or len(ta) != len(tb):
        return math.inf
    worst = 0.0
    for x, y in zip(ta, tb):
        if x.shape != y.shape:
            return math.inf
        scale = float(x.detach().abs().max()) if x.numel() else 0.0
        diff = float((x.detach() - y.detach()).abs().max()) if x.numel() else 0.0
        if not math.isfinite(diff):
            return math.inf
        worst = max(worst, diff / (scale + 1e-30) if scale > 0 else (math.inf if diff > 0 else 0.0))
    return worst


def _probe_random_input(ctx: _Context) -> dict[str, Any]:
    n_train = min(int(ctx.opts["random_input_samples"]), ctx.batch_size)
    holdout = ctx.batch_size >= 16
    if holdout:
        n_train = min(n_train, ctx.batch_size // 2)
    x_train, y_train = ctx.take(0, n_train)
    x_hold, y_hold = ctx.take(n_train, 2 * n_train) if holdout else (None, None)
    n_hold = _first_dim(y_hold, x_hold) if holdout else 0
    gen = torch.Generator().manual_seed(ctx.seed + 1)
    variants: dict[str, tuple[Any, Any]] = {
        "real": (x_train, x_hold),
        "noise": (
            _map_tensors(x_train, lambda t: _noise_like(t, gen)),
            _map_tensors(x_hold, lambda t: _noise_like(t, gen)) if holdout else None,
        ),
        "zeros": (
            _map_tensors(x_train, torch.zeros_like),
            _map_tensors(x_hold, torch.zeros_like) if holdout else None,
        ),
    }
    # 1. do the outputs depend on the input at all? (eval mode: no batch statistics)
    probe = ctx.copy_model()
    probe.eval()
    with torch.no_grad():
        torch.manual_seed(ctx.seed)
        ref = _call(probe, x_train)
        change = {}
        for name in ("noise", "zeros"):
            torch.manual_seed(ctx.seed)
            change[name] = _relative_change(ref, _call(probe, variants[name][0]))
    del probe
    # 2./3. train on each variant, same seed and optimizer, evaluate held-out samples
    steps = int(ctx.opts["random_input_steps"])
    every_n = max(1, int(ctx.opts["random_input_eval_every"]))
    train_loss: dict[str, list[float]] = {}
    hold_loss: dict[str, list[float]] = {}
    for name, (xt, xh) in variants.items():
        torch.manual_seed(ctx.seed)
        clone = ctx.copy_model(dropout_off=True)
        opt = ctx.make_optimizer(clone, adam=True)
        curve: list[float] = []

        def evaluate(step: int, clone: nn.Module = clone, xh: Any = xh, curve: list[float] = curve) -> None:
            if not holdout or (step % every_n and step != steps):
                return
            with torch.no_grad():  # train-mode forward: BatchNorm uses this batch's statistics
                curve.append(float(ctx.loss(_call(clone, xh), y_hold)))

        losses, _ = _train_curve(ctx, clone, opt, xt, y_train, steps, every=evaluate)
        train_loss[name] = losses
        if holdout:
            hold_loss[name] = curve
    entropy = None
    if ctx.classification and isinstance(y_train, torch.Tensor) and not y_train.is_floating_point():
        counts = torch.bincount(y_train.reshape(-1).clamp_min(0)).double()
        p = counts[counts > 0] / counts.sum()
        entropy = float(-(p * p.log()).sum())
    return {
        "output_change": change,
        "steps": steps,
        "n_train": n_train,
        "n_holdout": n_hold,
        "optimizer": "Adam(lr=0.001)",
        "train_loss": train_loss,
        "holdout_loss": hold_loss if holdout else None,
        "label_entropy": entropy,
    }


def _first_dim(*objs: Any) -> int:
    for obj in objs:
        for t in _tensors(obj):
            if t.dim() > 0:
                return int(t.shape[0])
    return 0


# ======================================================================================
# probe: LR x0.1 / x1 / x10 and the LR range test
# ======================================================================================
def _probe_lr_sweep(ctx: _Context) -> dict[str, Any]:
    n = min(int(ctx.opts["sweep_samples"]), ctx.batch_size)
    inputs, targets = ctx.take(0, n)
    steps = int(ctx.opts["sweep_steps"])
    trials = {}
    for label, scale in (("0.1", 0.1), ("1", 1.0), ("10", 10.0)):
        torch.manual_seed(ctx.seed)
        clone = ctx.copy_model()
        opt = ctx.make_optimizer(clone, lr_scale=scale)
        losses, _ = _train_curve(ctx, clone, opt, inputs, targets, steps)
        trials[label] = {"lr": ctx.base_lr * scale, "losses": losses}
    opt_name = type(ctx.user_optimizer).__name__ if ctx.user_optimizer is not None else "Adam"
    return {"base_lr": ctx.base_lr, "optimizer": opt_name, "steps": steps, "n_samples": n, "trials": trials}


def _probe_lr_range(ctx: _Context) -> dict[str, Any]:
    iters = int(ctx.opts["range_iters"])
    lo, hi = float(ctx.opts["range_start_lr"]), float(ctx.opts["range_end_lr"])
    beta = float(ctx.opts["range_smoothing"])
    stop_factor = float(ctx.opts["range_stop_factor"])
    size = max(1, min(int(ctx.opts["range_batch"]), ctx.batch_size))
    chunks = [ctx.take(i, i + size) for i in range(0, ctx.batch_size - size + 1, size)] or [ctx.take(0, size)]
    torch.manual_seed(ctx.seed)
    clone = ctx.copy_model()
    opt = ctx.make_optimizer(clone, lr=lo)
    lrs: list[float] = []
    raw: list[float] = []
    smooth: list[float] = []
    avg, best, stopped = 0.0, math.inf, False
    for i in range(iters):
        lr = lo * (hi / lo) ** (i / max(1, iters - 1))
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = chunks[i % len(chunks)]
        opt.zero_grad(set_to_none=True)
        loss = ctx.loss(_call(clone, x), y)
        value = float(loss.detach())
        if not math.isfinite(value):
            stopped = True
            break
        avg = beta * avg + (1 - beta) * value
        smoothed = avg / (1 - beta ** (i + 1))
        lrs.append(lr)
        raw.append(value)
        smooth.append(smoothed)
        best = min(best, smoothed)
        if i > 0 and smoothed > stop_factor * best:
            stopped = True
            break
        loss.backward()
        opt.step()
    result: dict[str, Any] = {
        "lrs": lrs,
        "losses": raw,
        "smoothed": smooth,
        "stopped_early": stopped,
        "diverged_at": lrs[-1] if stopped and lrs else None,
        "base_lr": ctx.base_lr,
        "optimizer": type(ctx.user_optimizer).__name__ if ctx.user_optimizer is not None else "Adam",
        "start_lr": lo,
        "end_lr": hi,
        "smoothing": beta,
        "stop_factor": stop_factor,
    }
    result.update(lr_suggestions(lrs, smooth))
    return result


def lr_suggestions(lrs: list[float], smoothed: list[float]) -> dict[str, Any]:
    """Three estimators on the smoothed range-test curve, skipping the first tenth and the
    last 5 points (fastai's window): steepest descent against log10(LR), fastai's valley
    (the longest descending run, a third plus a sixth into it) and the minimum / 10; with
    their spread in decades and the median as the suggestion."""
    n = len(smoothed)
    start, end = n // 10, n - 5
    if end - start < 6:
        return {"suggestions": {}, "spread_decades": None, "suggested_lr": None}
    lr = np.asarray(lrs[start:end], dtype=np.float64)
    loss = np.asarray(smoothed[start:end], dtype=np.float64)
    slope = np.gradient(loss, np.log10(lr))
    steep = float(lr[int(np.argmin(slope))])
    minimum = float(lr[int(np.argmin(loss))] / 10.0)
    # valley: longest strictly descending subsequence (fastai, O(n^2) on <= 100 points)
    m = len(loss)
    lds = [1] * m
    max_start, max_end = 0, 0
    for i in range(1, m):
        for j in range(i):
            if loss[i] < loss[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
        if lds[max_end] < lds[i]:
            max_end = i
            max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    valley = float(lr[max(0, min(m - 1, max_start + int(sections) + int(sections / 2)))])
    suggestions = {"steep": steep, "valley": valley, "minimum/10": minimum}
    values = sorted(suggestions.values())
    return {
        "suggestions": suggestions,
        "spread_decades": float(math.log10(values[-1] / values[0])),
        "suggested_lr": float(values[1]),
    }


# ======================================================================================
# probe: gradient check
# ======================================================================================
def _custom_function_nodes(root: Any) -> list[Any]:
    """Backward nodes of custom ``torch.autograd.Function``s reachable from ``root``."""
    seen, stack, found = set(), [root], []
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        cls = getattr(node, "_forward_cls", None)
        if type(node).__name__.endswith("Backward") and cls is not None:
            if not str(getattr(cls, "__module__", "")).startswith("torch"):
                found.append(node)
        stack.extend(fn for fn, _ in getattr(node, "next_functions", ()) or ())
    return found


def _is_custom_module(module: nn.Module) -> bool:
    if str(type(module).__module__).startswith("torch"):
        return False
    own_params = any(True for _ in module.parameters(recurse=False))
    return own_params or not list(module.children())


def _directional(
    fn: Callable[..., Any], args: list[torch.Tensor], gen: torch.Generator, n_dir: int, eps: float
) -> float:
    """max over random (u, v) of the relative error between u^T J v from autograd and
    from central differences of u^T f, for f(*args) -> tensors."""
    args = [a.detach().requires_grad_(True) for a in args]
    outs = _float_outputs(fn(*args))
    if not outs:
        raise _ProbeSkip("the unit returns no floating-point output")
    worst = 0.0
    for _ in range(n_dir):
        us = [torch.randn(o.shape, generator=gen, dtype=o.dtype) for o in outs]
        vs = [torch.randn(a.shape, generator=gen, dtype=a.dtype) for a in args]
        norm = math.sqrt(sum(float((v * v).sum()) for v in vs)) or 1.0
        vs = [v / norm for v in vs]
        grads = torch.autograd.grad(outs, args, grad_outputs=us, retain_graph=True, allow_unused=True)
        ad = sum(float((g * v).sum()) for g, v in zip(grads, vs) if g is not None)
        with torch.no_grad():
            plus = _float_outputs(fn(*[a + eps * v for a, v in zip(args, vs)]))
            minus = _float_outputs(fn(*[a - eps * v for a, v in zip(args, vs)]))
        fd = sum(float(((p - m) * u).sum()) for p, m, u in zip(plus, minus, us)) / (2 * eps)
        worst = max(worst, _rel_error(fd, ad))
    return worst


def _rel_error(fd: float, ad: float) -> float:
    if not (math.isfinite(fd) and math.isfinite(ad)):
        return math.inf
    scale = max(abs(fd), abs(ad))
    if scale < 1e-10:
        return 0.0
    return abs(fd - ad) / scale


def _check_unit(
    fn: Callable[..., Any],
    checked: list[torch.Tensor],
    check: Check,
    ctx: _Context,
) -> dict[str, Any]:
    """gradcheck (small units) or the directional u^T J v test (large ones)."""
    elements = sum(t.numel() for t in checked)
    out_elements = sum(o.numel() for o in _float_outputs(fn(*checked)))
    if elements + out_elements <= int(ctx.opts["gradcheck_full_max_elements"]):
        inputs = tuple(t.detach().requires_grad_(True) for t in checked)
        try:
            ok = torch.autograd.gradcheck(
                fn,
                inputs,
                eps=float(ctx.opts["gradcheck_eps"]),
                atol=float(check.gradcheck_atol),
                rtol=float(check.gradcheck_rtol),
                raise_exception=True,
                check_undefined_grad=False,
                check_batched_grad=False,
            )
            return {"method": "gradcheck", "passed": bool(ok), "max_rel_error": None, "detail": ""}
        except _GradcheckError as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            return {
                "method": "gradcheck",
                "passed": False,
                "max_rel_error": _directional(
                    fn, list(checked), torch.Generator().manual_seed(ctx.seed), 2, float(ctx.opts["gradcheck_eps"])
                ),
                "detail": f"gradcheck: {first}",
            }
    gen = torch.Generator().manual_seed(ctx.seed)
    worst = _directional(fn, list(checked), gen, int(ctx.opts["gradcheck_directions"]), float(ctx.opts["gradcheck_eps"]))
    return {
        "method": "directional u^T J v",
        "passed": worst <= float(check.max_relative_error),
        "max_rel_error": worst,
        "detail": "",
    }


def _raised(exc: Exception) -> dict[str, Any]:
    detail = f"its forward or backward raised {type(exc).__name__}: {exc}"
    return {"method": "gradcheck", "passed": False, "max_rel_error": None, "detail": detail}


def _to64(t: Any) -> Any:
    return t.detach().double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t


def _probe_gradcheck(ctx: _Context, check: Check) -> dict[str, Any]:
    nb = max(1, min(int(ctx.opts["gradcheck_batch"]), ctx.batch_size))
    inputs, targets = ctx.take(0, nb)
    seed = ctx.seed
    # --- capture: what the candidate modules and custom Functions receive --------------
    clone = ctx.copy_model()
    paths = {m: name for name, m in clone.named_modules()}
    candidates = {name: m for name, m in clone.named_modules() if name and _is_custom_module(m)}
    captured_mod: dict[str, tuple[tuple, dict]] = {}
    stack: list[str] = []
    handles = []

    def pre(mod: nn.Module, args: tuple, kwargs: dict) -> None:
        name = paths.get(mod, "")
        stack.append(name)
        if name in candidates and name not in captured_mod:
            captured_mod[name] = (_map_tensors(args, _snapshot), _map_tensors(kwargs, _snapshot))

    def post(mod: nn.Module, args: tuple, out: Any) -> None:
        if stack:
            stack.pop()

    for m in clone.modules():
        handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(m.register_forward_hook(post, always_call=True))
    torch.manual_seed(seed)
    try:
        out = _call(clone, inputs)
        loss = ctx.loss(out, targets)
        fn_nodes = _custom_function_nodes(loss.grad_fn)
    finally:
        for h in handles:
            h.remove()
    fn_classes = list(dict.fromkeys(node._forward_cls for node in fn_nodes))
    captured_fn: dict[type, tuple[tuple, dict, str | None]] = {}
    patched: list[tuple[type, Any, bool]] = []
    for cls in fn_classes:
        original = cls.apply
        had_own = "apply" in cls.__dict__

        def wrapper(_cls: type, *args: Any, _cls_orig: Any = original, **kwargs: Any) -> Any:
            if _cls not in captured_fn:
                captured_fn[_cls] = (
                    _map_tensors(args, _snapshot),
                    _map_tensors(kwargs, _snapshot),
                    stack[-1] if stack else None,
                )
            return _cls_orig(*args, **kwargs)

        patched.append((cls, cls.__dict__.get("apply"), had_own))
        cls.apply = classmethod(wrapper)
    if fn_classes:
        handles = []
        for m in clone.modules():
            handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(m.register_forward_hook(post, always_call=True))
        try:
            torch.manual_seed(seed)
            stack.clear()
            ctx.loss(_call(clone, inputs), targets)  # Functions in the loss count too
        finally:
            for h in handles:
                h.remove()
            for cls, orig, had_own in patched:
                if had_own:
                    cls.apply = orig
                else:
                    del cls.apply
    units: list[dict[str, Any]] = []
    # --- (a1) custom modules ------------------------------------------------------------
    for name, module in candidates.items():
        unit: dict[str, Any] = {"kind": "module", "name": type(module).__name__, "where": name}
        if name not in captured_mod:
            units.append({**unit, "skipped": "not called in the forward pass"})
            continue
        args, kwargs = captured_mod[name]
        try:
            mod64 = copy.deepcopy(module).double()
        except Exception as exc:
            units.append({**unit, "skipped": f"could not make a float64 copy: {exc}"})
            continue
        pnames = [n for n, p in mod64.named_parameters() if p.requires_grad]
        params = [p.detach() for n, p in mod64.named_parameters() if p.requires_grad]
        flat_args: list[torch.Tensor] = []
        template = _map_tensors((args, kwargs), lambda t: _Slot(flat_args, _to64(t)) if t.requires_grad else _to64(t))
        unit["input_shapes"] = [list(t.shape) for t in _tensors((args, kwargs))]
        if not flat_args and not params:
            units.append({**unit, "skipped": _no_grad_reason(args, kwargs) + " and it has no parameters"})
            continue
        n_in = len(flat_args)

        def run_module(
            *tensors: torch.Tensor, mod64: nn.Module = mod64, template: Any = template, n_in: int = n_in,
            pnames: list[str] = pnames,
        ) -> Any:
            a, kw = _fill(template, tensors[:n_in])
            torch.manual_seed(seed)
            return tuple(_float_outputs(torch.func.functional_call(mod64, dict(zip(pnames, tensors[n_in:])), a, kw)))

        try:
            unit.update(_check_unit(run_module, [*(t for t in flat_args), *params], check, ctx))
        except _ProbeSkip as skip:
            unit["skipped"] = skip.reason
        except Exception as exc:
            unit.update(_raised(exc))
        units.append(unit)
    # --- (a2) custom autograd Functions -------------------------------------------------
    for cls in fn_classes:
        unit = {"kind": "function", "name": cls.__name__, "where": None}
        if cls not in captured_fn:
            units.append({**unit, "skipped": "its inputs could not be captured"})
            continue
        args, kwargs, where = captured_fn[cls]
        unit["where"] = where
        flat_args = []
        template = _map_tensors((args, kwargs), lambda t: _Slot(flat_args, _to64(t)) if t.requires_grad else _to64(t))
        unit["input_shapes"] = [list(t.shape) for t in _tensors((args, kwargs))]
        if not flat_args:
            units.append({**unit, "skipped": _no_grad_reason(args, kwargs)})
            continue

        def run_fn(*tensors: torch.Tensor, cls: type = cls, template: Any = template) -> Any:
            a, kw = _fill(template, tensors)
            torch.manual_seed(seed)
            return tuple(_float_outputs(cls.apply(*a, **kw)))

        try:
            unit.update(_check_unit(run_fn, list(flat_args), check, ctx))
        except _ProbeSkip as skip:
            unit["skipped"] = skip.reason
        except Exception as exc:
            unit.update(_raised(exc))
        units.append(unit)
    # --- (b) the whole model + loss, directional ---------------------------------------
    try:
        model_result = _model_directional(ctx, inputs, targets, check)
    except _ProbeSkip as skip:
        model_result = {"skipped": skip.reason}
    return {"units": units, "model": model_result, "batch": nb}


def _snapshot(t: torch.Tensor) -> torch.Tensor:
    copy_ = t.detach().clone()
    return copy_.requires_grad_(True) if t.requires_grad else copy_


def _no_grad_reason(args: Any, kwargs: Any) -> str:
    tensors = _tensors((args, kwargs))
    if tensors and not any(t.is_floating_point() for t in tensors):
        return "its inputs are integer (token ids), so there is no input gradient to check"
    return "none of its inputs requires grad"


class _Slot:
    """A placeholder for a float tensor in an argument template (see ``_fill``)."""

    def __init__(self, flat: list[torch.Tensor], value: torch.Tensor) -> None:
        self.index = len(flat)
        flat.append(value)


def _fill(template: Any, tensors: tuple[torch.Tensor, ...]) -> Any:
    if isinstance(template, _Slot):
        return tensors[template.index]
    if isinstance(template, tuple) and hasattr(template, "_fields"):
        return type(template)(*(_fill(v, tensors) for v in template))
    if isinstance(template, (list, tuple)):
        return type(template)(_fill(v, tensors) for v in template)
    if isinstance(template, dict):
        return type(template)((k, _fill(v, tensors)) for k, v in template.items())
    return template


def _model_directional(ctx: _Context, inputs: Any, targets: Any, check: Check) -> dict[str, Any]:
    seed = ctx.seed
    n_dir = int(ctx.opts["gradcheck_directions"])
    attempts = [("float64", float(ctx.opts["gradcheck_eps"])), ("float32", 1e-3)]
    last_error: Exception | None = None
    for dtype_name, eps in attempts:
        dtype = torch.float64 if dtype_name == "float64" else torch.float32
        clone = ctx.copy_model()
        loss_fn = ctx.loss_fn
        try:
            clone.to(dtype)
            if isinstance(loss_fn, nn.Module):
                loss_fn = copy.deepcopy(loss_fn).to(dtype)
            cast = lambda t: t.detach().to(dtype) if t.is_floating_point() else t  # noqa: E731
            x, y = _map_tensors(inputs, cast), _map_tensors(targets, cast)
            names = [n for n, p in clone.named_parameters() if p.requires_grad]
            params = [p for n, p in clone.named_parameters() if p.requires_grad]
            if not params:
                raise _ProbeSkip("the model has no trainable parameters")

            def L() -> torch.Tensor:
                torch.manual_seed(seed)
                value = loss_fn(_call(clone, x), y)
                return value.reshape(())

            loss = L()
            if not loss.requires_grad:
                raise _ProbeSkip("the loss does not require grad (no parameter reaches it)")
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            # Parameters the graph never reaches (a frozen backbone run under no_grad, an
            # intended stop-gradient) get no gradient at all: that is `frozen-layer`'s
            # finding, not a wrong backward, so they are left out of the directions.
            no_gradient = [n for n, g in zip(names, grads) if g is None]
            kept = [(n, p, g) for n, p, g in zip(names, params, grads) if g is not None]
            if not kept:
                raise _ProbeSkip("no trainable parameter receives a gradient from the loss")
            names, params, grads = (list(t) for t in zip(*kept))
        except _ProbeSkip:
            raise
        except Exception as exc:  # e.g. a layer that only runs in float32
            last_error = exc
            continue
        gen = torch.Generator().manual_seed(seed)

        def directional(vs: list[torch.Tensor], on: list[torch.Tensor], gs: list[torch.Tensor]) -> tuple[float, float]:
            ad = sum(float((g * v).sum()) for g, v in zip(gs, vs))
            with torch.no_grad():
                for p, v in zip(on, vs):
                    p.add_(v, alpha=eps)
                plus = float(L())
                for p, v in zip(on, vs):
                    p.sub_(v, alpha=2 * eps)
                minus = float(L())
                for p, v in zip(on, vs):
                    p.add_(v, alpha=eps)
            return (plus - minus) / (2 * eps), ad

        results = []
        gnorm = math.sqrt(sum(float((g * g).sum()) for g in grads))
        directions: list[list[torch.Tensor]] = []
        if gnorm > 0 and math.isfinite(gnorm):
            directions.append([g / gnorm for g in grads])
        for _ in range(n_dir):
            vs = [torch.randn(p.shape, generator=gen, dtype=torch.float64).to(dtype) for p in params]
            norm = math.sqrt(sum(float((v * v).sum()) for v in vs)) or 1.0
            directions.append([v / norm for v in vs])
        for i, vs in enumerate(directions):
            fd, ad = directional(vs, params, grads)
            kind = "gradient" if i == 0 and gnorm > 0 else "random"
            results.append({"direction": kind, "fd": fd, "ad": ad, "rel_error": _rel_error(fd, ad)})
        worst = max((r["rel_error"] for r in results), default=0.0)
        tol = float(check.max_relative_error) * (100.0 if dtype_name == "float32" else 1.0)
        localized = []
        if worst > tol:
            # name the culprit: the same test within each parameter tensor
            for name, p, g in list(zip(names, params, grads))[: int(ctx.opts["gradcheck_max_tensors"])]:
                errs = []
                vs_list = []
                gn = float(g.norm())
                if gn > 0:
                    vs_list.append(g / gn)
                v = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(dtype)
                vs_list.append(v / (float(v.norm()) or 1.0))
                for v in vs_list:
                    fd, ad = directional([v], [p], [g])
                    errs.append(_rel_error(fd, ad))
                localized.append({"param": name, "module": name.rpartition(".")[0], "rel_error": max(errs)})
        return {
            "dtype": dtype_name,
            "eps": eps,
            "directions": len(directions),
            "results": results,
            "max_rel_error": worst,
            "localized": localized,
            "no_gradient": no_gradient,
            "loss": float(loss.detach()),
        }
    raise _ProbeSkip(f"the model could not be evaluated for a gradient check: {type(last_error).__name__}: {last_error}")
