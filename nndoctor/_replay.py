"""Replaying the script's own training step in the experiments (for the CLI runner).

The runner records, during the first watched step:

* the model call as the script made it: every positional and keyword input
  (:func:`call_kwargs_from_frame` reads the keyword ones, which torch's global forward
  hooks do not receive);
* every loss function the script called (``torch.nn.functional``'s losses are wrapped
  while the runner watches, which also sees ``nn.CrossEntropyLoss`` and friends: their
  ``forward`` calls the functional form through the module attribute) with its exact
  arguments (``ignore_index``, ``reduction``, ``weight``, ``label_smoothing``,
  ``pos_weight``...) and the loss module instance when there is one;
* the scalar tensors the model returned (a model that computes its loss in ``forward``);
* the tensor the first ``backward()`` ran on, and how it is related to those: the loss
  itself, or the loss scaled (``loss / 4`` for gradient accumulation) or reduced
  (``loss.mean()`` after ``reduction='none'``).

:func:`build_replay` turns that into an input (a :class:`~nndoctor.probes.ModelCall`),
the targets, the batch dimension of each tensor, and a loss callable the probes call as
``loss_fn(model_output, targets)``. The replay is then checked against the script's own
first loss; when it cannot be matched the reason names what differs.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from typing import Any, Callable

import torch
from torch import nn

from ._losskinds import loss_kind
from ._tree import map_tensors, tensors

__all__ = [
    "LossCall",
    "LossRecorder",
    "BackwardLink",
    "call_kwargs_from_frame",
    "infer_batch_dims",
    "ReplayLoss",
    "OutputLoss",
]

# torch.nn.functional losses the runner wraps (each nn.Module loss calls one of these).
FUNCTIONAL_LOSSES = (
    "cross_entropy", "nll_loss", "binary_cross_entropy", "binary_cross_entropy_with_logits",
    "mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss", "kl_div", "poisson_nll_loss",
    "gaussian_nll_loss", "soft_margin_loss", "multilabel_soft_margin_loss", "cosine_embedding_loss",
    "margin_ranking_loss", "hinge_embedding_loss", "multi_margin_loss", "triplet_margin_loss",
    "ctc_loss",
)
# Single-input autograd nodes the script may put between its loss and backward().
_SCALE_NODES = {"DivBackward0": "div", "MulBackward0": "mul", "MeanBackward0": "mean",
                "SumBackward0": "sum", "DivBackward1": "div", "MulBackward1": "mul"}
_MAX_KEEP = 1 << 20  # elements of an unreduced loss output kept for the comparison


def _clone(obj: Any) -> Any:
    return map_tensors(obj, lambda t: t.detach().clone())


def call_kwargs_from_frame(module: nn.Module) -> dict[str, Any]:
    """The keyword arguments of the ``module(...)`` call in progress, read from
    ``Module._call_impl``'s frame: torch's *global* forward pre-hooks get the positional
    arguments only. ``{}`` when the frame is not found (another torch layout)."""
    frame = sys._getframe(1)
    for _ in range(8):
        if frame is None:
            break
        code = frame.f_code
        if code.co_name in ("_call_impl", "_wrapped_call_impl") and frame.f_locals.get("self") is module:
            kwargs = frame.f_locals.get("kwargs")
            return dict(kwargs) if isinstance(kwargs, dict) else {}
        frame = frame.f_back
    return {}


@dataclasses.dataclass
class LossCall:
    """One call of a loss function during the first watched step."""

    name: str                      # torch.nn.functional name, e.g. "cross_entropy"
    fn: Callable[..., Any]         # the original function
    module: nn.Module | None       # the nn.Module loss being run, if any
    input_shape: tuple[int, ...]
    target: Any                    # detached clone
    extra_args: tuple[Any, ...]    # positional arguments after (input, target)
    kwargs: dict[str, Any]
    output: torch.Tensor | None    # detached clone (None when too large)
    grad_fn: Any
    inside_model: bool

    def describe(self) -> str:
        shown = {k: v for k, v in self.kwargs.items() if v is not None and not isinstance(v, torch.Tensor)}
        shown.update({k: f"tensor{tuple(v.shape)}" for k, v in self.kwargs.items() if isinstance(v, torch.Tensor)})
        args = ", ".join(f"{k}={v!r}" for k, v in shown.items() if not _is_default(self.name, k, v))
        who = f"{type(self.module).__name__}" if self.module is not None else f"F.{self.name}"
        return f"{who}({args})"


_DEFAULTS = {"ignore_index": -100, "reduction": "mean", "label_smoothing": 0.0, "size_average": None,
             "reduce": None, "beta": 1.0, "delta": 1.0, "log_target": False}


def _is_default(name: str, key: str, value: Any) -> bool:
    return key in _DEFAULTS and _DEFAULTS[key] == value


class LossRecorder:
    """Wraps the ``torch.nn.functional`` losses (see :data:`FUNCTIONAL_LOSSES`) while
    :meth:`install`'s handle lives; records calls while ``active`` (the first watched
    step), at most ``limit`` of them. The wrappers only ever call through: a recording
    failure is swallowed, and nothing is recorded while torch.compile traces."""

    def __init__(self, limit: int = 16) -> None:
        self.limit = limit
        self.active = False
        self.calls: list[LossCall] = []
        self.loss_modules: list[nn.Module] = []  # nn.Module losses being run, innermost last
        self.inside_model: Callable[[], bool] = lambda: False
        self._originals: list[tuple[Any, str, Any]] = []

    def install(self) -> Callable[[], None]:
        import torch.nn.functional as F

        for name in FUNCTIONAL_LOSSES:
            original = F.__dict__.get(name)
            if original is None:
                continue
            setattr(F, name, self._wrap(name, original))
            self._originals.append((F, name, original))

        def restore() -> None:
            for owner, name, original in reversed(self._originals):
                setattr(owner, name, original)
            self._originals = []
            self.active = False

        return restore

    def _wrap(self, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        recorder = self

        def loss_wrapper(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            if recorder.active and len(recorder.calls) < recorder.limit:
                try:
                    if not _compiling():
                        recorder._record(name, original, args, kwargs, out)
                except Exception:  # recording is best effort; the user's call is not
                    pass
            return out

        loss_wrapper.__name__ = name
        loss_wrapper.__qualname__ = name
        loss_wrapper.__wrapped__ = original  # type: ignore[attr-defined]
        loss_wrapper.__doc__ = original.__doc__
        return loss_wrapper

    def _record(self, name: str, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        if not isinstance(out, torch.Tensor) or out.grad_fn is None or not args:
            return
        inp = args[0]
        target = args[1] if len(args) > 1 else kwargs.get("target")
        rest = {k: v for k, v in kwargs.items() if k not in ("input", "target")}
        self.calls.append(LossCall(
            name=name, fn=fn, module=self.loss_modules[-1] if self.loss_modules else None,
            input_shape=tuple(inp.shape) if isinstance(inp, torch.Tensor) else (),
            target=_clone(target), extra_args=_clone(tuple(args[2:])), kwargs=_clone(rest),
            output=out.detach().clone() if out.numel() <= _MAX_KEEP else None,
            grad_fn=out.grad_fn, inside_model=self.inside_model(),
        ))


def _compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    check = getattr(compiler, "is_compiling", None)
    return bool(check()) if check is not None else False


# --------------------------------------------------------------------------------------
# What the first backward() ran on
# --------------------------------------------------------------------------------------
@dataclasses.dataclass
class BackwardLink:
    """How the first backward'd tensor derives from a loss: ``ops`` are the scale and
    reduction nodes in between (root first), ``source`` the loss call or the path of the
    model's scalar output it reaches."""

    value: float                   # what the script backpropagated
    root: str                      # the root autograd node's name
    ops: list[str]
    call: LossCall | None = None
    output_path: tuple[Any, ...] | None = None
    chain: list[str] = dataclasses.field(default_factory=list)  # names seen, for messages


