"""The runner's experiments: what to replay of the script's step (its model call and
loss, :mod:`nndoctor._replay`), checked against its first loss, on the weights of the
first step, within the experiments' budget; the stand-in optimizer for hand-written
updates. The older rebuild of the loss from its autograd graph, the fallback, is in
:mod:`nndoctor._runner_legacy`."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import sys
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ._checkset import CheckSet
from ._doctor import Doctor
from ._report import Report
from ._runner_session import _LOSS_MATCH_RTOL, _Session
from ._runner_types import _numpy_state

class _OutputAdapter(nn.Module):
    """The model with its output cut down to the tensor its loss is computed from:
    models that return ``(logits, hidden)`` or ``(logits, loss)``, or whose logits the
    script reshapes before the loss (``output.view(-1, ntokens)``). Parameters are the
    model's own, so the script's optimizer still maps onto them."""

    def __init__(self, model: nn.Module, index: tuple[Any, ...], tail: tuple[int, ...] | None) -> None:
        super().__init__()
        self.model = model
        self.index = index
        self.tail = tail

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.model(*args, **kwargs)
        for key in self.index:
            out = out[key]
        if self.tail is not None and tuple(out.shape[1:]) != self.tail:
            out = out.reshape(-1, *self.tail)
        return out


def _find_loss_input(output: Any, expected: tuple[int, ...]) -> tuple[tuple[Any, ...], tuple[int, ...] | None] | None:
    """Where in the model's output the loss input is, and the reshape it needs: the first
    floating-point tensor with as many elements as the tensor the loss was fed."""
    want = math.prod(expected)

    def walk(obj: Any, path: tuple[Any, ...], depth: int) -> Any:
        if isinstance(obj, torch.Tensor):
            if obj.is_floating_point() and obj.numel() == want:
                return path, (None if tuple(obj.shape) == tuple(expected) else tuple(expected[1:]))
            return None
        if depth > 3:
            return None
        items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (tuple, list)) else ()
        for key, value in items:
            found = walk(value, (*path, key), depth + 1)
            if found is not None:
                return found
        return None

    return walk(output, (), 0)



def _wanted_experiments(checks: CheckSet) -> list[str]:
    # chance-level-loss is judged in watch mode from the script's real first loss; the
    # checkup's "loss at init" would measure the model after the watched steps.
    return [c.id for c in checks.experiment]


def _skip(report: Report, ids: Sequence[str], reason: str) -> Report:
    extra = Report(checks_skipped=[{"check": c, "reason": reason} for c in ids])
    return report.merge(extra)


@dataclasses.dataclass
class _Plan:
    """What the experiments replay: the batch, the loss callable, the module to train."""

    batch: Any
    loss_fn: Callable[..., Any]
    model: nn.Module
    notes: list[str] = dataclasses.field(default_factory=list)


def _run_experiments(
    session: _Session,
    report: Report,
    wanted: list[str],
    *,
    select: Any,
    ignore: Any,
    thresholds: dict[str, dict[str, float]] | None,
) -> tuple[Report, str]:
    doctor = session.doctor
    assert doctor is not None

    def skipped(reason: str) -> tuple[Report, str]:
        return _skip(report, wanted, reason), f"skipped: {reason}"

    from ._runner_legacy import _legacy_plan  # the fallback imports this module's helpers

    plan = _replay_plan(session, doctor)
    if isinstance(plan, str):
        legacy = _legacy_plan(session, doctor)
        if isinstance(legacy, str):
            return skipped(plan if session.backward_link is not None else legacy)
        plan = legacy
    session.notes.extend(plan.notes)
    ignore_ids = ["chance-level-loss"]  # the Doctor's check set already holds the user's
    optimizer = session.optimizer
    stand_in = False
    if optimizer is None and doctor.model is not None:
        optimizer = _stand_in_sgd(doctor, session)
        stand_in = optimizer is None  # a hand-written rule that is not plain SGD
    if stand_in:
        # The LR sweep judges *your* learning rate; with an update rule nndoctor could not
        # identify it would judge a stand-in optimizer instead.
        ignore_ids.append("lr-sweep")
    with torch.enable_grad(), _weights_at_start(doctor.model, session):
        checkup = doctor.checkup(
            plan.batch, loss_fn=plan.loss_fn, optimizer=optimizer, model=plan.model,
            ignore=ignore_ids, time_budget=session.experiment_budget, step_seconds=session.evaluation_seconds,
        )
    if stand_in:
        checkup = _as_stand_in(checkup)
    merged = report.merge(checkup)
    merged.experiments = {**report.experiments, **checkup.experiments}
    return merged, "ran"


# A compiled model (torch.compile, inductor) draws its dropout masks with its own RNG, so
# the eager replay of its first step differs by the dropout noise (nanoGPT, dropout 0.2:
# 0.1%); the replay must match the script's first loss within this instead.
_COMPILED_LOSS_MATCH_RTOL = 0.02

_WHO_NEEDS = ("every experiment (loss at init, overfit-tiny-batch, random-input-loss, lr-sweep, "
              "gradient-check) trains or evaluates the model with this loss")


def _replay_plan(session: _Session, doctor: Doctor) -> "_Plan | str":
    """The script's own step, replayed: its model call (all inputs), its loss call (same
    function or loss module, same arguments) or the loss its model returns; checked
    against the script's first loss. A string says why it cannot be replayed."""
    from ._replay import OutputLoss, ReplayLoss, infer_batch_dims, target_layout
    from ._tree import tensors
    from .probes.context import ModelCall, ReplayBatch

    link = session.backward_link
    if session.first_call is None:
        return ("the model's inputs could not be captured at its first call; use "
                "doctor.checkup((inputs, targets), loss_fn=...) in Python")
    if link is None:
        return "no backward() was seen on a tensor with a graph"
    args, kwargs = session.first_call
    inputs = ModelCall(tuple(args), dict(kwargs))
    dims = infer_batch_dims(inputs)
    notes: list[str] = []
    scale_ops = [op for op in link.ops if op in ("mul", "div")]
    reduce_ops = [op for op in reversed(link.ops) if op in ("mean", "sum")]  # applied first -> last
    model = doctor.model
    if link.output_path is not None:
        loss_fn: Any = OutputLoss(link.output_path)
        targets: Any = None
        target_dims: list[int | None] | None = []
        experiment_model: nn.Module = model
        unscaled = _replay_value(session, experiment_model, inputs, targets, loss_fn)
        source = f"the loss the model returns (output{''.join(f'[{k!r}]' for k in link.output_path)})"
    elif link.call is not None:
        call = link.call
        if call.inside_model:
            return (f"the backpropagated loss is computed inside the model's forward ({call.describe()}) but "
                    f"is not returned as a scalar of the model's output, so it cannot be replayed; "
                    f"{_WHO_NEEDS}: use doctor.checkup((inputs, targets), loss_fn=...) in Python")
        located = _locate_loss_input(session, inputs, call.input_shape)
        if located is None:
            return (f"the tensor fed to {call.describe()} (shape {tuple(call.input_shape)}) is not in the model's "
                    f"output (the script transforms the output before the loss); {_WHO_NEEDS}: use "
                    f"doctor.checkup((inputs, targets), loss_fn=...) in Python")
        index, tail = located
        target = call.target
        flatten = False
        target_dims = None
        if isinstance(target, torch.Tensor) and dims is not None:
            batch, in_dims = dims
            first = next((t for t in tensors(inputs) if t.dim() > 0), None)
            d = next((x for x in in_dims if x is not None), 0)
            laid = target_layout(target, batch, first, d)
            if laid is not None:
                flatten = laid[0].shape != target.shape
                target, target_dims = laid[0], [laid[1]]
        elif target is not None and dims is not None:
            target_dims = [None] * len(tensors(target))
        loss_fn = ReplayLoss(call, flatten_target=flatten, post=reduce_ops)
        targets = target
        experiment_model = _OutputAdapter(model, index, tail) if (index or tail is not None) else model
        if experiment_model is not model:
            notes.append("the experiments train the model with its output reduced to the loss's input"
                         + (f" (output{''.join(f'[{k!r}]' for k in index)})" if index else "")
                         + (f", reshaped to (-1, {', '.join(map(str, tail))})" if tail is not None else ""))
        unscaled = _replay_value(session, experiment_model, inputs, targets, loss_fn)
        source = call.describe() + (f" then .{'().'.join(reduce_ops)}()" if reduce_ops else "")
    else:
        chain = " <- ".join(link.chain)
        return (f"the script backpropagates a tensor built by {chain}, which is neither a torch loss "
                f"function it called nor a scalar its model returned (a hand-written loss, or several "
                f"losses combined); {_WHO_NEEDS}: use doctor.checkup((inputs, targets), loss_fn=...) in Python")
    if isinstance(unscaled, str):
        if unscaled.startswith("a copy of the model"):
            return f"{unscaled}; the experiments are not run"
        return f"replaying {source} failed ({unscaled}); {_WHO_NEEDS}: use doctor.checkup(..., loss_fn=...) in Python"
    if not math.isfinite(link.value) or not math.isfinite(unscaled):
        return f"the script's first loss is not finite ({link.value:g}); the experiments need a finite loss"
    match_rtol = _COMPILED_LOSS_MATCH_RTOL if session.compiled else _LOSS_MATCH_RTOL
    if scale_ops:
        factor = link.value / unscaled if unscaled != 0 else math.nan
        if not math.isfinite(factor):
            return (f"the script backpropagates {source} scaled ({' then '.join(scale_ops)}), but the "
                    f"replayed loss is 0: the scale cannot be checked; {_WHO_NEEDS}")
        # nanoGPT divides by accumulation steps = 1; a compiled model's loss differs from the
        # eager replay by its dropout masks (inductor draws them with its own RNG): no scale.
        if not math.isclose(factor, 1.0, rel_tol=match_rtol if session.compiled else 1e-6):
            notes.append(f"the script backpropagates {source} × {factor:.4g} (e.g. gradient accumulation); "
                         f"the experiments train on {source} itself (replayed: {unscaled:.6g})")
    elif not math.isclose(unscaled, link.value, rel_tol=match_rtol, abs_tol=1e-6):
        return (f"replaying {source} on the first batch gives {unscaled:.6g}, but the script's first "
                f"loss was {link.value:.6g}: the model's forward is not reproducible from its inputs "
                f"(randomness outside torch's RNG, or state that changes between calls); {_WHO_NEEDS}: "
                f"use doctor.checkup((inputs, targets), loss_fn=...) in Python")
    if dims is None:
        batch_size, in_dims = None, None
    else:
        batch_size, in_dims = dims
        if target_dims is None:
            batch_size = None
            notes.append("the loss targets could not be matched to the inputs' batch dimension: the "
                         "experiments use the whole first batch, never sub-batches")
    batch = ReplayBatch(inputs, targets, input_dims=in_dims, target_dims=target_dims, batch_size=batch_size)
    return _Plan(batch=batch, loss_fn=loss_fn, model=experiment_model, notes=notes)


