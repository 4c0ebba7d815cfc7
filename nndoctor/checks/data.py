"""Data checks: input scale, labels, repeated batches."""

from __future__ import annotations

from typing import Iterable

from .._report import Finding, Severity
from ._base import CHECKLIST, Check, Citation, Skip, Threshold
from ._util import count, fmt, median, number


class InputNormalization(Check):
    """## What it measures
    The statistics of the model's first floating-point input on the sampled steps: mean,
    std, min, max and the share of exact zeros.

    ## Why it matters
    The checklist: check that the input really reaches the network (all-zero vectors,
    constant inputs are silly but common mistakes), and normalise inputs with the
    training split's mean and variance. Raw 0-255 pixels or raw physical units make the
    first layers saturate and the learning rate impossible to tune.

    ## How to fix
    - Normalise per channel/feature: `(x - mean) / std`, with statistics from the training split.
    - For images: divide by 255, then normalise (or use the pre-trained model's preprocessing).
    - If the input is all zeros or constant: print a batch; check the data loading, the transforms and the dtype casts.

    ## Known false positives
    - Inputs in a fixed range that a pre-trained model expects (e.g. 0-255 for some
      detectors); the check flags only |mean| or std above 10.
    - Integer inputs (token ids, indices) are not judged.

    ## Example
    `torch.tensor(images, dtype=torch.float32)` from uint8 arrays: mean ~120, std ~70.

    ## References
    - The training checklist (data problems; normalisation).
    - LeCun et al., "Efficient BackProp", 1998 (centre and scale the inputs).
    - Amazon SageMaker Debugger CheckInputImages rule.
    """

    id = "input-normalization"
    title = "Inputs not normalised, constant, or all zero"
    family = "data"
    severity = Severity.ERROR
    needs = ("steps",)
    thresholds = (
        Threshold("max_abs_mean", 10.0, "absolute input mean above which inputs are unnormalised", "input units"),
        Threshold("max_std", 10.0, "input std above which inputs are unnormalised", "input units"),
        Threshold("min_std", 1e-3, "input std below which the inputs are (almost) constant", "input units"),
    )
    citations = (CHECKLIST, Citation("LeCun et al., 'Efficient BackProp', 1998"))

    def evaluate(self, obs) -> Iterable[Finding]:
        recs = [r for r in obs.sampled if r.input is not None]
        if not recs:
            raise Skip("no model input was observed")
        floats = [r for r in recs if r.input.is_float]
        if not floats:
            raise Skip(f"the model's input is {recs[0].input.dtype} (ids or indices), not a float signal")
        zero = [r for r in floats if r.input.max == 0 and r.input.min == 0]
        if len(zero) == len(floats):
            yield self.finding(
                f"The input batches are all zeros (checked {count(len(floats), 'batch')}, shape {floats[0].input.shape}): "
                f"no information reaches the network.",
                severity=Severity.ERROR, step=zero[0].step, batches=len(floats))
            return
        const = [r for r in floats if r.input.std < self.min_std]
        if len(const) == len(floats):
            yield self.finding(
                f"Every input batch is (almost) constant: std {fmt(const[0].input.std)}, value ~{fmt(const[0].input.mean)}.",
                severity=Severity.ERROR, step=const[0].step, std=const[0].input.std, mean=const[0].input.mean)
            return
        mean = median(r.input.mean for r in floats)
        std = median(r.input.std for r in floats)
        lo = min(r.input.min for r in floats)
        hi = max(r.input.max for r in floats)
        evidence = {"mean": mean, "std": std, "min": lo, "max": hi, "batches": len(floats)}
        if abs(mean) > self.max_abs_mean or std > self.max_std:
            hint = " (looks like raw 0-255 pixels)" if 0 <= lo and 100 < hi <= 255 else ""
            yield self.finding(
                f"Inputs are not normalised: mean {fmt(mean)}, std {fmt(std)}, range [{fmt(lo)}, {fmt(hi)}]{hint}.",
                severity=Severity.WARNING, **evidence)
        zero_frac = median(r.input.zero_fraction for r in floats)
        if zero and len(zero) < len(floats):
            yield self.finding(
                f"{len(zero)} of {count(len(floats), 'input batch')} {'was' if len(zero) == 1 else 'were'} entirely zero.",
                severity=Severity.WARNING, step=zero[0].step, zero_fraction=zero_frac, **evidence)


