"""What the experiment checks share: citations, reading a probe's record, number formatting.

Pure Python (no torch), like every check.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from .._probe_records import Record
from ._base import Citation, Skip


KARPATHY = Citation(
    "A. Karpathy, 'A Recipe for Training Neural Networks' (2019): overfit one batch, "
    "input-independent baseline, verify loss at init",
    "http://karpathy.github.io/2019/04/25/recipe/",
)
CS231N = Citation(
    "CS231n, 'Neural Networks Part 3: Learning and Evaluation' (gradient checks, "
    "overfit a tiny subset of data)",
    "https://cs231n.github.io/neural-networks-3/",
)
SMITH_2017 = Citation(
    "L. N. Smith, 'Cyclical Learning Rates for Training Neural Networks', WACV 2017 "
    "(the LR range test)",
    "https://arxiv.org/abs/1506.01186",
)
FASTAI_LR_FIND = Citation(
    "fastai `lr_find` (valley / steep / minimum suggestions, stop at 4x the best loss)",
    "https://docs.fast.ai/callback.schedule.html#lr_find",
)
DEEPCHECKER = Citation(
    "H. Ben Braiek, F. Khomh, 'Testing Feature Selection...'/TheDeepChecker: overfit a "
    "single batch, zeroed-input data-dependency test (nndoctor's thresholds for them are "
    "the ones documented on this page)"
)
ZHANG_2017 = Citation(
    "C. Zhang et al., 'Understanding deep learning requires rethinking generalization', "
    "ICLR 2017 (networks memorise random labels, so only held-out samples tell real "
    "labels from decoupled ones)",
    "https://arxiv.org/abs/1611.03530",
)
GRADCHECK_DOCS = Citation(
    "PyTorch `torch.autograd.gradcheck` (float64; eps 1e-6, atol 1e-5, rtol 1e-3)",
    "https://pytorch.org/docs/stable/generated/torch.autograd.gradcheck.html",
)


# The random-input probe's baselines, in words.
_BASELINE_WORDS = {"zeros": "all-zero inputs", "noise": "noise inputs"}


def _data(obs: Any, key: str, what: str, kind: type[Record]) -> Any:
    """The ``kind`` record under ``key`` (a plain dict of its shape is converted), or Skip."""
    experiments = getattr(obs, "experiments", None) or {}
    data = experiments.get(key)
    if data is None:
        raise Skip(f"the {what} experiment did not run (only `Doctor.checkup` runs it)")
    if data.get("skipped"):
        raise Skip(str(data["skipped"]))
    return kind.coerce(data)


def _inconclusive_if_not_finite(start: Any, what: str) -> None:
    """No verdict from a run whose loss was not finite from the start: it measured nothing."""
    if not (isinstance(start, (int, float)) and math.isfinite(start)):
        raise Skip(
            f"inconclusive: the loss was {start} from the first step of the {what} experiment, so it "
            "measured nothing (see `nan-trace` and `chance-level-loss`)"
        )


def _finite(values: Iterable[float]) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def _fmt(x: float | None) -> str:
    if x is None:
        return "n/a"
    if not math.isfinite(x):
        return str(x)
    return f"{x:.3g}"


def _curve(values: list[float], n: int = 40) -> list[float]:
    """At most ``n`` points of a curve (evenly spaced, last point kept), rounded."""
    if len(values) > n:
        idx = sorted({round(i * (len(values) - 1) / (n - 1)) for i in range(n)})
        values = [values[i] for i in idx]
    return [round(v, 5) if math.isfinite(v) else v for v in values]


# --------------------------------------------------------------------------------------