def _replay_value(session: _Session, model: nn.Module, inputs: Any, targets: Any, loss_fn: Any) -> "float | str":
    """The replayed loss on a copy of ``model`` with the step-0 weights, RNG and modes."""
    from .probes.context import call as call_model
    from .probes.isolation import ProbeSkip, copy_model, leaked_parameters

    try:
        clone = copy_model(model)
        inner = clone.model if isinstance(clone, _OutputAdapter) else clone
        state = _state_for(session.initial_state, inner)
        if state is not None:
            inner.load_state_dict(state)
        for m, flag in zip(inner.modules(), session.initial_modes or []):
            m.training = flag
        with torch.random.fork_rng(devices=[]), torch.enable_grad(), _python_rng(session):
            if session.initial_rng is not None:
                torch.set_rng_state(session.initial_rng)
            output = call_model(clone, inputs)
            leaked = leaked_parameters(model, output)
            if leaked:
                raise ProbeSkip(
                    f"a copy of the model still computes with the original's parameters ({', '.join(leaked[:3])}"
                    f"{', ...' if len(leaked) > 3 else ''}: a function stored in a container or a global reaches "
                    f"the original, which nndoctor cannot re-bind), so training a copy would train your weights")
            value = loss_fn(output, targets)
            value = float(value.detach().reshape(-1)[0]) if value.numel() == 1 else math.nan
        del clone
        return value
    except ProbeSkip as skip:
        return skip.reason
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


