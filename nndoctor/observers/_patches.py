"""Process-wide wrappers, installed while at least one recorder listens (see
``_patching.SharedPatch``): ``torch.autograd.backward``, ``GradScaler.scale/update`` and
``DataLoader.__iter__``."""

from __future__ import annotations

from typing import Any, Callable

import torch

from .._patching import SharedPatch


def _install_backward(patch: SharedPatch) -> list[tuple[Any, str, Callable[..., Any]]]:
    """``Tensor.backward`` calls ``torch.autograd.backward`` through the module
    attribute, so wrapping that attribute sees every ``loss.backward()`` and
    ``torch.autograd.backward(loss)`` — whatever code computed the loss."""
    original = torch.autograd.backward

    def backward(tensors: Any, *args: Any, **kwargs: Any) -> Any:
        listeners = patch.listeners
        for lst in listeners:
            lst.before_backward(tensors)
        result = original(tensors, *args, **kwargs)
        for lst in listeners:
            lst.after_backward(tensors)
        return result

    return [(torch.autograd, "backward", backward)]


def _install_scaler(patch: SharedPatch) -> list[tuple[Any, str, Callable[..., Any]]] | None:
    """GradScaler.scale (to report the loss unscaled) and GradScaler.update (the end of
    every AMP step, including the ones whose optimizer step the scaler skipped because
    of inf/NaN gradients)."""
    try:
        from torch.amp.grad_scaler import GradScaler
    except Exception:  # torch without torch.amp.GradScaler: nothing to intercept
        return None
    orig_scale, orig_update = GradScaler.__dict__["scale"], GradScaler.__dict__["update"]

    def scale(scaler: Any, outputs: Any) -> Any:
        result = orig_scale(scaler, outputs)
        if isinstance(result, torch.Tensor) and result is not outputs:
            for lst in patch.listeners:
                lst.on_scaled(result, scaler)
        return result

    def update(scaler: Any, *args: Any, **kwargs: Any) -> Any:
        for lst in patch.listeners:
            lst.on_scaler_update(scaler)
        return orig_update(scaler, *args, **kwargs)

    return [(GradScaler, "scale", scale), (GradScaler, "update", update)]


def _install_dataloader(patch: SharedPatch) -> list[tuple[Any, str, Callable[..., Any]]] | None:
    """``DataLoader.__iter__``: which loaders feed the watched steps (their data set size
    and batch size tell full-batch training from one batch fed again by mistake)."""
    try:
        from torch.utils.data import DataLoader
    except Exception:  # pragma: no cover - torch always has it
        return None
    original = DataLoader.__dict__["__iter__"]

    def __iter__(loader: Any) -> Any:
        for lst in patch.listeners:
            lst.on_dataloader_iter(loader)
        return original(loader)

    return [(DataLoader, "__iter__", __iter__)]


backward_interceptor = SharedPatch(_install_backward)
dataloader_interceptor = SharedPatch(_install_dataloader)
scaler_interceptor = SharedPatch(_install_scaler)
