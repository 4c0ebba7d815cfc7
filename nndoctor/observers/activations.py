"""Per-module forward statistics on sampled steps: [mean, std] of each module's output,
non-finite flags for its inputs, other outputs and own parameters (for the NaN trace),
the dead-unit share of ReLUs and the saturated share of sigmoid/tanh, BatchNorm fed
batches of one, and which modules ran (in first-call order)."""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

from .._observations import ActivationRecord, Observations, StepRecord
from ._base import NAN, Observer, float_tensors
from ._base import mean_std as _mean_std

# Outputs of at least twice this many elements get their std from a strided subset of
# about this many (the mean, and so the non-finite flag, still from every element): the
# centred copy and its norm were most of a sampled step's activation cost on an MLP of
# 128x512 outputs; a subset of >= 2048 values puts the std within a few percent, while
# the activation-std band is a factor of 2 wide.
ACTIVATION_STD_SUBSET = 2048


def mean_std(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _mean_std(x, subset=ACTIVATION_STD_SUBSET)


_MAX_GRAPH_NODES = 4000  # bound of the functional-ReLU walk (a sampled step's host cost)
_VIEWS = frozenset({"ViewBackward0", "ReshapeAliasBackward0", "UnsafeViewBackward0", "CloneBackward0",
                    "ContiguousBackward0", "ToCopyBackward0"})


def _skip_views(relu_node: Any) -> Any:
    """The node that produced the ReLU's input, past reshapes and copies."""
    node = relu_node
    for _ in range(8):
        nxt = next((n for n, _ in getattr(node, "next_functions", ()) if n is not None), None)
        if nxt is None or nxt.name() not in _VIEWS:
            return nxt
        node = nxt
    return None


class ActivationObserver(Observer):
    name = "activations"
    feeds = ("activation-std", "dead-relu", "saturated-activation", "nan-trace", "train-eval-mode",
             "unused-parameter", "frozen-layer", "vanishing-gradient")

    def __init__(self, recorder: Any) -> None:
        super().__init__(recorder)
        self._seen_order: set[str] = set()
        self._relu_active: dict[str, torch.Tensor] = {}
        self._relu_samples: dict[str, int] = {}
        self._step_outputs: dict[tuple[Any, ...], int] = {}
        # grad_fn of each module output on a sampled step -> (node, path, category): the
        # graph walk of ``before_backward`` finds functional ReLUs (F.relu, torch.relu)
        # by the module whose output they consume. The node is kept so its id stays unique.
        self._producers: dict[int, tuple[Any, str, str]] = {}
        self._calls = 0
        self._consts: dict[torch.device, torch.Tensor] = {}

    def begin_step(self, cur: StepRecord) -> None:
        self._step_outputs = {}
        self._producers = {}
        self._calls = 0

    def step_hooks(self, model: nn.Module) -> list[Any]:
        """A forward hook on every sub-module (the root has the recorder's own hooks);
        ``always_call`` so a forward that raises half-way is still traced."""
        return [module.register_forward_hook(self._make_hook(path), always_call=True)
                for path, module in model.named_modules() if path]

    def model_post(self, cur: StepRecord, module: nn.Module, args: Any, output: Any) -> None:
        self._record_call(cur, "", "container", module, args, output)

    def _make_hook(self, path: str) -> Callable[..., None]:
        unit, rec = self, self.rec
        category = rec.obs.modules[path].category

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            cur = rec.current
            if unit.failed or cur is None or not cur.sampled:
                return
            if not torch.is_grad_enabled():
                # e.g. a frozen trunk run under torch.no_grad() inside forward: it is
                # used, just not measured.
                rec.obs.called_modules.add(path)
                return
            try:
                unit._record_call(cur, path, category, module, args, output)
            except Exception as exc:  # never raise into the user's forward
                rec.unit_failed(unit, f"forward hook on {path}", exc)

        return hook

    def _record_call(self, cur: StepRecord, path: str, category: str, module: nn.Module, args: Any,
                     output: Any) -> None:
        obs = self.rec.obs
        obs.called_modules.add(path)
        outs = float_tensors(output)
        if category == "loss" or not outs:
            return
        if path not in self._seen_order:
            self._seen_order.add(path)
            obs.forward_order.append(path)
        call = self._calls
        self._calls += 1
        _, primary = outs[0]
        nan = self._nan(primary.device)
        f32 = torch.float32
        # One stack of 0-d values per call (few ops: on small models each op's dispatch
        # costs more than its arithmetic; sums are added up and divided on the host):
        # [mean, std, dead share, saturated share, flag of each other output,
        #  sum of each fresh input, sum of each own parameter]
        with torch.no_grad():
            # mean from every element (a non-finite one makes it non-finite), std from a
            # strided subset on large outputs (ACTIVATION_STD_SUBSET)
            mean, std = mean_std(primary)
            dead = sat = nan
            if category == "relu" and primary.dim() >= 2:
                dead = self._relu(path, primary)
            elif category in ("sigmoid", "tanh"):
                y = primary.detach()
                sat_mask = ((y - 0.5).abs() > 0.4975) if category == "sigmoid" else (y.abs() > 0.995)
                sat = sat_mask.mean(dtype=f32)
            values = [mean, std, dead, sat]
            # other output elements (tuple/dict outputs): one sum each, for non-finite flags
            values += [t.detach().sum(dtype=f32) for _, t in outs[1:]] if len(outs) > 1 else [nan]
            # Inputs that are the outputs of a module measured earlier in this step are not
            # reduced again: the producer's flag is reused (find_nonfinite resolves it).
            input_calls: list[int] = []
            n_before = len(values)
            for _, t in float_tensors(args):
                key = (t.data_ptr(), tuple(t.shape), t.dtype)
                if key in self._step_outputs:
                    input_calls.append(self._step_outputs[key])
                else:
                    values.append(t.detach().sum(dtype=f32))
            n_inputs = len(values) - n_before
            values += [p.detach().sum(dtype=f32) for p in module.parameters(recurse=False) if p.is_floating_point()]
            vec = torch.stack(values)
        for _, t in outs:
            self._step_outputs[(t.data_ptr(), tuple(t.shape), t.dtype)] = call
        # (not while dynamo traces the hook: reading grad_fn there is a graph break)
        node = None if torch.compiler.is_compiling() else primary.grad_fn
        if node is not None and path:
            # the innermost module first: a container's output is its last child's
            self._producers.setdefault(id(node), (node, path, category))
        n_extra = max(len(outs) - 1, 1)
        labels = [lab for lab, _ in outs]
        batch = int(primary.shape[0]) if primary.dim() >= 1 else None
        numel = int(primary.numel())
        spatial = math.prod(int(d) for d in primary.shape[2:]) if primary.dim() >= 3 else None
        if category == "batchnorm" and module.training and args and isinstance(args[0], torch.Tensor):
            if args[0].dim() >= 2 and args[0].shape[0] == 1:
                cur.bn_batch_one.append(path)

        def sink(vals: list[float]) -> None:
            mean, std, dead_v, sat_v = vals[0], vals[1], vals[2], vals[3]
            flags = [mean] + (vals[4 : 4 + n_extra] if len(labels) > 1 else [])
            rest = 4 + n_extra
            in_finite = all(math.isfinite(v) for v in vals[rest : rest + n_inputs])
            params_finite = all(math.isfinite(v) for v in vals[rest + n_inputs :])
            bad_idx = next((i for i, v in enumerate(flags) if not math.isfinite(v)), None)
            cur.activations.append(ActivationRecord(
                path=path, call=call, mean=mean, std=std, numel=numel,
                out_nonfinite=bad_idx is not None,
                in_nonfinite=not in_finite,
                batch=batch,
                dead_fraction=None if math.isnan(dead_v) else 1.0 - dead_v,
                saturated_fraction=None if math.isnan(sat_v) else sat_v,
                params_nonfinite=not params_finite,
                output_index=(labels[bad_idx] or None) if bad_idx is not None and len(labels) > 1 else None,
                input_calls=input_calls,
                spatial=spatial,
            ))

        self.add(vec, sink)

    def before_backward(self, cur: StepRecord, loss: Any, first_after_update: bool) -> None:
        """Functional ReLUs (``F.relu``, ``torch.relu``, ``x.relu_()``) have no module to
        hook: on sampled steps, walk the loss's graph (host-side, bounded) for ReLU nodes
        that consume a module's output, and count their units from the output the node
        saved for its backward, under the name ``<module> -> relu``."""
        if not cur.sampled or not self._producers or not isinstance(loss, torch.Tensor):
            return
        root = loss.grad_fn
        if root is None:
            return
        seen: set[int] = set()
        stack = [root]
        while stack and len(seen) < _MAX_GRAPH_NODES:
            node = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if node.name() == "ReluBackward0" and self._producers.get(id(node), (None, "", ""))[2] != "relu":
                self._functional_relu(node)
            for nxt, _ in getattr(node, "next_functions", ()):
                if nxt is not None and id(nxt) not in seen:
                    stack.append(nxt)

    def _functional_relu(self, node: Any) -> None:
        producer = _skip_views(node)
        found = self._producers.get(id(producer)) if producer is not None else None
        if found is None or found[2] == "relu":
            return
        try:
            saved = node._saved_result
        except Exception:  # freed, or a build that does not expose it
            return
        if not isinstance(saved, torch.Tensor) or saved.dim() < 2:
            return
        with torch.no_grad():
            self._relu(f"{found[1]} -> relu", saved)

    def _relu(self, path: str, primary: torch.Tensor) -> torch.Tensor:
        """Dead share of this call; units never active are accumulated over the watch.
        A unit is a channel (dim 1) of conv/linear outputs, the last dim of (batch,
        tokens, features) outputs. One max-reduction, no copy."""
        unit_dim = primary.dim() - 1 if primary.dim() == 3 else 1
        dims = tuple(d for d in range(primary.dim()) if d != unit_dim)
        peak = primary.detach().amax(dim=dims)
        active = (peak > 0) | peak.isnan()  # a NaN unit is nan-trace's business, not a dead one
        prev = self._relu_active.get(path)
        self._relu_active[path] = active if prev is None or prev.shape != active.shape else (prev | active)
        self._relu_samples[path] = self._relu_samples.get(path, 0) + primary.numel() // max(active.numel(), 1)
        return active.mean(dtype=torch.float32)  # the active share (1 - it on the host)

    def _nan(self, device: torch.device) -> torch.Tensor:
        """0-d NaN on ``device`` (made once: a placeholder costs no op per call)."""
        found = self._consts.get(device)
        if found is None:
            found = self._consts[device] = torch.full((), NAN, device=device)
        return found

    def finalize(self, obs: Observations) -> None:
        # ReLU units that were never active in any sampled batch: one transfer at the end.
        if not self._relu_active:
            return
        paths = list(self._relu_active)
        dead = torch.cat([(~self._relu_active[p]).float().sum().reshape(1).cpu() for p in paths]).tolist()
        for p, n_dead in zip(paths, dead):
            obs.relu_units[p] = {
                "units": int(self._relu_active[p].numel()),
                "dead": int(n_dead),
                "samples": int(self._relu_samples.get(p, 0)),
            }
        self._relu_active.clear()

    def release(self) -> None:
        self._relu_active.clear()
        self._step_outputs = {}
        self._producers = {}
        self._consts = {}
