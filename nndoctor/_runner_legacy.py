"""The runner's fallback plan for the experiments: the loss rebuilt from its autograd
graph (the kind of loss the graph shows, with default arguments) and the model's first
positional inputs, used when the script's own loss call was not seen
(:func:`nndoctor._runner_plan._replay_plan` is the first choice); checked against the
script's first loss."""

from __future__ import annotations

import copy
import math
from typing import Any, Callable

import torch
from torch import nn

from ._doctor import Doctor
from ._runner_plan import _WHO_NEEDS, _locate_loss_input, _OutputAdapter, _Plan, _state_for, _unwrapped
from ._runner_session import _LOSS_MATCH_RTOL, _Session

# --------------------------------------------------------------------------------------
# Loss functions rebuilt from the loss graph
# --------------------------------------------------------------------------------------
def loss_from_graph(kind: str | None) -> Callable[..., torch.Tensor] | None:
    """The torch function for a loss kind recognised in the loss's autograd graph."""
    import torch.nn.functional as F

    return {
        "cross_entropy": F.cross_entropy,
        "nll": F.nll_loss,
        "bce_logits": F.binary_cross_entropy_with_logits,
        "bce": F.binary_cross_entropy,
        "mse": F.mse_loss,
        "smooth_l1": F.smooth_l1_loss,
        "huber": F.huber_loss,
    }.get(kind or "")


def _legacy_plan(session: _Session, doctor: Doctor) -> "_Plan | str":
    """The loss rebuilt from its autograd graph (a hand-written loss whose kind the graph
    shows), with the first positional inputs: the fallback when the script's loss call
    was not seen."""
    captured = doctor.captured_batch
    args, kwargs = captured.get("args"), captured.get("kwargs") or {}
    graph = captured.get("loss_graph")
    target = captured.get("target")
    first_loss = next((s.loss for s in (doctor.observations.steps if doctor.observations else [])
                       if s.loss is not None), None)
    if not args and not kwargs:
        return ("the model's inputs could not be captured (the model was called with keyword "
                "arguments only?); use doctor.checkup((inputs, targets), loss_fn=...) in Python")
    if kwargs:
        return ("the model takes keyword arguments, which the runner cannot replay; use "
                "doctor.checkup((inputs, targets), loss_fn=...) in Python")
    notes: list[str] = []
    kind = getattr(graph, "kind", None)
    nodes = ", ".join(getattr(graph, "nodes", None) or []) if graph is not None else ""
    if graph is None or kind is None:
        fallback = _graph_of_first_step(doctor)
        names = list(getattr(fallback, "nodes", None) or [])
        nodes = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
        return (
            "the loss is custom code that nndoctor cannot rebuild"
            + (f" (autograd nodes {nodes})" if nodes else "")
            + "; run the experiments from Python with doctor.checkup((inputs, targets), loss_fn=...)"
        )
    loss_fn = loss_from_graph(kind)
    if loss_fn is None:
        return (f"the loss ({kind}) is not one the runner rebuilds (cross-entropy, NLL, BCE, MSE); "
                       f"use doctor.checkup((inputs, targets), loss_fn=...) in Python")
    if getattr(graph, "multi_term", False):
        return (
            f"the loss combines several terms (autograd nodes {nodes}), which the runner cannot "
            f"rebuild; use doctor.checkup((inputs, targets), loss_fn=...) in Python"
        )
    if target is None:
        return ("the loss target could not be captured from the loss graph")
    inputs = args[0] if len(args) == 1 else tuple(args)
    # A model whose output is a tuple/dict, or whose logits the script reshapes before the
    # loss: the experiments train an adapter that yields exactly what the loss was fed.
    experiment_model: nn.Module = doctor.model
    expected = getattr(graph, "input_shape", None)
    if expected:
        located = _locate_loss_input(session, inputs, expected)
        if located is None:
            return (f"the tensor the loss was fed (shape {tuple(expected)}) was not found in the "
                           f"model's output; use doctor.checkup((inputs, targets), loss_fn=...) in Python")
        index, tail = located
        lead = inputs.shape[0] if isinstance(inputs, torch.Tensor) and inputs.dim() > 0 else None
        if (tail is not None and isinstance(target, torch.Tensor) and target.dim() == 1 and lead
                and target.numel() != lead and target.numel() % lead == 0):
            # The script flattened (batch, positions) targets along with the logits: keep the
            # leading dimension so the experiments can take sub-batches of inputs and
            # targets alike; the loss flattens them again.
            target = target.reshape(lead, -1)
            flat_loss = loss_fn

            def loss_fn(output: Any, t: Any, _loss: Any = flat_loss) -> torch.Tensor:
                return _loss(output, t.reshape(-1))

        if index or tail is not None:
            experiment_model = _OutputAdapter(doctor.model, index, tail)
            notes.append(
                "the experiments train the model with its output reduced to the loss's input"
                + (f" (output{''.join(f'[{k!r}]' for k in index)})" if index else "")
                + (f", reshaped to (-1, {', '.join(map(str, tail))})" if tail is not None else ""))
            loss_fn = _adapted_loss(loss_fn, index, tail)
    # The rebuilt loss must give the script's own step-0 loss on the step-0 weights and
    # inputs; anything between the model's output and the loss (a log, a scale, a mask)
    # would make the experiments judge a different objective.
    check = _verify_loss(session, inputs, target, loss_fn, first_loss)
    if check is not None:
        return check
    if experiment_model is not doctor.model:
        loss_fn = getattr(loss_fn, "plain", loss_fn)  # the adapter model already selects/reshapes
    return _Plan(batch=(inputs, target), loss_fn=loss_fn, model=experiment_model, notes=notes)


