"""Label/input pairing judged from a permutation test on held-out samples (no torch here).

The probe (``nndoctor.probes.pairing``) trains a copy of the model on half of the
samples the script trained on (the checkup batch plus the batches the watch saw), then
evaluates the other half twice over: with the labels as they are, and with the labels
permuted among the held-out samples (``n_permutations`` controls, the same permutations
at every evaluation point). If the labels depend on their inputs at all, what the copy
learned from its training half predicts the held-out labels better than it predicts
permuted ones; if inputs and labels were shuffled apart, the real pairing is just one
more permutation, and its held-out loss is exchangeable with the controls'. The p-value
is that of a max-statistic permutation test over the evaluation points, so looking at
several points costs no extra false alarms.

The verdict (``pairing_verdict``) is one of

* ``"paired"``: the real pairing beats the controls (p <= ``max_p_paired``);
* ``"unpaired"``: the copy memorised its training half (its loss fell to at most
  ``max_fit_fraction`` of its start) with at least ``min_samples`` samples on each side
  (and held-out labels a permutation changes on ``min_label_changes`` of them on average:
  near-constant labels leave the control nothing to differ by), and still the real pairing is no better than the controls (p >= ``min_p_unpaired``):
  labels that cannot be predicted from their inputs;
* ``"inconclusive"``: anything else (the copy did not memorise its half, too few samples,
  a weak effect) — an info note at most.

``RandomInputLoss`` (``nndoctor.checks.experiments``) reads the ``"pairing"`` record.
"""

from __future__ import annotations

import math
from typing import Any

from .._probe_records import PairingRun

__all__ = ["PairingRun", "pairing_verdict"]


def pairing_verdict(run: PairingRun | dict[str, Any], *, max_p_paired: float, min_p_unpaired: float,
                    max_fit_fraction: float, min_samples: int, min_label_changes: float = 0) -> str:
    """``"paired"``, ``"unpaired"`` or ``"inconclusive"`` (see the module docstring)."""
    run = PairingRun.coerce(run)
    p, gain, fit = run.p_value, run.gain, run.fit_fraction
    if not (isinstance(p, (int, float)) and math.isfinite(p)) or not math.isfinite(gain):
        return "inconclusive"
    if p <= max_p_paired and gain > 0:
        return "paired"
    changes = run.n_holdout * run.changed_fraction if math.isfinite(run.changed_fraction) else 0.0
    enough = min(run.n_train, run.n_holdout) >= min_samples and changes >= min_label_changes
    memorised = math.isfinite(fit) and fit <= max_fit_fraction
    if enough and memorised and p >= min_p_unpaired:
        return "unpaired"
    return "inconclusive"
