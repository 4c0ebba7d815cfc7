"""One walker over nested tensors: tensors inside tuples, named tuples, lists and dicts.

Batches, model outputs and captured call arguments come as arbitrary nests of these
containers; every part of nndoctor that needs "each tensor in there" uses these two
functions, so a new container kind is taught in one place.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

__all__ = ["map_tensors", "tensors", "map_leaves"]


def map_leaves(obj: Any, fn: Callable[[Any], Any], is_leaf: Callable[[Any], bool]) -> Any:
    """``obj`` with every leaf ``x`` (``is_leaf(x)``) replaced by ``fn(x)``; containers
    (tuple, named tuple, list, dict and their subclasses) are rebuilt with their own
    type, anything else is returned as it is."""
    if is_leaf(obj):
        return fn(obj)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # named tuple: positional rebuild
        return type(obj)(*(map_leaves(v, fn, is_leaf) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(map_leaves(v, fn, is_leaf) for v in obj)
    if isinstance(obj, dict):
        return type(obj)((k, map_leaves(v, fn, is_leaf)) for k, v in obj.items())
    return obj


def _is_tensor(obj: Any) -> bool:
    return isinstance(obj, torch.Tensor)


def map_tensors(obj: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    """``obj`` with every tensor ``t`` replaced by ``fn(t)`` (see :func:`map_leaves`)."""
    return map_leaves(obj, fn, _is_tensor)


def tensors(obj: Any) -> list[torch.Tensor]:
    """Every tensor in ``obj``, in depth-first order of the containers."""
    out: list[torch.Tensor] = []
    map_tensors(obj, out.append)
    return out
