"""Observers: the torch side. Small units (activations, gradients, updates, inputs and
labels, the loss value, the loss graph, the unregistered-module probe) behind one owner
of hooks and step boundaries (``Recorder``). Hooks reduce tensors to a few numbers on
the device; the numbers cross to the host once per sampled step."""

from ._base import Observer, Schedule
from ._describe import categorize
from ._recorder import UNITS, Recorder
from .loss_graph import LOSS_KIND_BY_NODE, LOSS_KINDS, analyse_loss_graph

__all__ = ["Recorder", "Schedule", "Observer", "UNITS", "categorize", "analyse_loss_graph", "LOSS_KINDS",
           "LOSS_KIND_BY_NODE"]