@contextlib.contextmanager
def _python_rng(session: _Session) -> Any:
    """Python's and numpy's global RNGs at the first step's state for the block, then
    put back as they were."""
    np = sys.modules.get("numpy")
    saved_py, saved_np = random.getstate(), _numpy_state()
    try:
        if session.initial_py_rng is not None:
            random.setstate(session.initial_py_rng)
        if np is not None and session.initial_np_rng is not None:
            np.random.set_state(session.initial_np_rng)
        yield
    finally:
        random.setstate(saved_py)
        if np is not None and saved_np is not None:
            np.random.set_state(saved_np)


def _state_for(state: dict[str, torch.Tensor] | None, module: nn.Module) -> dict[str, torch.Tensor] | None:
    """``state`` with the wrapper prefixes a compiled (``_orig_mod.``) or DDP/DataParallel
    (``module.``) model adds stripped, so it loads into the unwrapped ``module``."""
    if not state:
        return state
    own = set(module.state_dict())
    for prefix in ("_orig_mod.", "module.", "_orig_mod.module.", "module._orig_mod."):
        if set(state) == own:
            break
        if all(k.startswith(prefix) for k in state):
            stripped = {k[len(prefix):]: v for k, v in state.items()}
            if set(stripped) == own or not set(state) & own:
                state = stripped
    return state