def link_backward(tensor: torch.Tensor, calls: list[LossCall],
                  output_scalars: list[tuple[tuple[Any, ...], Any]]) -> BackwardLink | None:
    """Follow the backward'd tensor's graph through scale and reduction nodes to a model
    output scalar (preferred: the model computes its loss) or a recorded loss call."""
    node = tensor.grad_fn
    if node is None:
        return None
    link = BackwardLink(value=float(tensor.detach().reshape(-1)[0]) if tensor.numel() else math.nan,
                        root=type(node).__name__, ops=[])
    by_output = {id(g): path for path, g in output_scalars}
    by_call = {id(c.grad_fn): c for c in calls}
    for _ in range(4):
        link.chain.append(type(node).__name__)
        if id(node) in by_output:
            link.output_path = by_output[id(node)]
            return link
        if id(node) in by_call:
            link.call = by_call[id(node)]
            return link
        op = _SCALE_NODES.get(type(node).__name__)
        if op is None:
            return link
        nexts = [n for n, _ in node.next_functions if n is not None]
        if len(nexts) != 1:  # loss * weight_tensor, loss_a + loss_b: not a plain scale
            return link
        link.ops.append(op)
        node = nexts[0]
    return link


def scalar_outputs(output: Any) -> list[tuple[tuple[Any, ...], Any]]:
    """(path, grad_fn) of the 0-dim floating tensors with a graph in a model output."""
    found: list[tuple[tuple[Any, ...], Any]] = []

    def walk(obj: Any, path: tuple[Any, ...], depth: int) -> None:
        if isinstance(obj, torch.Tensor):
            if obj.is_floating_point() and obj.numel() == 1 and obj.grad_fn is not None:
                found.append((path, obj.grad_fn))
            return
        if depth > 3:
            return
        if isinstance(obj, dict):
            items: Any = obj.items()
        elif isinstance(obj, (tuple, list)):
            items = enumerate(obj)
        elif hasattr(obj, "__dataclass_fields__") or hasattr(obj, "to_tuple"):
            items = ((k, getattr(obj, k, None)) for k in getattr(obj, "__dataclass_fields__", {}))
        else:
            return
        for key, value in items:
            walk(value, (*path, key), depth + 1)

    walk(output, (), 0)
    return found


