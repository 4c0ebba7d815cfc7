"""Checks judged from experiments on copies of the model (``Doctor.checkup``).

The probes in ``nndoctor.probes`` run the experiments (torch, on copies, under a
forked RNG) and leave typed records (``nndoctor._probe_records``) in
``Observations.experiments``; they measure and never judge. The checks here alone turn
the records into verdicts (no torch import), so they are deterministic and testable
without a model; they also accept plain dicts of the records' shape.

Keys read: ``"overfit"``, ``"random_input"``, ``"lr_sweep"``, ``"lr_range"``,
``"gradcheck"``. A probe that could not run stores ``ProbeSkipped(reason)``
(``{"skipped": reason}``), which the check turns into ``Skip(reason)``. A probe whose loss
was not finite from its first step gives no verdict either: the check skips it as
inconclusive (``nan-trace`` and ``chance-level-loss`` see the non-finite loss).
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from .._probe_records import GradcheckRun, GradcheckUnit, LrRangeTest, LrSweepRun, OverfitCurve, OverfitRun, RandomInputRun, Record
from .._report import Finding, Severity
from ._base import CHECKLIST, Check, Citation, Skip, Threshold

__all__ = ["OverfitTinyBatch", "RandomInputLoss", "LrSweep", "GradientCheck"]

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
class OverfitTinyBatch(Check):
    """## What it measures
    Trains a copy of the model on a tiny fixed batch (the first `n_samples` samples of the
    batch given to `checkup`, 8 by default) for at most `max_steps` steps with your
    optimizer's type and hyper-parameters (dropout switched off), and records the loss
    (and, for classification, the accuracy on that batch) at every step. The batch is
    fitted when the loss falls to `loss_fraction` of its starting value (measured above
    the loss's floor on the batch: the targets' entropy for BCE with soft targets, the
    smoothed target's entropy with label smoothing, 0 otherwise) or, for classification,
    when every sample is classified correctly (`min_accuracy`). When your
    optimizer fails, the experiment is repeated with Adam(lr=1e-3) to tell a broken model
    from a badly set optimizer.

    ## Why it matters
    Any working model can memorise a handful of samples. If it cannot, no amount of data
    or training time will help: something between the input, the parameters and the loss
    is broken (a detached graph, labels that do not match the outputs, a loss fed the wrong
    kind of input, frozen layers), or the learning rate is far too low. It is the single
    most useful sanity check in every practitioner checklist.

    ## How to fix
    - If it fits with Adam(lr=1e-3) but not with your optimizer: raise the learning rate
      (see `lr-sweep`), or check momentum / weight decay / the optimizer's parameter list.
    - If the loss barely moves with either optimizer: look for a graph cut (`.detach()`,
      `.item()`, `.data`, `torch.no_grad()` in `forward`), frozen layers, outputs and
      targets that are paired wrongly, or a loss fed probabilities instead of logits.
    - If the loss falls but too slowly: the model may lack capacity; remove regularisation
      and normalisation first (checklist step 2), then grow the model.

    ## Known false positives
    - Models with heavy stochastic regularisation in `forward` (beyond `nn.Dropout`,
      which the experiment switches off) may not reach the target in the step budget.
    - Losses whose minimum is far from zero never fall to a small fraction of their
      start. The experiment knows the floor of BCE with soft targets (the targets'
      entropy), cross-entropy with label smoothing or soft targets, and KL (0), and judges
      the loss above it; for other such losses (entropy terms, variational bounds) raise
      `loss_fraction`.
    - Very deep models with a plain SGD at a small LR can need more than `max_steps`;
      the message then says that Adam fits it.

    ## Example
    A classifier whose labels are fed through `y.float().softmax(0)` into `MSELoss`, or
    whose `forward` returns `self.head(features.detach() * 0)`: the loss stays near its
    start for 100 steps, and the finding is an error.

    ## References
    - The training checklist: "start with a small sample of the data: overfit it first".
    - Karpathy, "overfit one batch" ("as little as two" examples, reach the lowest loss).
    - cs231n: overfit ~20 examples to zero cost with regularisation off.
    - TheDeepChecker: overfit a single batch of 16.
    - Lightning issue #1668: users want an assertion, not just `overfit_batches`.
    """

    id = "overfit-tiny-batch"
    title = "The model cannot overfit a tiny fixed batch"
    family = "experiments"
    severity = Severity.ERROR
    kind = "experiment"
    needs = ("experiments",)
    thresholds = (
        Threshold(
            "loss_fraction",
            0.1,
            "the batch counts as fitted once the loss falls to this fraction of its "
            "starting value (10%: for 10 classes, 2.30 -> 0.23, about 80% mean probability "
            "on the right class); memorising 8 samples gets there within tens of steps",
            "fraction of the initial loss",
        ),
        Threshold(
            "min_accuracy",
            1.0,
            "classification: the batch also counts as fitted once this share of its samples "
            "is classified correctly (100%, the assertion users ask for)",
            "fraction",
        ),
        Threshold(
            "max_steps",
            100,
            "optimizer steps allowed to fit the batch (Karpathy/cs231n/TheDeepChecker use "
            "tens to 1000; 100 keeps the whole checkup within seconds, and a healthy model "
            "memorises 8 samples in well under 100 Adam steps)",
            "steps",
        ),
    )
    citations = (CHECKLIST, KARPATHY, CS231N, DEEPCHECKER)

    def fitted_at(self, run: OverfitCurve | dict[str, Any], floor: float = 0.0) -> int | None:
        """The first step at which the run met this check's target (the loss above
        ``floor``, the loss's minimum on the batch, measured by the probe), or None."""
        curve = OverfitCurve.coerce(run)
        return curve.fitted_at(self.loss_fraction, self.min_accuracy, self.max_steps, floor)

    def evaluate(self, obs: Any) -> Iterable[Finding]:
        data = _data(obs, "overfit", "overfit-tiny-batch", OverfitRun)
        runs = data.runs
        if not runs:
            raise Skip("the overfit experiment recorded no run")
        user = runs[0]
        _inconclusive_if_not_finite((user.losses or [math.nan])[0], "overfit")
        floor = data.loss_floor if isinstance(data.loss_floor, (int, float)) and math.isfinite(data.loss_floor) else 0.0
        if self.fitted_at(user, floor) is not None:
            return
        n = data.get("n_samples")
        steps = len(user.get("losses") or []) - 1
        start = (user.get("losses") or [math.nan])[0]
        final = (user.get("losses") or [math.nan])[-1]
        best = min((v for v in user.get("losses") or [] if math.isfinite(v)), default=math.nan)
        acc = (user.get("accuracies") or [None])[-1]
        acc_text = f", accuracy {acc:.0%}" if acc is not None else ""
        evidence = {
            "n_samples": n,
            "steps": steps,
            "task": data.get("task"),
            "optimizer": user.get("optimizer"),
            "start_loss": start,
            "final_loss": final,
            "best_loss": best,
            "final_accuracy": acc,
            "loss_fraction_reached": (final / start) if start and math.isfinite(start) else None,
            "curve": _curve(user.get("losses") or []),
            "accuracy_curve": _curve(user["accuracies"]) if user.get("accuracies") else None,
            "regularisation_off": data.get("regularisation_off", []),
            "loss_floor": floor,
            "loss_floor_reason": data.loss_floor_reason,
        }
        head = (
            f"With {user.get('optimizer')}, the model did not fit {n} fixed samples in "
            f"{steps} steps: loss {_fmt(start)} -> {_fmt(final)}{acc_text}"
            f" (target: {self.loss_fraction:.0%} of the start"
            + (f" above the loss's floor {_fmt(floor)}, {data.loss_floor_reason}" if floor else "")
            + (f" or {self.min_accuracy:.0%} accuracy" if user.get("accuracies") is not None else "")
            + ")."
        )
        retry = runs[1] if len(runs) > 1 else None
        if retry is not None:
            evidence["retry_optimizer"] = retry.get("optimizer")
            evidence["retry_curve"] = _curve(retry.get("losses") or [])
            at = self.fitted_at(retry, floor)
            evidence["retry_fitted_at"] = at
            if at is not None:
                # The advice follows the evidence: a loss that blew up (non-finite, or ended
                # above its start) calls for a smaller learning rate, never a larger one.
                blew_up = not _finite(user.get("losses") or []) or (
                    math.isfinite(final) and math.isfinite(start) and final > start)
                evidence["diverged"] = blew_up
                yield self.finding(
                    head
                    + f" {retry.get('optimizer')} fits the same samples in {at} steps, so the "
                    "model, loss and labels can learn: your learning rate or optimizer "
                    "settings are the problem"
                    + (" (with yours the loss rose or blew up: the learning rate is too high)."
                       if blew_up else "."),
                    severity=Severity.WARNING,
                    fix=(
                        "Lower the learning rate (x0.1; see the `lr-sweep` finding and the LR range "
                        "test in the report), or add warm-up or gradient clipping; Adam(lr=1e-3) "
                        "is a safe baseline."
                        if blew_up
                        else "Raise the learning rate (see the `lr-sweep` finding and the LR range "
                        "test in the report), or check momentum, weight decay and that every "
                        "parameter is in the optimizer; Adam(lr=1e-3) is a safe baseline."
                    ),
                    **evidence,
                )
                return
            r_losses = retry.get("losses") or [math.nan]
            head += (
                f" {retry.get('optimizer')} did not fit them either "
                f"(loss {_fmt(r_losses[0])} -> {_fmt(r_losses[-1])})."
            )
        if not _finite(user.get("losses") or []):
            why = (
                " The loss became NaN/Inf: look for log(0), division by zero or a learning "
                "rate far too high (see `nan-trace`)."
            )
        elif math.isfinite(best) and math.isfinite(start) and best - floor <= 0.5 * (start - floor):
            why = (
                " The loss falls, but too slowly: the model may lack capacity, or "
                "regularisation/normalisation holds it back; a learning rate that is too "
                "low also looks like this."
            )
            if data.get("task") == "regression":
                # A regression (a reconstruction, soft targets) that halved its loss above
                # the floor is learning: slow, not broken. No accuracy can say "fitted"
                # for it, so a warning, not an error (healthy autoencoders land here).
                yield self.finding(head + why, severity=Severity.WARNING, **evidence)
                return
        else:
            why = (
                " The loss barely moves, which points to a bug rather than a tuning issue: "
                "outputs not connected to the parameters (a `.detach()`, `.item()` or "
                "`no_grad` in `forward`), frozen layers, targets that do not match the "
                "outputs, or a loss fed the wrong kind of input (probabilities vs logits)."
            )
        yield self.finding(head + why, **evidence)


# --------------------------------------------------------------------------------------
class RandomInputLoss(Check):
    """## What it measures
    Three measurements on copies of the model, with Adam(lr=1e-3):
    1. whether the outputs change at all when the real inputs are replaced by noise of the
       same shape, dtype, mean and std, or by zeros (`min_output_change`);
    2. training on the real inputs against training on all-zero inputs (Karpathy's
       input-independent baseline): after the same number of steps the real inputs must
       reach a clearly lower loss (`min_train_gain`). This is judged only when training on
       noise inputs does beat zeros by that margin, i.e. when the model can learn from an
       input at all (otherwise the fault is the model or optimizer: `overfit-tiny-batch`);
    3. when the batch holds at least 16 samples, half of it is held out: what the model
       learns from the real inputs must predict the held-out labels better than what it
       learns from noise or zeros (`min_holdout_gain`); judged once the model has fitted
       its training half (`min_fit_for_holdout`).

    ## Why it matters
    If the loss behaves the same with random data as with real data, the input does not
    reach the output in a useful form: a graph cut, data that is all zeros or constant,
    values turned into garbage inside the network, or labels that are not paired with
    their inputs (shuffled separately). A network memorises random labels just as it
    memorises real ones (Zhang et al. 2017), so only held-out samples can tell the two
    apart.

    ## How to fix
    - Outputs that ignore the input: look for `torch.zeros_like(x)`, `x * 0`, a
      `forward` that never uses its argument, or a layer that saturates to a constant.
    - Real inputs no better than zeros: print the batch just before the model (all zeros?
      constant? normalised twice?) and check the input path in `forward`.
    - No held-out gain: check that inputs and labels are shuffled together (one
      `Dataset`, one index), that the label column is the right one, and that the
      augmentations do not destroy the signal. With a small or hard batch, give
      `checkup` a bigger batch.

    ## Known false positives
    - Tasks where the label does not depend on the input by design (an unconditional
      generative model); there the check does not apply, ignore it.
    - The held-out comparison (3) needs the task to be learnable from half a batch in a
      few tens of steps: on hard data (natural images, 16 samples) it can warn on a
      healthy setup; it is therefore a warning only. Pass a larger batch to `checkup`.

    ## Example
    `labels = labels[torch.randperm(len(labels))]` after loading: the copy still memorises
    the training half, but on the held-out half the real inputs do no better than noise,
    and the check warns. `return self.fc(torch.zeros_like(x))` gives an error.

    ## References
    - The training checklist: "feed random data and watch the loss"; "check that the
      input data really reaches the network".
    - Karpathy: "input-independent baseline" (set the inputs to zero; it must do worse).
    - TheDeepChecker: zeroed-input vs real-input data-dependency test.
    - Zhang et al. 2017: random labels are memorised.
    """

    id = "random-input-loss"
    title = "The model learns as well from random or zero inputs as from the real ones"
    family = "experiments"
    severity = Severity.ERROR
    kind = "experiment"
    needs = ("experiments",)
    thresholds = (
        Threshold(
            "min_output_change",
            1e-6,
            "outputs whose largest change, relative to their largest magnitude, stays below "
            "this when the inputs become noise or zeros do not depend on the input (float32 "
            "round-off is ~1e-7; any real dependence is orders of magnitude larger)",
            "relative change",
        ),
        Threshold(
            "min_train_gain",
            0.1,
            "after the same steps, training on the real inputs must end at least this "
            "fraction of the starting loss below training on all-zero inputs (zeros can only "
            "learn the label prior; real inputs can be memorised); judged when noise inputs "
            "do beat zeros by this margin",
            "fraction of the initial loss",
        ),
        Threshold(
            "max_gain_for_error",
            0.01,
            "the training comparison is an error only when the real inputs gain at most this "
            "fraction of the starting loss over zeros (no advantage at all); a small positive "
            "gain is a warning: 30 steps on 16 samples of a healthy model measured gains from "
            "1.8% to 9.6% from one initialisation to the next",
            "fraction of the initial loss",
        ),
        Threshold(
            "max_share_of_noise_gain",
            0.5,
            "the real inputs' gain over zeros must also be below this share of the noise "
            "inputs' gain: real inputs that do help, only more slowly than a small model "
            "memorises noise in a short run (9.6% against 12.4% on a learnable toy task), "
            "carry information; inputs lost on the way give about 0",
            "share of the noise gain",
        ),
        Threshold(
            "min_holdout_gain",
            0.05,
            "the best held-out loss reached with real inputs must be at least this fraction "
            "of the initial held-out loss below the best reached with noise or zeros "
            "(5%: on learnable data the gain is 20-90%; with decoupled labels it is about 0 "
            "or negative)",
            "fraction of the initial held-out loss",
        ),
        Threshold(
            "min_holdout_samples",
            32,
            "held-out samples needed for the held-out comparison to be a warning; with fewer it "
            "is reported as info (a handful of samples decides little)",
            "samples",
        ),
        Threshold(
            "min_fit_for_holdout",
            0.3,
            "the held-out comparison is judged only when training on the real inputs removed "
            "at least this share of the training loss: a model that has not yet learned its "
            "training half (a too-low LR, a squashed loss) cannot show a held-out gain either, "
            "and other checks name that cause",
            "fraction of the initial training loss",
        ),
    )
    citations = (CHECKLIST, KARPATHY, DEEPCHECKER, ZHANG_2017)

    def evaluate(self, obs: Any) -> Iterable[Finding]:
        data = _data(obs, "random_input", "random-input-loss", RandomInputRun)
        change = data.get("output_change") or {}
        if change and all(v is not None and v < self.min_output_change for v in change.values()):
            yield self.finding(
                "The model's outputs do not depend on its input: replacing the inputs with "
                "noise or with zeros changes the outputs by at most "
                f"{max(change.values()):.2g} (relative). The loss can only learn the label "
                "prior.",
                output_change=change,
                fix="Find where `forward` drops the input: `zeros_like(x)`, `x * 0`, an unused "
                "argument, or a layer that saturates to a constant; check that the input "
                "tensor is the one passed to the model.",
            )
            return
        train = data.get("train_loss") or {}
        real, zeros, noise = train.get("real"), train.get("zeros"), train.get("noise")
        if real:
            _inconclusive_if_not_finite(real[0], "random-input")
        if real and zeros and noise:
            start = real[0]
            real_end, zeros_end, noise_end = real[-1], zeros[-1], noise[-1]
            trivially_fitted = math.isfinite(zeros_end) and zeros_end <= 0.05 * abs(start)
            if math.isfinite(start) and abs(start) > 0 and math.isfinite(zeros_end) and not trivially_fitted:
                gain = (zeros_end - real_end) / abs(start) if math.isfinite(real_end) else -math.inf
                noise_gain = (zeros_end - noise_end) / abs(start) if math.isfinite(noise_end) else -math.inf
                # Only conclusive when the model can learn from *some* input (noise): if it
                # learns from nothing in these steps, the fault is the model or the
                # optimizer, which `overfit-tiny-batch` reports.
                # And "no advantage" must mean it: real inputs that help, only more slowly
                # than memorising noise does in a short run, are not inputs that carry nothing.
                if gain < self.min_train_gain <= noise_gain and gain < self.max_share_of_noise_gain * noise_gain:
                    yield self.finding(
                        f"Training on the real inputs ends at loss {_fmt(real_end)}, training "
                        f"on all-zero inputs at {_fmt(zeros_end)} and on noise inputs at "
                        f"{_fmt(noise_end)} (from {_fmt(start)}, {data.get('steps')} steps): the "
                        f"model learns from noise but the real inputs give it "
                        f"{'no' if gain <= self.max_gain_for_error else 'little'} advantage over "
                        f"zeros (gain {gain:.1%} of the start, need {self.min_train_gain:.0%}). "
                        "The real inputs carry nothing the model can use: all zeros, constant, "
                        "or lost on the way to the output.",
                        # A small positive gain in a 30-step run on a tiny batch is within
                        # run-to-run noise of healthy models: a warning; none at all, an error.
                        severity=Severity.ERROR if gain <= self.max_gain_for_error else Severity.WARNING,
                        train_gain=gain,
                        noise_gain=noise_gain,
                        output_change=change,
                        train_curves={k: _curve(v) for k, v in train.items()},
                        optimizer=data.get("optimizer"),
                        fix="Print the batch right before the model (all zeros? constant? "
                        "wrong tensor?), and follow the input through `forward`: a layer "
                        "that saturates or is zeroed, a `.detach()`, normalisation by a huge "
                        "value.",
                    )
                    return
        hold = data.get("holdout_loss")
        real_train = (data.get("train_loss") or {}).get("real") or []
        learned = (
            len(real_train) > 1
            and _finite(real_train[:1] + real_train[-1:])
            and real_train[0] > 0
            and (real_train[0] - real_train[-1]) / real_train[0] >= self.min_fit_for_holdout
        )
        if hold and hold.get("real") and learned:
            real_h = hold["real"]
            start_h = real_h[0]
            baselines = {
                k: min((x for x in v if math.isfinite(x)), default=math.inf)
                for k, v in hold.items()
                if k != "real"
            }
            if baselines and math.isfinite(start_h) and abs(start_h) > 0:
                base_name = min(baselines, key=baselines.get)
                base_best = baselines[base_name]
                real_best = min((x for x in real_h if math.isfinite(x)), default=math.inf)
                gain = (base_best - real_best) / abs(start_h)
                # When the real-input model never improves on the held-out half at all,
                # the batch is too small or hard to generalise from: inconclusive (info),
                # not evidence that the labels are decoupled from the inputs.
                improved = real_best < start_h * (1 - 1e-3)
                enough = (data.get("n_holdout") or 0) >= self.min_holdout_samples
                if gain < self.min_holdout_gain:
                    yield self.finding(
                        f"On {data.get('n_holdout')} held-out samples, the model trained on "
                        f"the real inputs reaches loss {_fmt(real_best)} at best, the one "
                        f"trained on {_BASELINE_WORDS.get(base_name, base_name)} "
                        f"{_fmt(base_best)} (start {_fmt(start_h)}): the real inputs predict the "
                        f"labels no better than {_BASELINE_WORDS.get(base_name, base_name)} "
                        f"(gain {gain:.1%}, need {self.min_holdout_gain:.0%}). "
                        "The labels may not be paired with their inputs, or this batch is too "
                        "small or hard to generalise from."
                        + ("" if improved else " Inconclusive: the real-input model never improved on "
                           "the held-out samples."),
                        severity=Severity.WARNING if improved and enough else Severity.INFO,
                        holdout_gain=gain,
                        n_train=data.get("n_train"),
                        n_holdout=data.get("n_holdout"),
                        holdout_curves={k: _curve(v) for k, v in hold.items()},
                        optimizer=data.get("optimizer"),
                        fix="Check that inputs and labels are shuffled together (one Dataset, "
                        "one index), that the label column is the right one, and that "
                        "augmentation keeps the signal; run the checkup on a bigger batch "
                        "to rule out a batch too small to generalise from.",
                    )


# --------------------------------------------------------------------------------------
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
        if "0.1" in stats:
            gain, z = margin("0.1")
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


# --------------------------------------------------------------------------------------
class GradientCheck(Check):
    """## What it measures
    Analytic gradients against numerical ones, in float64:
    (a) every unit whose backward is not torch's own: modules whose class is defined
    outside `torch` and that compute something themselves (no children, or parameters of
    their own), and every custom `torch.autograd.Function` found in the loss's graph. Each
    is called on the inputs it really received (captured on a forward of 2 samples);
    `torch.autograd.gradcheck` checks it when its inputs and outputs are small
    (full Jacobians), a randomized check u^T J v otherwise;
    (b) the whole model plus loss: for a few directions v over all parameters (the
    gradient's own direction and random Gaussian ones), the central difference
    (L(w+eps v) - L(w-eps v)) / 2 eps against grad L . v. It costs 2 forwards per
    direction, whatever the parameter count; when it fails, the same test per parameter
    tensor names the module whose gradient is wrong. Randomness (dropout) is fixed by
    re-seeding before every evaluation.

    ## Why it matters
    A wrong backward does not crash: training just goes nowhere, or somewhere odd, and
    nothing else points at the culprit. Hand-written `backward` methods and custom losses
    are where these bugs live.

    ## How to fix
    - Fix the backward of the unit named in the finding: compare it with autograd's
      gradient of the same forward written with plain torch operations.
    - Check reductions (sum vs mean over the batch), transposes and the gradient with
      respect to every input that `forward` received.
    - If the forward has a non-differentiable step (rounding, argmax, straight-through
      estimators), the mismatch may be intended: ignore the finding for that unit.

    ## Known false positives
    - Deliberate gradient surrogates (straight-through estimators, gradient reversal,
      clipping inside backward) disagree with finite differences by design.
    - Kinks (ReLU at 0, max-pool ties) hit by the perturbation can cause a rare, small
      mismatch; the tolerance is set well above that level.
    - Models that only run in float32 are checked in float32 with eps 1e-3 and a 100x
      looser tolerance, which hides bugs smaller than about 10%.
    - Round-off: in float32 (or with float32 tensors hard-coded inside a float64 forward)
      the finite differences of a large model's loss can be noisier than the tolerance.
      Where a direction's error is large, the probe measures that noise (the spread of
      the estimates at eps/2, eps and 2 eps, at least the dtype's round-off of the loss
      over eps); an error within `noise_margin` times it is reported as an inconclusive
      info, never as an error. A non-finite loss is inconclusive too.

    ## Example
    A `torch.autograd.Function` implementing `x * w` whose backward returns
    `grad * w * 2` for `x`: gradcheck fails, and the finding names the Function and the
    module that called it.

    ## References
    - The training checklist: "a hand-written gradient: check it numerically".
    - cs231n gradient checks: relative error > 1e-2 is wrong, < 1e-4 fine with kinks,
      use double precision and centred differences.
    - PyTorch `torch.autograd.gradcheck`.
    - nndoctor perf notes §3: directional check vs gradcheck (7,000x cheaper at 100k).
    """

    id = "gradient-check"
    title = "Analytic gradients disagree with numerical ones"
    family = "experiments"
    severity = Severity.ERROR
    kind = "experiment"
    needs = ("experiments",)
    thresholds = (
        Threshold(
            "max_relative_error",
            1e-3,
            "directional checks fail above this relative error |fd - ad| / max(|fd|, |ad|) "
            "(float64 round-off is ~1e-8; cs231n calls > 1e-2 wrong and 1e-4..1e-2 "
            "uncomfortable; 1e-3 sits between kink noise and the smallest real bugs, "
            "which measured 2.8e-3 and up)",
            "relative error",
        ),
        Threshold(
            "noise_margin",
            3.0,
            "a direction fails only when its relative error is also this many times the round-off "
            "measured on the finite differences (their spread between step sizes eps/2, eps, 2 eps); "
            "within it the whole-model check is inconclusive (info)",
            "factor",
        ),
        Threshold(
            "gradcheck_atol",
            1e-5,
            "absolute tolerance of the full `torch.autograd.gradcheck` (torch's default)",
            "gradient units",
        ),
        Threshold(
            "gradcheck_rtol",
            1e-3,
            "relative tolerance of the full `torch.autograd.gradcheck` (torch's default)",
            "relative error",
        ),
    )
    citations = (CHECKLIST, CS231N, GRADCHECK_DOCS)

    def unit_passed(self, unit: GradcheckUnit | dict[str, Any]) -> bool:
        """A unit passes when its forward and backward ran, torch's gradcheck (given this
        check's atol/rtol) found no mismatch, and a directional test stayed within
        `max_relative_error`."""
        unit = GradcheckUnit.coerce(unit)
        if unit.raised or unit.mismatch:
            return False
        if unit.method == "gradcheck":
            return True
        err = unit.max_rel_error
        return err is not None and math.isfinite(err) and err <= self.max_relative_error

    def evaluate(self, obs: Any) -> Iterable[Finding]:
        data = _data(obs, "gradcheck", "gradient-check", GradcheckRun)
        units = data.units
        model: Any = data.model or {}
        checked = [u for u in units if not u.get("skipped")]
        if model.get("skipped") and not checked:
            reasons = [model["skipped"]] + [u["skipped"] for u in units if u.get("skipped")]
            raise Skip("; ".join(dict.fromkeys(reasons)))
        failed_where: set[str] = set()
        # A module fails when a custom Function it calls fails: report the Function only.
        function_where = {
            u.get("where") or "" for u in checked if u["kind"] == "function" and not self.unit_passed(u)
        }

        def calls_failed_function(module_where: str) -> bool:
            return any(w == module_where or w.startswith(module_where + ".") for w in function_where)

        for unit in sorted(checked, key=lambda u: u["kind"] != "function"):
            if self.unit_passed(unit):
                continue
            if unit["kind"] == "module" and calls_failed_function(unit.get("where") or ""):
                failed_where.add(unit.get("where") or "")
                continue
            label = (
                f"custom autograd.Function `{unit['name']}`"
                + (f" (called in `{unit['where']}`)" if unit.get("where") else "")
                if unit["kind"] == "function"
                else f"module `{unit['where']}` ({unit['name']})"
            )
            failed_where.add(unit.get("where") or "")
            yield self.finding(
                f"The backward of {label} is wrong: its analytic gradient disagrees with "
                f"finite differences ({unit.get('method')}, float64"
                + (
                    f", relative error {unit['max_rel_error']:.2g}"
                    if unit.get("max_rel_error") is not None
                    else ""
                )
                + ")."
                + "".join(f" {text}" for text in (unit.raised, unit.mismatch) if text),
                where=unit.get("where"),
                unit_kind=unit["kind"],
                unit=unit["name"],
                method=unit.get("method"),
                max_rel_error=unit.get("max_rel_error"),
                input_shapes=unit.get("input_shapes"),
            )
        if model and not model.get("skipped"):
            worst = model.get("max_rel_error")
            tol = self.max_relative_error * (100.0 if model.get("dtype") == "float32" else 1.0)
            loss = model.get("loss")
            if loss is not None and not math.isfinite(loss):
                if not failed_where:
                    yield self.finding(
                        f"Inconclusive: the loss is {loss} on the checked batch, so finite differences of it "
                        f"say nothing about the backward; no verdict on the gradients.",
                        severity=Severity.INFO, kind="inconclusive", reason="nonfinite_loss", dtype=model.get("dtype"),
                        fix="Find where the loss becomes non-finite first (see nan-trace).")
                return
            if worst is not None and (not math.isfinite(worst) or worst > tol):
                results = model.get("results") or []
                clear, noisy = self.split_by_noise(results, tol)
                if results and not clear and noisy:
                    # Every direction over the tolerance is within the round-off the probe
                    # measured on the finite differences themselves: no verdict.
                    if failed_where:
                        return
                    noise = max(r["noise_rel"] for r in noisy)
                    through32 = any(r.get("loss_through_float32") for r in noisy)
                    yield self.finding(
                        f"Inconclusive: the gradient differs from finite differences by {worst:.2g} (relative, "
                        f"{model.get('dtype')}), but the round-off of the finite differences themselves is "
                        f"{noise:.2g} (relative; from their spread at step sizes eps/2, eps and 2 eps and the "
                        f"loss's precision"
                        + ("; the loss passes through float32 tensors built inside forward" if through32 else "")
                        + "): no verdict on the backward.",
                        severity=Severity.INFO, kind="inconclusive", reason="roundoff", max_rel_error=worst,
                        noise_rel=noise, dtype=model.get("dtype"), tolerance=tol,
                        fix="Nothing to fix from this check. For a verdict, let the model run in float64 "
                            "(no hard-coded float32 tensors in forward).")
                    return
                if results and clear:
                    worst = max(r["rel_error"] for r in clear)
                localized = [
                    t for t in model.get("localized") or []
                    if t.get("rel_error") is not None
                    and (not math.isfinite(t["rel_error"]) or t["rel_error"] > tol)
                ]
                localized.sort(key=lambda t: -t["rel_error"] if math.isfinite(t["rel_error"]) else -math.inf)
                modules = list(dict.fromkeys(t["module"] for t in localized))
                if failed_where:
                    # Already explained: a unit's wrong input gradient shows up in the
                    # parameters upstream of it, so the tensors named here may differ.
                    return
                where = modules[0] if modules else None
                yield self.finding(
                    "The gradient of the loss disagrees with finite differences of the loss: "
                    f"relative error {worst:.2g} along a direction over all parameters "
                    f"(tolerance {tol:.0e}, {model.get('dtype')})."
                    + (
                        " The wrong gradients are those of "
                        + ", ".join(f"`{t['param']}`" for t in localized[:5])
                        + (f" (module `{where}`)." if where is not None else ".")
                        if localized
                        else " No single parameter tensor could be singled out."
                    ),
                    where=where,
                    max_rel_error=worst,
                    directions=model.get("directions"),
                    dtype=model.get("dtype"),
                    localized=localized[:10],
                )

    def split_by_noise(self, results: list[dict[str, Any]], tol: float) -> tuple[list, list]:
        """The directions whose error exceeds ``tol``: (clear, noisy). Clear: the error is
        also more than ``noise_margin`` times the round-off measured on the finite
        differences (or no round-off was measured, as in older records). Noisy: within it."""
        clear, noisy = [], []
        for r in results:
            err = r.get("rel_error")
            if err is None or (math.isfinite(err) and err <= tol):
                continue
            noise = r.get("noise_rel")
            if noise is not None and (not math.isfinite(noise) or err <= self.noise_margin * noise):
                noisy.append({**r, "noise_rel": noise})
            else:
                clear.append(r)
        return clear, noisy