@contextlib.contextmanager
def _weights_at_start(model: nn.Module, session: _Session) -> Any:
    """The model with the weights it had at the first watched step, for the duration of
    the experiments (then put back): after a few steps at a too-high learning rate the
    weights may be wrecked, and the experiments (the LR sweep first of all) must judge
    the training setup, not the wreckage. The model itself is used, not a copy, so that
    the script's optimizer still maps onto its parameters (the experiments copy both)."""
    # Captured on a compile or DDP/DataParallel wrapper: its `_orig_mod.`/`module.` prefix goes.
    state = _state_for(session.initial_state, model)
    if not state:
        yield
        return
    now = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        model.load_state_dict(state)
    except Exception as exc:  # an unusual model: judge it as it is now, and say so
        session.notes.append(f"the experiments use the weights after the watched steps "
                             f"(restoring the first step's weights failed: {exc!r})")
        model.load_state_dict(now)
        yield
        return
    try:
        yield
    finally:
        model.load_state_dict(now)


def infer_sgd_lr(obs: Any) -> float | None:
    """The learning rate of hand-written plain SGD (``p -= lr * p.grad``), read off the
    watched steps as |update| / |gradient|, when that ratio is the same (within 5%) for
    every parameter and step; None otherwise (momentum, Adam-like or mixed rules)."""
    ratios = []
    for rec in getattr(obs, "steps", []):
        for name, upd in rec.update_norms.items():
            g = rec.grad_norms.get(name)
            if g and upd and math.isfinite(g) and math.isfinite(upd) and g > 0 and upd > 0:
                ratios.append(upd / g)
    if len(ratios) < 2:
        return None
    lo, hi = min(ratios), max(ratios)
    return float(sorted(ratios)[len(ratios) // 2]) if hi <= lo * 1.05 else None


def _stand_in_sgd(doctor: Doctor, session: _Session) -> torch.optim.Optimizer | None:
    """No torch.optim optimizer: an SGD with the learning rate the hand-written updates
    used, so the experiments train the copies the way the script does."""
    lr = infer_sgd_lr(doctor.observations)
    model = doctor.model
    if lr is None:
        session.notes.append("no torch.optim optimizer was seen and the hand-written update is not "
                             "plain SGD: the experiments train the copies with Adam(lr=1e-3)")
        return None
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        return None
    session.notes.append(f"no torch.optim optimizer was seen: the hand-written updates are plain SGD "
                         f"with lr={lr:.3g}, which the experiments use")
    return torch.optim.SGD(params, lr=lr)


def _as_stand_in(checkup: Report) -> Report:
    """Experiments trained with a stand-in optimizer (the script's hand-written update
    rule is not plain SGD): their verdicts are at most warnings, and say so."""
    from ._report import Severity

    for f in checkup.findings:
        if f.severity is Severity.ERROR:
            f.severity = Severity.WARNING
        f.message = ("(trained with a stand-in optimizer, Adam lr=1e-3: the script's own update rule "
                     "is hand-written and not plain SGD) " + f.message)
    if not any(s["check"] == "lr-sweep" for s in checkup.checks_skipped) and "lr-sweep" not in checkup.checks_run:
        checkup.checks_skipped.append({
            "check": "lr-sweep",
            "reason": "the script updates weights by hand with a rule that is not plain SGD (momentum, "
                      "clipping...), so there is no learning rate of yours to sweep; use torch.optim, or "
                      "doctor.checkup(..., optimizer=...) in Python"})
    checkup.sort()
    return checkup


def _locate_loss_input(session: _Session, inputs: Any, expected: tuple[int, ...]) -> Any:
    """Run the model once (on a copy with its step-0 weights) and find the loss input."""
    from .probes.context import ModelCall
    from .probes.context import call as call_model

    from .probes.isolation import copy_model

    model = _unwrapped(session)
    if model is None:
        return None
    try:
        clone = copy_model(model)
        state = _state_for(session.initial_state, clone)
        if state is not None:
            clone.load_state_dict(state)
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            if isinstance(inputs, ModelCall):
                out = call_model(clone, inputs)
            else:
                out = clone(*inputs) if isinstance(inputs, tuple) else clone(inputs)
        del clone
    except Exception:
        return None
    return _find_loss_input(out, tuple(expected))


def _unwrapped(session: _Session) -> nn.Module | None:
    doctor = session.doctor
    return doctor.model if doctor is not None else session.model