def _graph_of_first_step(doctor: Doctor) -> Any:
    obs = doctor.observations
    if obs is None:
        return None
    return next((s.loss_graph for s in obs.steps if s.loss_graph is not None), None)


def _adapted_loss(loss_fn: Callable[..., Any], index: tuple[Any, ...], tail: tuple[int, ...] | None) -> Callable[..., Any]:
    """``loss_fn`` applied to the loss input found in a full model output (for checking
    the rebuilt loss against the script's own); ``.plain`` is the loss itself."""

    def adapted(output: Any, target: Any) -> torch.Tensor:
        for key in index:
            output = output[key]
        if tail is not None and tuple(output.shape[1:]) != tail:
            output = output.reshape(-1, *tail)
        return loss_fn(output, target)

    adapted.plain = loss_fn  # type: ignore[attr-defined]
    return adapted


def _verify_loss(session: _Session, inputs: Any, target: Any, loss_fn: Callable[..., Any],
                 first_loss: float | None) -> str | None:
    """None when ``loss_fn(model0(inputs), target)`` reproduces the script's first loss
    (on a copy of the model with its step-0 weights, RNG and modes), else why not."""
    model = _unwrapped(session)
    if model is None or session.initial_state is None or first_loss is None:
        return None  # nothing to compare with: trust the loss graph
    if not math.isfinite(first_loss):
        return None
    try:
        clone = copy.deepcopy(model)
        clone.load_state_dict(_state_for(session.initial_state, clone))
        for m, flag in zip(clone.modules(), session.initial_modes or []):
            m.training = flag
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            if session.initial_rng is not None:
                torch.set_rng_state(session.initial_rng)
            out = clone(*inputs) if isinstance(inputs, tuple) else clone(inputs)
            value = float(loss_fn(out, target).detach())
        del clone
    except Exception as exc:
        return (f"the loss rebuilt from its graph could not be evaluated ({type(exc).__name__}: {exc}); "
                f"use doctor.checkup((inputs, targets), loss_fn=...) in Python")
    if not math.isclose(value, first_loss, rel_tol=_LOSS_MATCH_RTOL, abs_tol=1e-6):
        return (f"the loss rebuilt from the autograd graph ({getattr(getattr(loss_fn, 'plain', loss_fn), '__name__', 'loss')} with default "
                f"arguments) gives {value:.6g} on the first batch, the script's loss was {first_loss:.6g}: "
                f"the script's loss call was not seen, so its arguments (ignore_index, reduction, weight, a "
                f"scale) are unknown; {_WHO_NEEDS}: use doctor.checkup((inputs, targets), loss_fn=...) in Python")
    return None
