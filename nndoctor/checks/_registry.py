"""The one table that hands out check ids (like ruff's codes.rs).

Adding a check: write the class in its family module, then add one line here. Tests
assert the table's ids are unique, that it equals the set of ``Check`` subclasses, and
that every class documents its sections, thresholds and sources. Nothing registers
itself by import side effects.
"""

from __future__ import annotations

from ._base import Check
from .activations import ActivationStd, DeadRelu, SaturatedActivation
from .data import InputNormalization, LabelDistribution, RepeatedBatch
from .distributed import DdpParameterDivergence, DdpSameBatchEveryRank, DdpSetEpochMissing, DdpUnusedParameters
from .experiments import RandomInputLoss
from .overfit import OverfitTinyBatch
from .gradient_check import GradientCheck
from .lr_sweep import LrSweep
from .gradients import ExplodingGradient, GradNotZeroed, NanTrace, VanishingGradient
from .loss import ChanceLevelLoss, LossInputFormat, LossNotDecreasing
from .frozen import FrozenLayer, UnusedParameter
from .parameters import TrainEvalMode, UpdateRatio, WeightInit
from .predictions import PredictionCollapse

# id -> class. Order is the catalogue's order (by family, then id).
REGISTRY: dict[str, type[Check]] = {
    cls.id: cls
    for cls in (
        # numerics and gradients
        NanTrace,
        ExplodingGradient,
        VanishingGradient,
        GradNotZeroed,
        # activations
        ActivationStd,
        DeadRelu,
        SaturatedActivation,
        # parameters and modes
        FrozenLayer,
        UnusedParameter,
        UpdateRatio,
        WeightInit,
        TrainEvalMode,
        # data
        InputNormalization,
        LabelDistribution,
        RepeatedBatch,
        # loss
        ChanceLevelLoss,
        LossInputFormat,
        LossNotDecreasing,
        PredictionCollapse,
        # experiments (nndoctor/checks/overfit.py, experiments.py, lr_sweep.py, gradient_check.py) are added below this line
        OverfitTinyBatch,
        RandomInputLoss,
        LrSweep,
        GradientCheck,
        # distributed (DDP): judged on facts gathered from every rank
        DdpParameterDivergence,
        DdpSameBatchEveryRank,
        DdpUnusedParameters,
        DdpSetEpochMissing,
    )
}


def get(check_id: str) -> type[Check]:
    try:
        return REGISTRY[check_id]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(check_id, list(REGISTRY), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise KeyError(
            f"unknown check id {check_id!r}.{hint} `nndoctor checks` lists them all."
        ) from None


def passive_ids() -> list[str]:
    return [cid for cid, cls in REGISTRY.items() if cls.kind == "passive"]


def experiment_ids() -> list[str]:
    return [cid for cid, cls in REGISTRY.items() if cls.kind == "experiment"]
