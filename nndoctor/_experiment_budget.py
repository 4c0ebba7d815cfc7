"""The experiments' time budget: how long the checkup may take, derived from the cost of
one training step of the model when nobody set it, and how much work each probe gets
of it.

The probes run in the order of how much their verdict changes the diagnosis (the LR
sweep, the overfit, ...). Before a probe whose length is a knob (the LR sweep's steps,
the range test's iterations, the random-input training steps) starts, its step count is
cut to what the budget still affords, after keeping for every probe still to come the
time of its shortest useful run; never below that shortest run, which still answers the
question (a 10-step LR sweep separates x0.1 from x10; ruled by the check, not here).
A probe is never cut short once started (the hard stop at twice the budget aside).

The unit is one evaluation of a copy (forward + backward): a probe step is one, also
for a closure optimizer, whose copy does one LBFGS iteration per step
(``probes.context``). Its cost is measured: from the probes already run (their seconds
per evaluation, ``ProbeContext.train_steps``), else the cost of one evaluation in the
script itself (``step_seconds``: the runner's step time, divided by the closure
evaluations in an LBFGS step) as a first guess. That guess is high (the Doctor's
observers on every layer, ~2.5x, and the script's whole batch), so before it would cut a
probe the planner times a few steps of a copy (``measure``) and sizes on that.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

__all__ = ["derived_budget", "BudgetPlanner", "Sizing", "SIZINGS"]

# The derived budget (seconds) for one step of `step_seconds`: a fixed part for the
# copies, the replay check and the gradient check, and room for this many training
# steps of the model. The probes at full size take ~500 (overfit up to 2 x 100, LR sweep
# 3 x 25, range test 100, random inputs 3 x 30; the interventions get what is left);
# their shortest useful runs ~135 (overfit ~60 when the model fits, sweep 3 x 10, range
# test 30, random inputs 3 x 10): a slow model gets those, not a check that takes
# ten times as long as its script (a 44M-parameter Transformer on one CPU thread: ~1 s
# a step, ~3.5 minutes for the experiments).
_BASE_S = 60.0
_STEPS_AFFORDED = 150
_MIN_BUDGET_S = 120.0   # the former fixed --timeout: small scripts keep all of it
# A model whose step takes > 1.6 s gets shortened probes, not a check that runs for a
# quarter of an hour (pytorch/examples' LBFGS time_sequence_prediction, ~10 s a step on a
# loaded CPU, took > 15 minutes with a 900 s ceiling); --timeout buys more.
_MAX_BUDGET_S = 300.0


def derived_budget(step_seconds: float | None) -> float:
    """Seconds for the experiments when the user gave no ``--timeout``: enough for the
    probes at a useful size on a model whose training step takes ``step_seconds``;
    120 s when that is unknown or small, at most 300 s (``--timeout`` sets any other)."""
    if step_seconds is None or not math.isfinite(step_seconds) or step_seconds <= 0:
        return _MIN_BUDGET_S
    return float(round(min(_MAX_BUDGET_S, max(_MIN_BUDGET_S, _BASE_S + _STEPS_AFFORDED * step_seconds))))


@dataclasses.dataclass(frozen=True)
class Sizing:
    """A probe whose length is the option ``knob``: ``per_step`` training steps of a copy
    per unit of the knob (the LR sweep trains 3 copies), never fewer than ``minimum``."""

    knob: str
    per_step: float
    minimum: int
    # Whether the probes before it keep room for its shortest run. The pairing test does
    # not get any: it often has too few distinct samples to run at all, and its verdict
    # only adds to random-input-loss's, so it takes what is left when its turn comes.
    reserved: bool = True


SIZINGS: dict[str, Sizing] = {
    "lr_sweep": Sizing("sweep_steps", 3.0, 10),
    "lr_range": Sizing("range_iters", 1.0, 30),
    "random_input": Sizing("random_input_steps", 3.5, 10),  # 3 copies + held-out evaluations
    # Mini-batches of up to 64 samples (the sweep's: 16) and a held-out evaluation every
    # 20 steps; 40 steps give three points of the permutation test. The probe stops
    # sooner once memorised or once the pairing is evident.
    "pairing": Sizing("pairing_steps", 2.0, 40, reserved=False),
}
# Training steps of a copy a probe without a knob is expected to take (the room kept for
# it): the overfit of a model that fits stops within a few dozen steps. One that does not
# fit takes up to 200 (100 with your optimizer, 100 with Adam) and may overrun the budget
# (to twice the budget at most), so the probes after it are skipped, but it still runs:
# the sweep before it was not made to wait for the worst case. The first guess of a
# step's cost (the script's own step, with the Doctor's observers, a compile's
# recompiles) is often several times a copy's, so that worst case would cut the sweep
# short on models that have the time.
_FIXED_STEPS = {"init": 0.0, "overfit": 60.0, "gradcheck": 10.0}


class BudgetPlanner:
    """Serves the probes, in order, from ``budget`` seconds that started at ``started``.

    ``unit_seconds()`` is the measured cost of one training step of a copy (None while
    unknown); ``size(key, opts, still_to_run)`` returns the options for that probe with
    its knob cut to what is left; ``record(steps, seconds)`` adds a finished probe's
    measured work."""

    def __init__(self, budget: float | None, started: float, step_seconds: float | None) -> None:
        self.budget = budget
        self.started = started
        self.step_seconds = step_seconds if step_seconds and math.isfinite(step_seconds) else None
        self.steps_done = 0
        self.seconds_training = 0.0
        self.resized: dict[str, tuple[int, int]] = {}  # key -> (nominal, given)

    def record(self, steps: int, seconds: float) -> None:
        if steps > 0 and seconds > 0:
            self.steps_done += steps
            self.seconds_training += seconds

    def unit_seconds(self) -> float | None:
        if self.steps_done >= 3:
            return self.seconds_training / self.steps_done
        return self.step_seconds

    def left(self, now: float) -> float:
        return math.inf if self.budget is None else self.budget - (now - self.started)

    def measured(self) -> bool:
        return self.steps_done >= 3

    def size(self, key: str, opts: dict[str, Any], still_to_run: list[str], now: float,
             measure: "Callable[[], tuple[int, float]] | None" = None) -> "dict[str, Any] | None":
        """``opts`` with ``key``'s knob cut to fit what is left of the budget after the
        shortest runs of the probes in ``still_to_run`` (those after ``key``).

        ``measure``: times a few training steps of a copy, ``(steps, seconds)``; called
        when the first guess (the script's own step, with the Doctor's observers on every
        layer, ~2.5x a copy's, and on the script's whole batch) would cut this probe:
        a probe is cut on a measured cost only. None: a probe no room was kept for
        (``Sizing.reserved`` False) cannot afford its shortest run: skip it, so that it
        does not take the time of the probes after it."""
        sizing = SIZINGS.get(key)
        if sizing is None or self.budget is None:
            return opts
        unit = self.unit_seconds()
        if (unit is None or unit <= 0) and measure is not None:
            # No guess at all (the script's first step outlasted --timeout): time a copy.
            steps, seconds = measure()
            self.record(steps, seconds)
            now += seconds
            unit = self.unit_seconds() if self.measured() else None
        if unit is None or unit <= 0:
            return opts
        nominal = int(opts[sizing.knob])
        reserve = sum(self._shortest(k, opts) for k in still_to_run) * unit
        affordable = (self.left(now) - reserve) / (sizing.per_step * unit)
        if affordable < nominal and measure is not None and not self.measured():
            steps, seconds = measure()
            self.record(steps, seconds)
            if self.measured():
                return self.size(key, opts, still_to_run, now + seconds)
        if affordable >= nominal:
            return opts
        if not sizing.reserved and affordable < min(sizing.minimum, nominal):
            return None  # no room was kept for it, and its shortest run no longer fits
        given = max(min(sizing.minimum, nominal), int(affordable) if math.isfinite(affordable) else nominal)
        self.resized[key] = (nominal, given)
        return {**opts, sizing.knob: given}

    @staticmethod
    def _shortest(key: str, opts: dict[str, Any]) -> float:
        sizing = SIZINGS.get(key)
        if sizing is None:
            return _FIXED_STEPS.get(key, 0.0)
        if not sizing.reserved:
            return 0.0
        return sizing.per_step * min(sizing.minimum, int(opts[sizing.knob]))

    def notes(self) -> list[str]:
        """One line per probe that was shortened, for the report's notes."""
        names = {"lr_sweep": "the LR sweep", "lr_range": "the LR range test", "random_input": "the random-input test",
                 "pairing": "the label-pairing test"}
        unit = self.unit_seconds()
        cost = f" (one training step of a copy takes {unit:.2g} s)" if unit else ""
        return [f"{names.get(k, k)} ran {given} steps instead of {nominal} to fit the experiments' time budget "
                f"({self.budget:g} s){cost}" for k, (nominal, given) in self.resized.items()]
