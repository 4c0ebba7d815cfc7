"""One walker over nested tensors: tensors inside tuples, named tuples, lists and dicts.

Batches, model outputs and captured call arguments come as arbitrary nests of these
containers; every part of nndoctor that needs "each tensor in there" uses these two
functions, so a new container kind is taught in one place.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

__all__ = ["map_tensors", "tensors", "map_leaves", "named_tensors"]


def map_leaves(obj: Any, fn: Callable[[Any], Any], is_leaf: Callable[[Any], bool]) -> Any:
    """``obj`` with every leaf ``x`` (``is_leaf(x)``) replaced by ``fn(x)``; containers
    (tuple, named tuple, list, dict and their subclasses) are rebuilt with their own
    type, anything else is returned as it is."""
    if is_leaf(obj):
        return fn(obj)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # named tuple: positional rebuild
        return type(obj)(*(map_leaves(v, fn, is_leaf) for v in obj))
    if isinstance(obj, (list, tuple)):
        return _rebuild(obj, [map_leaves(v, fn, is_leaf) for v in obj], list if isinstance(obj, list) else tuple)
    if isinstance(obj, dict):
        return _rebuild(obj, {k: map_leaves(v, fn, is_leaf) for k, v in obj.items()}, dict)
    return obj


def _rebuild(original: Any, items: Any, plain: type) -> Any:
    """The container type of ``original`` holding ``items``; a subclass whose constructor
    does not take its items (a dataclass-like model output...) becomes the plain type."""
    if type(original) is plain:
        return plain(items) if plain is tuple else items
    try:
        return type(original)(items)
    except Exception:
        return plain(items)


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


def named_tensors(obj: Any, prefix: str = "", max_depth: int | None = None) -> list[tuple[str, torch.Tensor]]:
    """``[(position, tensor)]`` in traversal order; the position reads like an index
    (``"[0]"``, ``"['boxes']"``). ``max_depth`` bounds the nesting walked (None: all)."""
    out: list[tuple[str, torch.Tensor]] = []
    _walk(obj, prefix, 0, max_depth, out)
    return out


def _walk(obj: Any, prefix: str, depth: int, max_depth: int | None,
          out: list[tuple[str, torch.Tensor]]) -> None:
    if isinstance(obj, torch.Tensor):
        out.append((prefix, obj))
        return
    if max_depth is not None and depth > max_depth:
        return
    if isinstance(obj, (tuple, list)):
        for i, v in enumerate(obj):
            _walk(v, f"{prefix}[{i}]", depth + 1, max_depth, out)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _walk(v, f"{prefix}[{k!r}]", depth + 1, max_depth, out)
