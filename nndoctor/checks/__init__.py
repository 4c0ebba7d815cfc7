"""The check catalogue: one class per check, one explicit registry table."""

from ._base import Check, Citation, Skip, Threshold
from ._registry import REGISTRY, experiment_ids, get, passive_ids

__all__ = ["Check", "Citation", "Skip", "Threshold", "REGISTRY", "get", "passive_ids", "experiment_ids"]