class LabelDistribution(Check):
    """## What it measures
    The class labels (integer targets of a cross-entropy/NLL loss): labels outside
    [0, K), every batch holding a single class, one class overall, and the imbalance
    between the most and least frequent classes seen.

    ## Why it matters
    The checklist: class imbalance hurts; make each batch hold as many different labels
    as possible (shuffle); always shuffle the data set, ordered data trains badly.
    Out-of-range labels crash on GPU with an obscure device-side assert.

    ## How to fix
    - Shuffle: `DataLoader(..., shuffle=True)`.
    - Remap labels to 0..K-1 and make the output layer K wide.
    - For real imbalance: class weights in the loss, or a weighted sampler.

    ## Known false positives
    - Genuinely imbalanced tasks, e.g. next-token prediction, where letter or word
      frequencies are naturally skewed: imbalance alone is therefore reported as info.
    - Very small batches, where a single class per batch happens by chance.

    ## Example
    A DataLoader over a data set sorted by class with `shuffle=False`: every batch holds
    one class, and the model learns to predict the last class it saw.

    ## References
    - The training checklist (class imbalance; shuffle; many labels per batch).
    - Amazon SageMaker Debugger ClassImbalance rule (ratio 10).
    """

    id = "label-distribution"
    title = "Labels out of range, unshuffled or extremely imbalanced"
    family = "data"
    severity = Severity.ERROR
    needs = ("steps",)
    thresholds = (
        Threshold("max_imbalance", 10.0, "count of the most frequent class / the least frequent seen class", "ratio"),
        Threshold("min_labels", 32, "labels seen before judging balance and per-batch variety", "labels"),
        Threshold("max_single_class_batches", 0.5, "share of batches (of >= 8 labels) holding one class at which the data look unshuffled", "fraction"),
    )
    citations = (CHECKLIST, Citation("SageMaker Debugger ClassImbalance rule"))

    def evaluate(self, obs) -> Iterable[Finding]:
        recs = [r for r in obs.sampled if r.labels is not None and r.labels.n > 0]
        if not recs:
            raise Skip("no integer class labels were observed (not a classification loss, or none seen)")
        graph = obs.first_loss_graph()
        k = graph.n_classes if graph else None
        lo = min(r.labels.min for r in recs)
        hi = max(r.labels.max for r in recs)
        if k and (lo < 0 or hi >= k):
            yield self.finding(
                f"Labels range over [{lo}, {hi}] but the model outputs {k} classes (valid labels 0..{k - 1}).",
                severity=Severity.ERROR, min_label=lo, max_label=hi, n_classes=k,
                fix="Remap labels to 0..K-1, or make the last layer as wide as the number of classes.")
        total: dict[int, int] = {}
        for r in recs:
            for c, n in r.labels.counts.items():
                total[c] = total.get(c, 0) + n
        n = sum(r.labels.n for r in recs)
        if n < self.min_labels or not total:
            return
        if k and k > 1 and len(total) == 1:
            only = next(iter(total))
            yield self.finding(
                f"All {count(n, 'label')} seen are class {only} (of {number(k)}): the model can only learn a constant.",
                severity=Severity.ERROR, n_labels=n, counts=total)
            return
        sized = [r for r in recs if r.labels.n >= 8]
        single = [r for r in sized if len(r.labels.counts) == 1]
        if k and k > 1 and len(single) >= 2 and len(single) >= self.max_single_class_batches * len(sized):
            yield self.finding(
                f"{len(single)} of {count(len(sized), 'observed batch')} hold a single class (classes "
                f"{sorted({next(iter(r.labels.counts)) for r in single})}): the data are not shuffled.",
                severity=Severity.WARNING, batches=len(single),
                fix="Shuffle the training set (DataLoader(..., shuffle=True)).")
        if len(total) >= 2:
            most, least = max(total.values()), min(total.values())
            ratio = most / least
            if ratio > self.max_imbalance and n >= 10 * len(total):
                yield self.finding(
                    f"Class imbalance: the most frequent class has {ratio:.0f}x the samples of the least "
                    f"frequent ({number(most)} vs {number(least)} of {count(n, 'label')}). Often inherent to the task (token "
                    f"frequencies in language modelling); worth a look for a classification data set.",
                    severity=Severity.INFO, imbalance=ratio, counts=total, n_labels=n,
                    fix="If the imbalance is not inherent to the task: class weights in the loss "
                        "(CrossEntropyLoss(weight=...)) or a WeightedRandomSampler; judge with per-class metrics.")


