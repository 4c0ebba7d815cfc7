"""What every probe needs: the batch on the model's device, the loss, how to slice the
batch, and how to build the user's optimizer for a copy (:class:`ProbeContext`), plus
the one training loop the probes share (:func:`train_curve`)."""

from __future__ import annotations

import functools
import inspect
import math
import random
import time
from typing import Any, Callable, NamedTuple

import numpy as np
import torch
from torch import nn

from .._losskinds import BINARY_KINDS, CLASS_KINDS, loss_kind
from .._tree import map_tensors, tensors
from ._rng import SameDraws
from .isolation import ProbeSkip, copy_model, leaked_parameters

__all__ = ["ProbeContext", "ModelCall", "ReplayBatch", "call", "float_outputs", "train_curve",
           "needs_closure", "optimizer_step"]


class ModelCall(NamedTuple):
    """Inputs given as the exact call: ``model(*args, **kwargs)``. A named tuple, so the
    tree walkers (``nndoctor._tree``) map and slice its tensors like any other nest."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]


class ReplayBatch(tuple):
    """``(inputs, targets)`` with the batch dimension of every tensor (``input_dims``,
    ``target_dims``: one entry per tensor in :func:`nndoctor._tree.tensors` order, None
    for a tensor with no batch dim) and the batch size. ``batch_size=None``: the batch
    cannot be cut into sub-batches; the probes then get the whole batch."""

    input_dims: list[int | None] | None
    target_dims: list[int | None] | None
    batch_size: int | None

    def __new__(cls, inputs: Any, targets: Any, *, input_dims: "list[int | None] | None" = None,
                target_dims: "list[int | None] | None" = None, batch_size: int | None = None) -> "ReplayBatch":
        self = super().__new__(cls, (inputs, targets))
        self.input_dims, self.target_dims, self.batch_size = input_dims, target_dims, batch_size
        return self


def call(model: nn.Module, inputs: Any) -> Any:
    """``model(*args, **kwargs)`` for a :class:`ModelCall`, ``model(**inputs)`` for a dict,
    ``model(*inputs)`` for a tuple or list, else ``model(inputs)``."""
    if isinstance(inputs, ModelCall):
        return model(*inputs.args, **inputs.kwargs)
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def float_outputs(out: Any) -> list[torch.Tensor]:
    return [t for t in tensors(out) if t.is_floating_point() or t.is_complex()]


def _has_hooks(model: nn.Module) -> bool:
    from torch.nn.modules import module as torch_module

    if getattr(torch_module, "_global_forward_hooks", None) or getattr(torch_module, "_global_forward_pre_hooks", None):
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


class ProbeContext:
    """The batch (detached, on the model's device), the loss and its kind, the user's
    optimizer (read only: copies get fresh ones) and the seed every probe starts from.

    ``batch`` is ``(inputs, targets)``; inputs may be a :class:`ModelCall` (the exact
    call, positional and keyword), and a :class:`ReplayBatch` also says where each
    tensor's batch dim is, so that sub-batches cut every input and target alike.
    ``loss_fn(model_output, targets)`` may be any callable (the runner passes the
    script's own loss call, or the loss the model returns with ``targets=None``); an
    attribute ``nndoctor_loss_kind`` names its kind, ``ignore_index`` its ignored class."""

    def __init__(self, model: nn.Module, batch: Any, optimizer: Any, loss_fn: Any, *, seed: int = 0) -> None:
        self.model = model
        self.seed = int(seed)
        self.user_optimizer: torch.optim.Optimizer | None = optimizer
        self.param_names = {id(p): n for n, p in model.named_parameters()}
        device = next((p.device for p in model.parameters()), None)
        if device is None:
            device = next((b.device for b in model.buffers()), torch.device("cpu"))
        inputs, targets = batch
        move = lambda t: t.detach().to(device)  # noqa: E731
        self.inputs = map_tensors(inputs, move)
        self.targets = map_tensors(targets, move)
        # A replayed batch (the CLI runner's) says where each tensor's batch dim is; a
        # batch that cannot be cut is offered whole (batch_size 1: every take() is all of it).
        self.input_dims: list[int | None] | None = getattr(batch, "input_dims", None)
        self.target_dims: list[int | None] | None = getattr(batch, "target_dims", None)
        self.sliceable = True
        if isinstance(batch, ReplayBatch):
            if batch.batch_size is None or self.input_dims is None:
                self.sliceable, self.batch_size = False, 1
            else:
                self.batch_size = int(batch.batch_size)
        elif isinstance(self.targets, torch.Tensor) and self.targets.dim() > 0:
            self.batch_size = int(self.targets.shape[0])
        else:
            first = next((t for t in tensors(self.inputs) if t.dim() > 0), None)
            if first is None:
                raise TypeError("checkup: the inputs hold no tensor with a batch dimension")
            self.batch_size = int(first.shape[0])
        self.loss_fn, self.loss_kind = self._resolve_loss(loss_fn)
        self.ignore_index: int | None = getattr(self.loss_fn, "ignore_index", None)

    # -- loss ------------------------------------------------------------------------
    def _resolve_loss(self, loss_fn: Any) -> tuple[Callable[..., torch.Tensor], str]:
        if loss_fn is not None:
            # A replayed loss (the runner's) names its kind; anything else by its type.
            return loss_fn, getattr(loss_fn, "nndoctor_loss_kind", None) or loss_kind(loss_fn)
        targets = self.targets
        if isinstance(targets, torch.Tensor) and not targets.is_floating_point() and not targets.is_complex():
            probe = self.copy_model()
            with torch.no_grad():
                out = call(probe, self.inputs)
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
    def _slice(self, obj: Any, index: slice) -> Any:
        n = self.batch_size

        def cut(t: torch.Tensor) -> torch.Tensor:
            if t.dim() >= 1 and t.shape[0] == n:
                return t[index]
            if t.dim() >= 2 and t.shape[1] == n:  # sequence-first (T, N, ...) inputs
                return t[:, index]
            return t

        return map_tensors(obj, cut)

    @staticmethod
    def _slice_dims(obj: Any, dims: list[int | None], index: slice) -> Any:
        it = iter(dims)

        def cut(t: torch.Tensor) -> torch.Tensor:
            d = next(it, None)
            if d is None or t.dim() <= d:
                return t
            return t[(slice(None),) * d + (index,)]

        return map_tensors(obj, cut)

    def take(self, start: int, stop: int) -> tuple[Any, Any]:
        if not self.sliceable:
            return self.inputs, self.targets
        s = slice(start, min(stop, self.batch_size))
        if self.input_dims is not None:
            return (self._slice_dims(self.inputs, self.input_dims, s),
                    self._slice_dims(self.targets, self.target_dims or [], s))
        return self._slice(self.inputs, s), self._slice(self.targets, s)

    # -- task ------------------------------------------------------------------------
    @property
    def classification(self) -> bool:
        t = self.targets
        if self.loss_kind in CLASS_KINDS:
            return isinstance(t, torch.Tensor) and not t.is_floating_point()
        return self.loss_kind in BINARY_KINDS and isinstance(t, torch.Tensor)

    def accuracy(self, outputs: Any, targets: Any) -> float | None:
        if not self.classification or not isinstance(outputs, torch.Tensor):
            return None
        with torch.no_grad():
            if self.loss_kind in CLASS_KINDS:
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
        """A copy of the model for a probe to train, proven independent of the original
        (once per context): its forward's graph reaches none of the original's parameters,
        and, when the model has no hooks that would notice, it reproduces the original's
        output. Else :class:`ProbeSkip` with the reason: never train the user's weights."""
        clone = copy_model(self.model, dropout_off=dropout_off)
        if self._isolation_problem is None:
            self._isolation_problem = self._verify_isolation()
        if self._isolation_problem:
            raise ProbeSkip(self._isolation_problem)
        return clone

    _isolation_problem: str | None = None

    @functools.cached_property
    def notes(self) -> list[str]:
        """Lines for the report's notes (what a probe left out, and why)."""
        return []

    @functools.cached_property
    def full_overfit_runs(self) -> dict[tuple[int, int], tuple[list[float], str]]:
        """(samples, steps) -> (losses, optimizer name) of the overfit probe's run with the
        user's optimizer when it trained all its steps (it did not fit): an intervention's
        unfixed run is that same run and reuses it (on a 44M-parameter Transformer, 100
        Adam steps saved)."""
        return {}
    # When the probes' training must stop (time.monotonic()): a probe is let finish past
    # the experiments' budget, but not without bound (an LBFGS step of a slow model can
    # take seconds; a hundred of them, minutes). None: no limit.
    deadline: float | None = None
    # Evaluations (forward + backward) of copies so far, every probe's: one per optimizer
    # step, or per closure call of LBFGS; with the time they took, the measured cost of a
    # probe step that sizes the probes still to run.
    train_steps: int = 0

    def check_deadline(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise ProbeSkip("the experiments' time budget ran out while this experiment was running "
                            "(its training steps are slow, e.g. LBFGS on a long sequence); raise it with "
                            "nndoctor check --timeout, or time_budget=...")

    def _verify_isolation(self) -> str:
        """'' when a fresh copy is independent of the model, else why not."""
        probe = copy_model(self.model)
        inputs, _ = self.take(0, min(2, self.batch_size))
        draws = SameDraws(self.seed)  # Python/numpy draws in forward (a random depth) alike too
        training = [(m, m.training) for m in self.model.modules()] + [(m, m.training) for m in probe.modules()]
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            probe.eval()
            # Both calls draw the same numbers from every RNG: a forward may use Python's
            # or numpy's (jcjohnson's DynamicNet picks its depth with random.randint).
            with torch.random.fork_rng(devices=[]), torch.enable_grad():
                draws()
                out = call(probe, inputs)
            leaked = leaked_parameters(self.model, out)
            if leaked:
                return (f"the model's copy still computes with the original's parameters "
                        f"({', '.join(leaked[:3])}{', ...' if len(leaked) > 3 else ''}: a function stored on a "
                        f"module, or a global, reaches the original), so training it would train your "
                        f"weights; the experiments are not run")
            if not _has_hooks(self.model):
                self.model.eval()
                with torch.random.fork_rng(devices=[]), torch.no_grad():
                    draws()
                    ref = call(self.model, inputs)
                mine, theirs = float_outputs(out), float_outputs(ref)
                same = len(mine) == len(theirs) and all(
                    a.shape == b.shape and torch.allclose(a.detach(), b, rtol=1e-4, atol=1e-5, equal_nan=True)
                    for a, b in zip(mine, theirs))
                if not same:
                    return ("the model's copy does not reproduce the model's output (eval mode, same "
                            "inputs and seed): the copy is not the model, so its experiments would judge "
                            "something else; the experiments are not run")
        except ProbeSkip:
            raise
        except Exception:
            return ""  # the probes themselves will meet (and report) the same failure
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
            for m, flag in training:
                m.training = flag
        return ""

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
            raise ProbeSkip("none of the optimizer's parameters belong to the model")
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
                raise ProbeSkip("the model has no trainable parameters")
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
        if _step_needs_closure(kind):
            _one_iteration_per_step(groups, defaults)
        for attempt in (lambda: kind(groups, **defaults), lambda: kind(groups)):
            try:
                return attempt()
            except TypeError:
                continue
        raise ProbeSkip(f"could not build a {kind.__name__} for the model copy")

    @property
    def base_lr(self) -> float:
        if self.user_optimizer is None:
            return 1e-3
        return float(self.user_optimizer.param_groups[0].get("lr", 1e-3))

    @property
    def optimizer_type(self) -> str:
        return type(self.user_optimizer).__name__ if self.user_optimizer is not None else "Adam"

    @staticmethod
    def optimizer_name(opt: torch.optim.Optimizer) -> str:
        g = opt.param_groups[0]
        parts = [f"lr={float(g['lr']):.3g}"] if "lr" in g else []
        for key in ("momentum", "weight_decay"):
            if g.get(key):
                parts.append(f"{key}={g[key]:.3g}")
        return f"{type(opt).__name__}({', '.join(parts)})"


def train_curve(
    ctx: ProbeContext,
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
    at each step before its update, plus the loss after the last update. A non-finite
    loss ends the curve (it is recorded; what it means is the check's call)."""
    losses: list[float] = []
    accs: list[float | None] = []
    for step in range(steps + 1):
        if every is not None:
            every(step)
        opt.zero_grad(set_to_none=True)
        out = call(clone, inputs)
        loss = ctx.loss(out, targets)
        value = float(loss.detach())
        losses.append(value)
        accs.append(ctx.accuracy(out, targets))
        if not math.isfinite(value) or step == steps or (stop is not None and stop(losses, accs)):
            break
        loss.backward()
        optimizer_step(ctx, clone, opt, inputs, targets, loss)
    return losses, accs


def _one_iteration_per_step(groups: list[dict[str, Any]], defaults: dict[str, Any]) -> None:
    """A closure optimizer's copy (LBFGS) does one iteration per ``step`` call
    (``max_iter=1``, ``max_eval`` scaled alike), so that a probe step is one evaluation of
    the model, like any other optimizer's: a probe sized in steps (the LR sweep's 25, the
    overfit's 100) then costs what it costs for SGD, not up to ``max_iter`` (20) times
    more (pytorch/examples' time_sequence_prediction: one LBFGS step of a copy, 18 s).
    LBFGS keeps its curvature pairs, the step count and the previous loss in its state
    between calls, and evaluates the closure first in each call where the previous
    iteration would have re-evaluated it, so N calls of one iteration walk the same
    points as one call of N iterations; only the in-step stopping tests (tolerances)
    end a call instead of the run."""
    for entry in (*groups, defaults):
        max_iter = entry.get("max_iter")
        if not isinstance(max_iter, int) or max_iter <= 1:
            continue
        max_eval = entry.get("max_eval")
        entry["max_iter"] = 1
        if isinstance(max_eval, int):
            entry["max_eval"] = max(1, max_eval // max_iter)


def needs_closure(opt: torch.optim.Optimizer) -> bool:
    """True for optimizers whose ``step`` requires a closure (LBFGS): its ``closure``
    parameter has no default."""
    return _step_needs_closure(type(opt))


@functools.lru_cache(maxsize=64)
def _step_needs_closure(kind: type) -> bool:
    # Once per optimizer class: inspect.signature on every probe step cost more than a
    # small model's step.
    try:
        param = inspect.signature(kind.step).parameters.get("closure")
    except (TypeError, ValueError):
        return False
    return param is not None and param.default is inspect.Parameter.empty


def optimizer_step(ctx: ProbeContext, clone: nn.Module, opt: torch.optim.Optimizer, inputs: Any,
                   targets: Any, loss: torch.Tensor | None = None) -> None:
    """``opt.step()``, or for a closure optimizer (LBFGS) ``opt.step(closure)`` with a
    closure that re-evaluates the loss on the same batch: one call is one optimizer step
    (LBFGS may evaluate the closure several times inside it). ``loss``: the loss the
    caller has just computed and back-propagated at the current weights; the closure's
    first evaluation returns it instead of computing it again (the gradients are already
    in place), which halves the cost of a one-iteration LBFGS step.

    ``ctx.train_steps`` counts evaluations of the model (forward + backward), the unit
    the experiments' budget sizes the probes in: one per step, or each closure call."""
    ctx.check_deadline()
    if not needs_closure(opt):
        ctx.train_steps += 1
        opt.step()
        return
    ready = [loss]

    def closure() -> torch.Tensor:
        ctx.train_steps += 1
        if ready[0] is not None:
            value, ready[0] = ready[0], None
            return value
        ctx.check_deadline()
        opt.zero_grad(set_to_none=True)
        value = ctx.loss(call(clone, inputs), targets)
        value.backward()
        return value

    opt.step(closure)
