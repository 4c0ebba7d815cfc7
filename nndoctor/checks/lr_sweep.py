"""`lr-sweep`: LR x0.1 / x10 trials and an LR range test on copies, judged (see
``nndoctor.checks.experiments`` for how experiment checks read their records)."""

from __future__ import annotations

import math
from typing import Any, Iterable

from .._probe_records import LrRangeTest, LrSweepRun
from .._report import Finding, Severity
from ._base import CHECKLIST, Check, Skip, Threshold
from ._experiment_common import FASTAI_LR_FIND, KARPATHY, SMITH_2017, _curve, _data, _finite, _fmt, _inconclusive_if_not_finite


__all__ = ["LrSweep"]


class LrSweep(Check):
    """## What it measures
    From one snapshot of the model, three short trials with your optimizer at LR x0.1,
    x1 and x10 (same samples, same seed, `sweep_steps` steps each, 25 by default). For each
    trial, the progress is the share of the starting loss removed, judged on the mean of
    the last fifth of the curve; the noise is the step-to-step scatter of that tail. A
    different LR is *clearly better* when its progress exceeds x1's by `min_gain` and the
    gap is `min_noise_ratio` times the combined noise. Because a larger LR almost always
    looks faster in a short trial, "LR too low" additionally needs the x1 trial to be
    stalled (`stalled_progress`); "LR too high" needs x0.1 to win despite its 10x smaller
    steps. An LR range test (Smith 2017: exponential ramp 1e-7 -> 10, EMA-smoothed, stop
    at 4x the best loss) runs as well; its three estimators (steepest slope of the smoothed
    loss against log LR, fastai's valley, minimum/10) and their spread in decades are in
    `report.experiments["lr_range"]`, and it gives a verdict of its own when your LR is
    `range_decades` below all agreeing estimators or above the LR where the loss diverged.

    ## Why it matters
    A learning rate 10x off is the most common reason a correct model trains slowly or
    not at all. The checklist's advice is to multiply it by 0.1 and by 10 and compare;
    no single LR-finder estimator is robust (fastai changed its default from steep to
    valley; Lightning and torch-lr-finder users report bad suggestions), so several are
    reported with their agreement.

    ## How to fix
    - LR too low: multiply it by 10 (or start from the range test's suggestion) and
      re-run the checkup.
    - LR too high: divide it by 10, add warm-up or gradient clipping.
    - Treat the range-test suggestion as a starting point: when the estimators disagree
      by more than a decade, prefer the x0.1/x1/x10 comparison on real training.

    ## Known false positives
    - A larger LR nearly always removes more of the loss in a 25-step trial. When your
      LR's trial falls steadily (at least `crawl_progress` of the loss, well above its
      noise), "x10 is faster" is reported as info: a bigram table trained with AdamW at
      1e-2 removes 9% of the loss in 25 steps and x10 60%, yet its script reaches its
      target in its own step budget. The warning needs a trial that crawls.
    - When the experiments' time budget (derived from the measured step time, so from
      the machine's load) cuts the sweep or the range test short, only a divergence keeps
      its verdict; a comparison of shortened trials is inconclusive (info).
    - The trials train on a single batch for a few tens of steps: schedules with
      warm-up, or optimizers that only pay off after many steps, can look worse at x1
      than they are.
    - Losses with a large irreducible part (label smoothing) show little progress at any
      LR; the check then stays silent rather than guessing.

    ## Example
    `SGD(model.parameters(), lr=1e-6)`: no trial moves the loss, and the range test's
    estimators agree on about 1e-2 to 1e-1, four decades higher: warning "LR too low".
    `SGD(lr=3.0)` on a small MLP diverges while x0.1 trains: error.

    ## References
    - The training checklist: "multiply the current LR by 0.1 or by 10 and compare".
    - Smith 2017, the LR range test; fastai `lr_find` (stop at 4x best, valley, minimum/10);
      PyTorch Lightning and torch-lr-finder (steepest slope).
    - Karpathy: Adam at 3e-4 is a safe baseline.
    """

    id = "lr-sweep"
    title = "Another learning rate trains clearly better"
    family = "experiments"
    severity = Severity.ERROR
    kind = "experiment"
    needs = ("experiments",)
    thresholds = (
        Threshold(
            "min_gain",
            0.1,
            "another LR must remove at least this share of the starting loss more than x1 "
            "in the same trial length",
            "fraction of the initial loss",
        ),
        Threshold(
            "min_noise_ratio",
            3.0,
            "the gap between two trials must be this many times their combined step-to-step "
            "noise (a 3-sigma margin)",
            "x noise",
        ),
        Threshold(
            "stalled_progress",
            0.1,
            "'LR too low' needs the x1 trial to remove less than this share of the starting "
            "loss (short trials always favour a larger LR, so only a stalled x1 is evidence)",
            "fraction of the initial loss",
        ),
        Threshold(
            "crawl_progress",
            0.03,
            "'LR too low' is a warning only when the x1 trial crawls: it removes less than this "
            "share of the starting loss, or its fall is within `min_noise_ratio` times its noise. "
            "An x1 trial that falls steadily by more is learning; x10 being faster in a short "
            "trial is then a hint (info)",
            "fraction of the initial loss",
        ),
        Threshold(
            "range_decades",
            2.0,
            "the range test flags an LR at least this many decades (100x) below every "
            "estimator, when they agree",
            "decades",
        ),
        Threshold(
            "max_spread_decades",
            1.5,
            "the range-test estimators agree when their LRs span at most this many decades",
            "decades",
        ),
    )
    citations = (CHECKLIST, SMITH_2017, FASTAI_LR_FIND, KARPATHY)

    @staticmethod
    def trial_stats(losses: list[float]) -> tuple[float, float, float]:
        """(progress, tail mean, tail noise) of one trial; progress is -inf when diverged."""
        if not losses or not math.isfinite(losses[0]):
            return -math.inf, math.nan, math.nan
        start = losses[0]
        tail = losses[-max(3, len(losses) // 5):]
        if not _finite(tail):
            return -math.inf, math.inf, math.nan
        mean = sum(tail) / len(tail)
        diffs = [b - a for a, b in zip(tail, tail[1:])]
        if len(diffs) > 1:
            m = sum(diffs) / len(diffs)
            noise = math.sqrt(sum((d - m) ** 2 for d in diffs) / (len(diffs) - 1) / 2.0)
        else:
            noise = 0.0
        progress = (start - mean) / abs(start) if start else 0.0
        return progress, mean, noise

    @staticmethod
    def _progress_words(stat: tuple[float, float, float], start: float) -> str:
        """What a trial did to the loss, in words that stay true when it did not fall:
        "the loss falls by 42%" / "the loss stays finite (2.3 -> 2.9)"."""
        progress, mean, _ = stat
        if math.isfinite(progress) and progress > 0:
            return f"it falls by {progress:.0%} ({_fmt(start)} -> {_fmt(mean)})"
        if math.isfinite(mean):
            return f"it stays finite ({_fmt(start)} -> {_fmt(mean)})"
        return "it diverges too"

    def evaluate(self, obs: Any) -> Iterable[Finding]:
        sweep = _data(obs, "lr_sweep", "lr-sweep", LrSweepRun)
        experiments = getattr(obs, "experiments", {}) or {}
        rng: Any = experiments.get("lr_range") or {}
        rng = {} if rng.get("skipped") else LrRangeTest.coerce(rng) if rng else {}
        trials = sweep.trials
        if "1" not in trials:
            raise Skip("the LR sweep has no x1 trial")
        _inconclusive_if_not_finite((trials["1"].losses or [math.nan])[0], "LR sweep")
        stats = {k: self.trial_stats(v.get("losses") or []) for k, v in trials.items()}
        start = (trials["1"].get("losses") or [math.nan])[0]
        base_lr = sweep.get("base_lr")
        p1, mean1, noise1 = stats["1"]
        evidence: dict[str, Any] = {
            "base_lr": base_lr,
            "optimizer": sweep.get("optimizer"),
            "steps": sweep.get("steps"),
            "progress": {k: s[0] for k, s in stats.items()},
            "tail_loss": {k: s[1] for k, s in stats.items()},
            "noise": {k: s[2] for k, s in stats.items()},
            "curves": {k: _curve(v.get("losses") or []) for k, v in trials.items()},
        }
        if rng.get("suggestions"):
            evidence["range_suggestions"] = rng["suggestions"]
            evidence["range_spread_decades"] = rng.get("spread_decades")
        suggestion = ""
        if rng.get("suggested_lr"):
            suggestion = (
                f" The LR range test suggests {_fmt(rng['suggested_lr'])} "
                f"(estimators {', '.join(f'{k} {_fmt(v)}' for k, v in rng['suggestions'].items())}; "
                f"spread {rng.get('spread_decades', 0):.1f} decades)."
            )

        def margin(other: str) -> tuple[float, float]:
            po, meano, noiseo = stats[other]
            gain = po - p1
            if not math.isfinite(gain):
                return gain, math.inf
            sigma = math.sqrt((noise1 or 0.0) ** 2 + (noiseo or 0.0) ** 2) / abs(start)
            return gain, (gain / sigma if sigma > 0 else math.inf)

        # NaN/Inf, or a loss that ends 50% above its start: the x1 trial blew up
        diverged = not math.isfinite(p1) or p1 < -0.5
        # A sweep the time budget cut short (the budget follows the measured step time, so
        # the machine's load) shows less progress at every LR: a comparison of its trials
        # could change with the load, so only a divergence (which more steps would not
        # undo) keeps its verdict.
        cut_from = sweep.get("shortened_from")
        if cut_from:
            evidence["shortened_from"] = cut_from
        if "0.1" in stats:
            gain, z = margin("0.1")
            if stats["0.1"][0] > -math.inf and not diverged and cut_from \
                    and gain >= self.min_gain and z >= self.min_noise_ratio:
                yield self._inconclusive_cut(sweep, cut_from, "x0.1", evidence)
                return
            if stats["0.1"][0] > -math.inf and (diverged or (gain >= self.min_gain and z >= self.min_noise_ratio)):
                evidence.update(better="x0.1", gain=gain, noise_ratio=z)
                lr_low = trials["0.1"].get("lr")
                yield self.finding(
                    (
                        f"At your learning rate ({_fmt(base_lr)}) the loss diverges "
                        f"({_fmt(start)} -> {_fmt(mean1)} in {sweep.get('steps')} steps), while "
                        f"at LR x0.1 ({_fmt(lr_low)}) "
                        + self._progress_words(stats["0.1"], start)
                        + "."
                        if diverged
                        else f"LR x0.1 ({_fmt(lr_low)}) trains clearly better than your LR "
                        f"({_fmt(base_lr)}): "
                        + (f"it removes {stats['0.1'][0]:.0%} of the starting loss"
                           if stats["0.1"][0] >= 0 else f"it raises the loss by only {-stats['0.1'][0]:.0%}")
                        + f" in {sweep.get('steps')} steps, "
                        + (f"yours {p1:.0%}" if p1 >= 0 else f"while yours raises it by {-p1:.0%}")
                        + f" (gap "
                        f"{_fmt(z)}x the trial noise), although its steps are 10x smaller. "
                        "Your LR is too high."
                    )
                    + suggestion,
                    severity=Severity.ERROR if diverged else Severity.WARNING,
                    fix="Divide the learning rate by 10 (or use the range test's suggestion); "
                    "add warm-up or gradient clipping if a high LR is intended.",
                    **evidence,
                )
                return
        # Never "raise the learning rate" on a run that diverged (x1 blew up even though
        # x0.1 did too, or your LR is at or above the range test's blow-up point).
        diverged_at = rng.get("diverged_at") if rng else None
        blew_up = diverged or bool(diverged_at and base_lr and base_lr >= diverged_at)
        if "10" in stats and p1 < self.stalled_progress and not blew_up:
            gain, z = margin("10")
            if gain >= self.min_gain and z >= self.min_noise_ratio:
                evidence.update(better="x10", gain=gain, noise_ratio=z)
                if cut_from:
                    yield self._inconclusive_cut(sweep, cut_from, "x10", evidence)
                    return
                # x1 falling clearly (a share above `crawl_progress`, well above its own
                # noise) is learning: a bigram table under AdamW at 1e-2 removes 9% in 25
                # steps, x10 60%. Short trials always favour the larger LR, so that is a hint.
                drop1 = p1 * abs(start)
                if p1 >= self.crawl_progress and drop1 >= self.min_noise_ratio * (noise1 or 0.0):
                    yield self.finding(
                        f"LR x10 ({_fmt(trials['10'].get('lr'))}) removes {stats['10'][0]:.0%} of the "
                        f"starting loss in {sweep.get('steps')} steps, your learning rate ({_fmt(base_lr)}) "
                        f"{p1:.0%}, falling steadily: a higher LR may train faster. A short trial always "
                        "favours the larger LR, and yours is learning, so this is a hint, not a fault."
                        + suggestion,
                        severity=Severity.INFO, kind="x1_learning",
                        fix="If training is slow overall, try the learning rate x3 to x10 in real training "
                        "and keep it if the loss stays stable.",
                        **evidence,
                    )
                    return
                yield self.finding(
                    f"Your learning rate ({_fmt(base_lr)}) barely moves the loss ({p1:.0%} of "
                    f"it removed in {sweep.get('steps')} steps), while LR x10 "
                    f"({_fmt(trials['10'].get('lr'))}) removes {stats['10'][0]:.0%} (gap "
                    f"{_fmt(z)}x the trial noise). Your LR is too low." + suggestion,
                    severity=Severity.WARNING,
                    fix="Multiply the learning rate by 10 (or start from the range test's "
                    "suggestion) and re-run the checkup.",
                    **evidence,
                )
                return
        sugg = rng.get("suggestions") or {}
        values = [v for v in sugg.values() if v and math.isfinite(v) and v > 0]
        if rng and rng.get("shortened_from") and not blew_up:
            # A range test cut short has a coarser LR grid: estimators and blow-up point move
            # with the machine's load; no verdict from it.
            return
        if base_lr and values and len(values) == len(sugg):
            spread = math.log10(max(values) / min(values))
            below = math.log10(min(values) / base_lr)
            if spread <= self.max_spread_decades and below >= self.range_decades and not blew_up:
                evidence.update(better="range-test", decades_below=below)
                yield self.finding(
                    f"Your learning rate ({_fmt(base_lr)}) is {below:.1f} decades below every "
                    "estimator of the LR range test, which agree within "
                    f"{spread:.1f} decades." + suggestion + " Your LR is far too low.",
                    severity=Severity.WARNING,
                    fix="Raise the learning rate towards the range test's suggestion (start "
                    "at a decade below it) and compare x0.1 / x1 / x10 in real training.",
                    **evidence,
                )
                return
            diverged_at = rng.get("diverged_at")
            if diverged_at and base_lr >= diverged_at:
                evidence.update(better="range-test", diverged_at=diverged_at)
                yield self.finding(
                    f"Your learning rate ({_fmt(base_lr)}) is above the LR at which the range "
                    f"test's loss blew up ({_fmt(diverged_at)})." + suggestion
                    + " Your LR is too high.",
                    severity=Severity.WARNING,
                    fix="Lower the learning rate below the divergence point, towards the range "
                    "test's suggestion.",
                    **evidence,
                )

    def _inconclusive_cut(self, sweep: Any, cut_from: int, better: str, evidence: dict[str, Any]) -> Finding:
        steps = sweep.get("steps")
        return self.finding(
            f"Inconclusive: LR {better} looked better, but the experiments' time budget cut the sweep to "
            f"{steps} steps (of {cut_from}); shorter trials favour the larger LR, so the comparison "
            "would change with the machine's load.",
            severity=Severity.INFO, kind="shortened", **{**evidence, "better": better},
            fix="Re-run with more time for the experiments (nndoctor check --timeout) for a verdict.",
        )


# --------------------------------------------------------------------------------------
