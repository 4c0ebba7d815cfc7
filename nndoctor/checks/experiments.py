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

from .._probe_records import RandomInputRun
from .pairing import PairingRun, pairing_verdict
from .._report import Finding, Severity
from ._base import CHECKLIST, Check, Threshold
from ._experiment_common import DEEPCHECKER, KARPATHY, ZHANG_2017, _BASELINE_WORDS, _curve, _data, _finite, _fmt, _inconclusive_if_not_finite

__all__ = ["OverfitTinyBatch", "RandomInputLoss", "LrSweep", "GradientCheck"]


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
    4. label/input pairing, at default settings: the checkup batch plus the batches the
       watch saw (their samples kept while watching; repeated samples dropped) are split: a
       copy trains on half of them (64 at most, until it has memorised them or for 300 Adam
       steps), and its held-out loss on the rest with the real labels is
       compared with the same labels permuted among the held-out samples (99 permutations,
       the control). A permutation test gives the p-value. Labels that beat the controls
       (`max_p_paired`) are paired; labels no better than the controls (`min_p_unpaired`)
       while the copy memorised its training half (`max_fit_fraction`), with enough samples
       on each side (`min_pairing_samples`, and `min_label_changes` held-out labels that a
       permutation changes), are not paired: a warning. Anything else is
       inconclusive and says nothing. When this experiment ran, it replaces (3).
       For a model called as `model(X, Y)` that computes its own loss, the noise and zeros of
       (1)-(2) replace X only, never the targets passed into the model.

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
    - When the experiments' time budget (derived from the measured step time, so from
      the machine's load) cuts the random-input training short, the real/zero/noise
      comparison and the held-out comparison built on it are inconclusive (info); the
      output check (no training) and the pairing experiment keep their verdicts.
    - Tasks where the label does not depend on the input by design (an unconditional
      generative model); there the check does not apply, ignore it.
    - The held-out comparison (3) needs the task to be learnable from half a batch in a
      few tens of steps: on hard data (natural images, 16 samples) it can warn on a
      healthy setup; it is therefore a warning only. Pass a larger batch to `checkup`.
    - The pairing experiment (4) warns only when the copy memorised its training half yet
      learned nothing that carries over to held-out samples; a healthy task that cannot
      generalise at all from 64 samples (a very hard one) looks the same. Fitting random
      targets on purpose (a tutorial's `y = torch.randn(...)`) is, rightly, reported.
      Tasks where a sample's label depends on other samples are out of its scope.

    ## Example
    `x, y = x[torch.randperm(n)], y[torch.randperm(n)]` (two permutations) or two
    `shuffle=True` loaders zipped: the copy memorises its 64 training samples (loss 1.41 ->
    0.07) but predicts the 73 held-out labels no better than permuted labels (p = 0.6), and
    the check warns "the labels do not depend on their inputs".
    `return self.fc(torch.zeros_like(x))` gives an error.

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
        Threshold(
            "max_p_paired",
            0.05,
            "pairing experiment: the labels count as paired with their inputs when the held-out "
            "loss with the real labels beats the permuted-label controls with a permutation-test "
            "p-value at most this (99 permutations: p = 0.01 means better than all of them; healthy "
            "classifiers, an LSTM, a transformer and a regression measured 0.01-0.05)",
            "p-value",
        ),
        Threshold(
            "min_p_unpaired",
            0.1,
            "pairing experiment: the labels count as not paired only when the real labels do no "
            "better than the controls with a p-value at least this (labels shuffled apart from their "
            "inputs give a p-value spread evenly over 0-1; between the two bounds: inconclusive)",
            "p-value",
        ),
        Threshold(
            "max_fit_fraction",
            0.4,
            "pairing experiment: judged 'not paired' only when the copy memorised its training half, "
            "its loss falling to at most this fraction of its start (10 random digit classes: 2.31 -> "
            "0.73 in 300 Adam steps): a model that has not learned its own samples (a language model "
            "early on, a hard task) cannot be expected to generalise, and then the experiment is "
            "inconclusive",
            "fraction of the initial training loss",
        ),
        Threshold(
            "min_pairing_samples",
            48,
            "pairing experiment: samples needed on each side (trained on, held out) for a 'not paired' "
            "verdict; the pool is the checkup batch plus the samples of the batches the watch saw "
            "(4-5 sampled batches: 128-160 samples at batch size 32)",
            "samples",
        ),
        Threshold(
            "min_label_changes",
            24,
            "pairing experiment: held-out samples whose label a permutation changes, on average, "
            "needed for a 'not paired' verdict (half of `min_pairing_samples`): labels that are "
            "nearly all the same (2% positives) change on a sample or two, so the control cannot "
            "differ from the real labels whatever the pairing",
            "samples",
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
        cut_from = data.get("shortened_from")
        if cut_from and real and zeros and noise:
            # Fewer training steps than asked for (the time budget follows the machine's
            # load): real inputs may not have pulled ahead of zeros yet, and would on an idle
            # machine; a verdict here would change with the load.
            yield self.finding(
                f"Inconclusive: the experiments' time budget cut the random-input training to "
                f"{data.get('steps')} steps (of {cut_from}); the comparison of real, zero and noise "
                "inputs is not judged on a shortened run.",
                severity=Severity.INFO, kind="shortened", shortened_from=cut_from,
                train_curves={k: _curve(v) for k, v in train.items()},
                fix="Re-run with more time for the experiments (nndoctor check --timeout) for a verdict.",
            )
        elif real and zeros and noise:
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
        pairing = (getattr(obs, "experiments", None) or {}).get("pairing")
        if pairing is not None and not pairing.get("skipped"):
            # The pairing experiment (the watched batches as a larger held-out set, with
            # permuted-label controls) supersedes the 16-sample held-out comparison below.
            yield from self._pairing(PairingRun.coerce(pairing))
            return
        if cut_from:
            return  # the held-out comparison below rides on the same shortened training
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

    def _pairing(self, run: PairingRun) -> Iterable[Finding]:
        verdict = pairing_verdict(
            run, max_p_paired=self.max_p_paired, min_p_unpaired=self.min_p_unpaired,
            max_fit_fraction=self.max_fit_fraction, min_samples=self.min_pairing_samples,
            min_label_changes=self.min_label_changes)
        if verdict != "unpaired":
            return
        at = run.eval_steps.index(run.best_step) if run.best_step in run.eval_steps else len(run.eval_steps) - 1
        real, control, spread = run.holdout_real[at], run.holdout_permuted[at], run.holdout_permuted_std[at]
        watched = f", {run.n_watched} of them from the watched batches" if run.n_watched else ""
        yield self.finding(
            f"The labels do not depend on their inputs: a copy trained on {run.n_train} samples "
            f"memorised them (loss {_fmt(run.train_loss[0])} -> {_fmt(run.train_loss[-1])}) but predicts "
            f"the labels of {run.n_holdout} held-out samples{watched} no better than the same labels "
            f"randomly permuted (held-out loss {_fmt(real)} with the real labels, {_fmt(control)} ± "
            f"{_fmt(spread)} with {run.n_permutations} permutations; p = {run.p_value:.2f}). Inputs and "
            "labels are most likely shuffled or indexed separately.",
            severity=Severity.WARNING,
            holdout_gain=run.gain,
            p_value=run.p_value,
            n_train=run.n_train,
            n_holdout=run.n_holdout,
            n_watched=run.n_watched,
            fit_fraction=run.fit_fraction,
            holdout_curves={"real": _curve(run.holdout_real), "permuted": _curve(run.holdout_permuted)},
            train_curve=_curve(run.train_loss),
            eval_steps=list(run.eval_steps),
            optimizer=run.optimizer,
            fix="Shuffle inputs and labels together: one Dataset returning (x, y), or one index "
            "(`idx = torch.randperm(n); x, y = x[idx], y[idx]`), never two `randperm` calls or two "
            "`shuffle=True` loaders zipped; check that the label column is the right one.",
        )


# --------------------------------------------------------------------------------------


# The other experiment checks live in their own modules; importable from here too.
from .gradient_check import GradientCheck  # noqa: E402
from .overfit import OverfitTinyBatch  # noqa: E402
from .lr_sweep import LrSweep  # noqa: E402
