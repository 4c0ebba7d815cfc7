"""The same random draws for every evaluation of a function (the gradient check's f(w+eps v)
and f(w-eps v), the isolation check's copy and original).

A ``forward`` may draw from any of three generators: torch's (dropout), Python's
``random`` (a depth chosen by ``random.randint``, as in dynamic-graph demos) and
numpy's. Re-seeding torch alone leaves the other two advancing between evaluations, so
two evaluations run different graphs and their difference says nothing about the
gradient. :class:`SameDraws` captures all three once and puts them back before each
evaluation. The caller runs inside :func:`nndoctor.probes.isolation.isolated`, which
restores the user's streams afterwards.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["SameDraws"]


class SameDraws:
    """Call it before each evaluation: torch is seeded with ``seed``, Python's ``random``
    and numpy's global generator are put back to the states they had when this object
    was made, so every evaluation sees the same draws."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)
        self._py: Any = random.getstate()
        self._np: Any = np.random.get_state()

    def __call__(self) -> None:
        torch.manual_seed(self.seed)
        random.setstate(self._py)
        np.random.set_state(self._np)
