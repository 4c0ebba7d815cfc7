"""One walker over nested tensors (tensors inside tuples, lists and dicts).

``map_tensors`` and ``tensors`` are the shared vocabulary (the experiments use the same
two names); ``named_tensors`` adds each tensor's position for messages.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

__all__ = ["map_tensors", "tensors", "named_tensors"]


def map_tensors(obj: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    """``obj`` with ``fn`` applied to every tensor inside nested tuples, lists and dicts;
    everything else is kept as it is (the same object). Containers are rebuilt with
    their own type (named tuples included)."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, tuple):
        mapped = [map_tensors(v, fn) for v in obj]
        return type(obj)(*mapped) if hasattr(obj, "_fields") else type(obj)(mapped)
    if isinstance(obj, list):
        return [map_tensors(v, fn) for v in obj]
    if isinstance(obj, dict):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    return obj


def tensors(obj: Any) -> list[torch.Tensor]:
    """The tensors inside nested tuples, lists and dicts, in traversal order."""
    return [t for _, t in named_tensors(obj)]


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