class RepeatedBatch(Check):
    """## What it measures
    Whether consecutive training steps received identical input batches (and labels),
    compared by cheap fingerprints computed on the device.

    ## Why it matters
    The checklist's silly mistakes: the same batch fed again and again. The loss falls
    nicely while the model memorises one batch and learns nothing else.

    ## How to fix
    - Fetch a new batch inside the loop (`for x, y in loader:`), not once before it.
    - Check that the iterator is not re-created every step (`next(iter(loader))` always gives the first batch).

    ## Known false positives
    - Overfitting a single batch on purpose (the checklist's own debugging step), or
      full-batch training of a small data set: ignore the check there
      (`--ignore repeated-batch`). Because of these, the check warns and never errors.
    - Deliberate full-batch training is recognised, and reported as info, when the
      observers say the batch is the whole data set: no DataLoader was iterated and the
      model received the very same tensor object every step, or the DataLoader's data set
      fits in its one batch. The same batch rebuilt every step (`x[:32]`), or
      `next(iter(loader))` over a larger data set, still warns. (The two observations,
      `Observations.data_loaders` and `InputRecord.same_tensor`, are optional: without
      them the check warns as before.)

    ## Example
    `x, y = next(iter(loader))` before the loop, then `for step in range(1000): loss = crit(model(x), y)`.

    ## References
    - The training checklist ("the same batch fed again and again").
    """

    id = "repeated-batch"
    title = "The same batch is fed step after step"
    family = "data"
    severity = Severity.WARNING
    needs = ("steps",)
    thresholds = (
        Threshold("min_pairs", 2, "pairs of consecutive observed steps needed to judge", "pairs"),
    )
    citations = (CHECKLIST,)

    def evaluate(self, obs) -> Iterable[Finding]:
        recs = [r for r in obs.sampled if r.input is not None]
        pairs = [(a, b) for a, b in zip(recs, recs[1:]) if b.step == a.step + 1]
        if len(pairs) < self.min_pairs:
            raise Skip(f"needs at least {int(self.min_pairs)} pairs of consecutive observed batches, saw {len(pairs)}")

        def same(a, b) -> bool:
            if a.input.fingerprint != b.input.fingerprint or a.input.shape != b.input.shape:
                return False
            if a.labels is not None and b.labels is not None:
                return a.labels.fingerprint == b.labels.fingerprint
            return True

        repeated = [(a.step, b.step) for a, b in pairs if same(a, b)]
        if not repeated:
            return
        if len(repeated) == len(pairs):
            design = _full_batch_design(obs, recs)
            if design:
                yield self.finding(
                    f"All {count(len(pairs), 'pair')} of consecutive observed steps received the identical batch, "
                    f"and {design}: deliberate full-batch training, not a loading bug.",
                    severity=Severity.INFO, step=repeated[0][1], repeated_pairs=repeated, pairs=len(pairs),
                    kind="full_batch",
                    fix="Nothing to fix for full-batch training; with more data than fits one batch, "
                        "iterate a DataLoader instead.")
                return
            yield self.finding(
                f"All {count(len(pairs), 'pair')} of consecutive observed steps received the identical batch: "
                f"the model trains on one batch only (fine for deliberate full-batch training).",
                severity=Severity.WARNING, step=repeated[0][1], repeated_pairs=repeated, pairs=len(pairs))
        else:
            yield self.finding(
                f"{len(repeated)} of {count(len(pairs), 'pair')} of consecutive steps received the identical batch.",
                severity=Severity.WARNING, step=repeated[0][1], repeated_pairs=repeated, pairs=len(pairs))


def _full_batch_design(obs, recs) -> str | None:
    """Why a batch repeated at every step is the whole data set, or None when nothing says so.

    Reads two optional observations (absent from older observers, then None and the check
    warns as before): ``obs.data_loaders`` — one dict per ``torch.utils.data.DataLoader``
    iterated while watching, ``{"dataset_len": int | None, "batch_size": int | None,
    "batches": int}`` (``[]``: none was iterated) — and ``InputRecord.same_tensor`` — the
    model input is the very tensor object of the previous observed step (kept by weak
    reference; a data pointer alone can be reused by the allocator). The same tensor fed
    again with no DataLoader in play is full-batch training (`x = torch.randn(N, D)` once,
    then every step on `x`); `x, y = next(iter(loader))` before the loop is the same tensor
    too, but with a DataLoader over a larger data set: the bug."""
    loaders = getattr(obs, "data_loaders", None)
    if loaders:
        # The loader's single batch covers its whole data set.
        if all(ld.get("dataset_len") is not None and ld.get("batch_size") is not None
               and ld["dataset_len"] <= ld["batch_size"] for ld in loaders):
            n = max(ld["dataset_len"] for ld in loaders)
            return f"the DataLoader's batch holds its whole data set ({count(n, 'sample')})"
        return None
    same = [getattr(r.input, "same_tensor", None) for r in recs[1:]]
    if loaders is not None and same and all(v is True for v in same):
        return "it is the very same tensor every step with no DataLoader iterated (the data set is one batch)"
    return None