def select(output: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        output = getattr(output, key) if isinstance(key, str) and not isinstance(output, dict) else output[key]
    return output


# --------------------------------------------------------------------------------------
# Batch dimensions
# --------------------------------------------------------------------------------------
def infer_batch_dims(inputs: Any) -> tuple[int, list[int | None]] | None:
    """(batch size, the batch dim of each tensor in ``inputs``, depth-first), or None.

    The batch size is the first input tensor's dim 0, or its dim 1 when that size is the
    one every other input tensor shares (sequence-first models: ``model(data, hidden)``
    with data (T, N) and hidden (layers, N, H)). A tensor with no dim of that size (a
    mask, a scalar) is not sliced."""
    ts = tensors(inputs)
    first = next((t for t in ts if t.dim() > 0), None)
    if first is None:
        return None
    best: tuple[int, int, list[int | None]] | None = None
    for d in range(min(2, first.dim())):
        size = int(first.shape[d])
        dims = [_dim_of(t, size, d) for t in ts]
        missing = sum(1 for t, dim in zip(ts, dims) if dim is None and t.dim() > 0)
        if best is None or missing < best[0]:
            best = (missing, size, dims)
    assert best is not None
    return best[1], best[2]


def _dim_of(t: torch.Tensor, size: int, prefer: int) -> int | None:
    if t.dim() > prefer and t.shape[prefer] == size:
        return prefer
    return next((i for i, s in enumerate(t.shape) if s == size), None)


def target_layout(target: torch.Tensor, batch: int, first_input: torch.Tensor | None,
                  input_dim: int) -> tuple[torch.Tensor, int] | None:
    """``target`` (maybe reshaped) and its batch dim. A flat target (the script's
    ``targets.view(-1)``) is reshaped to the leading dims of the first input, batch dim
    included, so that a sub-batch slices inputs and targets alike; None if impossible."""
    if target.dim() > input_dim and target.shape[input_dim] == batch:
        return target, input_dim
    if target.dim() >= 1 and target.shape[0] == batch:
        return target, 0
    if target.dim() == 1 and first_input is not None and target.numel() % batch == 0:
        shape = tuple(first_input.shape)
        for k in range(input_dim + 1, len(shape) + 1):
            if math.prod(shape[:k]) == target.numel():
                return target.reshape(shape[:k]), input_dim
        if input_dim == 0:
            return target.reshape(batch, -1), 0
    return None


# --------------------------------------------------------------------------------------
# The loss callables the probes call as loss_fn(model_output, targets)
# --------------------------------------------------------------------------------------
class ReplayLoss:
    """The script's loss call replayed: the same function (or nn.Module loss) with the
    same arguments, on the model's output (already reduced to the tensor the loss was fed,
    by the runner's adapter) and targets flattened back when the script flattened them.
    ``post`` are the reductions the script applied after a ``reduction='none'`` loss."""

    def __init__(self, call: LossCall, *, flatten_target: bool, post: list[str]) -> None:
        self.call = call
        self.flatten_target = flatten_target
        self.post = post
        self.nndoctor_loss_kind = loss_kind(call.module) if call.module is not None else _kind_of(call.name)
        self.ignore_index = call.kwargs.get("ignore_index", -100 if call.name in ("cross_entropy", "nll_loss")
                                            else None)

    def __call__(self, output: Any, target: Any) -> torch.Tensor:
        if self.flatten_target and isinstance(target, torch.Tensor):
            target = target.reshape(-1)
        c = self.call
        kwargs = dict(c.kwargs)
        if "target" in kwargs or len(c.extra_args) == 0 and c.target is None:
            kwargs["target"] = target
            value = c.fn(output, *c.extra_args, **kwargs)
        else:
            value = c.fn(output, target, *c.extra_args, **kwargs)
        for op in self.post:
            value = value.mean() if op == "mean" else value.sum()
        return value

    def __repr__(self) -> str:
        return self.call.describe()


def _kind_of(name: str) -> str:
    import torch.nn.functional as F

    original = getattr(F, name, None)
    original = getattr(original, "__wrapped__", original)
    return loss_kind(original)


class OutputLoss:
    """A model that computes its loss in ``forward`` (``logits, loss = model(X, Y)``):
    the loss is the scalar at ``path`` in the model's output; targets are part of the
    model call and are not passed separately."""

    nndoctor_loss_kind = "other"

    def __init__(self, path: tuple[Any, ...], kind: str = "other", ignore_index: int | None = None) -> None:
        self.path = path
        self.nndoctor_loss_kind = kind
        self.ignore_index = ignore_index

    def __call__(self, output: Any, target: Any = None) -> torch.Tensor:
        return select(output, self.path)

    def __repr__(self) -> str:
        return "the loss the model returns (output" + "".join(f"[{k!r}]" for k in self.path) + ")"
