"""No harm from a checkup: the isolation context and the model copies the probes train.

:func:`isolated` forks every RNG stream and puts back the user's ``training`` flags and
``requires_grad`` map; :func:`copy_model` makes the copy a probe trains, without the
Doctor's own hooks (a deepcopy carries module hooks along). The probes only ever touch
copies, so the flags are a second line of defence.
"""

from __future__ import annotations

import contextlib
import copy
import random
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

__all__ = ["isolated", "copy_model", "strip_our_hooks", "default_dtype", "ProbeSkip", "DROPOUT_TYPES"]

DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


class ProbeSkip(Exception):
    """A probe cannot measure this model (the reason is shown as the check's skip)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@contextlib.contextmanager
def isolated(model: nn.Module) -> Iterator[None]:
    """Fork torch's CPU and CUDA RNGs, save numpy's and Python's, and put the model's
    ``training`` flags and ``requires_grad`` map back on exit."""
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


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """``torch.set_default_dtype(dtype)`` for the block, the user's default put back after
    (a float64 gradient check must also see float64 tensors that ``forward`` creates)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def _is_ours(fn: Any) -> bool:
    fn = getattr(fn, "func", fn)  # functools.partial
    fn = getattr(fn, "__func__", fn)  # bound method
    return str(getattr(fn, "__module__", "") or "").startswith("nndoctor")


def strip_our_hooks(model: nn.Module) -> None:
    """Remove the Doctor's own hooks from a copy: its observers must not fire on the
    experiment copies (they would record the copies' steps as the user's)."""
    names = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    extras = ("_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs")
    for module in model.modules():
        for name in names:
            hooks = getattr(module, name, None)
            if not hooks:
                continue
            for key in [k for k, fn in hooks.items() if _is_ours(fn)]:
                del hooks[key]
                for extra in extras:
                    getattr(module, extra, {}).pop(key, None)
    for p in model.parameters():
        for name in ("_post_accumulate_grad_hooks", "_backward_hooks"):
            hooks = getattr(p, name, None)
            if hooks:
                for key in [k for k, fn in hooks.items() if _is_ours(fn)]:
                    del hooks[key]


def copy_model(model: nn.Module, *, dropout_off: bool = False) -> nn.Module:
    """A deep copy of ``model`` without our hooks and gradients; dropout switched off
    when asked (the overfit and random-input probes measure capacity, not regularisation)."""
    try:
        clone = copy.deepcopy(model)
    except Exception as exc:
        raise ProbeSkip(f"the model could not be copied (copy.deepcopy raised {type(exc).__name__}: {exc})") from exc
    strip_our_hooks(clone)
    for p in clone.parameters():
        p.grad = None
    if dropout_off:
        for m in clone.modules():
            if isinstance(m, DROPOUT_TYPES):
                m.eval()
    return clone
