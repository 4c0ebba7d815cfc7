"""One table of loss kinds: the name nndoctor gives a loss, from its module or function.

Kinds: ``cross_entropy``, ``nll``, ``bce_logits``, ``bce``, ``mse``, ``l1``,
``smooth_l1``, ``huber``, ``kl_div``, or ``other``.

``smooth_l1`` and ``huber`` are distinct kinds on purpose: ``nn.SmoothL1Loss(beta)`` and
``nn.HuberLoss(delta)`` agree only at ``beta = delta = 1`` (Huber = delta * SmoothL1 with
beta = delta), and autograd names them differently (``SmoothL1LossBackward0``,
``HuberLossBackward0``), so the kind read from the graph and the kind read from the
module agree. ``kl_div`` covers ``nn.KLDivLoss`` and ``F.kl_div`` (inputs are
log-probabilities).
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import nn

__all__ = [
    "loss_kind",
    "loss_function",
    "GRAPH_NODE_KINDS",
    "CLASS_KINDS",
    "BINARY_KINDS",
    "REGRESSION_KINDS",
    "KINDS",
]

_MODULES: tuple[tuple[type, str], ...] = (
    (nn.CrossEntropyLoss, "cross_entropy"),
    (nn.NLLLoss, "nll"),
    (nn.BCEWithLogitsLoss, "bce_logits"),
    (nn.BCELoss, "bce"),
    (nn.MSELoss, "mse"),
    (nn.L1Loss, "l1"),
    (nn.SmoothL1Loss, "smooth_l1"),
    (nn.HuberLoss, "huber"),
    (nn.KLDivLoss, "kl_div"),
)
_FUNCTIONS: dict[Any, str] = {
    F.cross_entropy: "cross_entropy",
    F.nll_loss: "nll",
    F.binary_cross_entropy_with_logits: "bce_logits",
    F.binary_cross_entropy: "bce",
    F.mse_loss: "mse",
    F.l1_loss: "l1",
    F.smooth_l1_loss: "smooth_l1",
    F.huber_loss: "huber",
    F.kl_div: "kl_div",
}
# The autograd node that computes each loss (what an observer reading ``loss.grad_fn``
# sees). Cross-entropy shows up as an ``NllLossBackward0`` fed by a log-softmax, which
# the graph reader tells apart; the kinds here are the same as the modules'.
GRAPH_NODE_KINDS: dict[str, str] = {
    "NllLossBackward0": "nll",
    "NllLoss2DBackward0": "nll",
    "NllLoss2dBackward0": "nll",
    "BinaryCrossEntropyBackward0": "bce",
    "BinaryCrossEntropyWithLogitsBackward0": "bce_logits",
    "MseLossBackward0": "mse",
    "L1LossBackward0": "l1",
    "SmoothL1LossBackward0": "smooth_l1",
    "HuberLossBackward0": "huber",
    "KlDivBackward0": "kl_div",
}
KINDS = tuple(dict.fromkeys(kind for _, kind in _MODULES))
CLASS_KINDS = ("cross_entropy", "nll")  # integer class targets, logits over dim 1
BINARY_KINDS = ("bce", "bce_logits")
REGRESSION_KINDS = ("mse", "l1", "smooth_l1", "huber")


def loss_kind(loss_fn: Any) -> str:
    """The kind of ``loss_fn`` (an ``nn.Module`` loss or a ``torch.nn.functional``
    function), or ``"other"`` for anything else (a user's own callable)."""
    for cls, kind in _MODULES:
        if isinstance(loss_fn, cls):
            return kind
    try:
        return _FUNCTIONS.get(loss_fn, "other")
    except TypeError:  # an unhashable callable
        return "other"


def loss_function(kind: str | None) -> Any:
    """The ``torch.nn.functional`` function of a kind (the inverse of the table), or None."""
    for fn, name in _FUNCTIONS.items():
        if name == kind:
            return fn
    return None
