"""The observers' old address, kept for code that imports from it.

The torch side lives in :mod:`nndoctor.observers` (one module per observer unit, one
owner of hooks and step boundaries); the derivations from plain records in
:mod:`nndoctor._derive`; the nested-tensor walker in :mod:`nndoctor._tree`.
"""

from __future__ import annotations

from ._derive import find_nonfinite
from .observers import Recorder, Schedule, analyse_loss_graph, categorize
from .observers._base import tensor_stats as _tensor_stats
from .observers._patches import backward_interceptor, scaler_interceptor

__all__ = ["Recorder", "Schedule", "categorize", "analyse_loss_graph", "find_nonfinite",
           "backward_interceptor", "scaler_interceptor"]
