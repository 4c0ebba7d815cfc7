"""Distributed-training checks (DDP): they judge facts gathered from every rank.

They read ``obs.experiments["distributed"]``, which ``nndoctor._distributed.gather_reports``
fills on rank 0 with one plain-data record per rank (parameter fingerprints, input
fingerprints, parameters that never got a gradient, ``DistributedSampler`` records).
In a single-process run the facts are absent and every check here skips with
"not a distributed run".

Facts, per rank (``facts["ranks"][i]``): ``rank``, ``world_size``, ``ddp`` (wrapped in
``DistributedDataParallel``), ``sharded`` (FSDP/DTensor), ``find_unused_parameters``,
``params`` ({name: [sum, sum of squares, numel]} at the end of the watch), ``inputs``
([[step, fingerprint0, fingerprint1], ...]), ``grads_never`` (parameters without a
gradient on every sampled step), ``sampled_backward_steps`` and ``samplers``.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from .._report import Finding, Severity
from ._base import Check, Citation, Skip, Threshold
from ._util import fmt

DDP_DOCS = Citation(
    "PyTorch docs: torch.nn.parallel.DistributedDataParallel",
    "https://pytorch.org/docs/stable/generated/torch.nn.parallel.DistributedDataParallel.html",
)
DDP_NOTES = Citation(
    "PyTorch docs: Distributed Data Parallel (design notes)",
    "https://pytorch.org/docs/stable/notes/ddp.html",
)
SAMPLER_DOCS = Citation(
    "PyTorch docs: torch.utils.data.distributed.DistributedSampler",
    "https://pytorch.org/docs/stable/data.html#torch.utils.data.distributed.DistributedSampler",
)

NOT_DISTRIBUTED = "not a distributed run"


def _ranks(obs: Any, need: int = 2) -> list[dict[str, Any]]:
    """The per-rank facts, or Skip: absent (single process) or fewer than ``need`` ranks."""
    experiments = getattr(obs, "experiments", None) or {}
    facts = experiments.get("distributed") if isinstance(experiments, dict) else None
    if not facts or not facts.get("ranks"):
        raise Skip(NOT_DISTRIBUTED)
    ranks = sorted(facts["ranks"], key=lambda r: r.get("rank", 0))
    if len(ranks) < need:
        raise Skip(f"{NOT_DISTRIBUTED} (facts from {len(ranks)} rank(s) only)")
    return ranks


def _rank_list(ranks: Iterable[int]) -> str:
    ranks = sorted(ranks)
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(str(r) for r in ranks)


def _names(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(f"`{n}`" for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


class DdpParameterDivergence(Check):
    """## What it measures
    Every rank's parameters at the end of the watched steps, fingerprinted in float64
    (sum and sum of squares per parameter), compared with rank 0's. A parameter whose
    fingerprint differs by more than `rel_tol` (relative) has diverged.

    ## Why it matters
    Data-parallel training keeps one model in as many copies as there are ranks: DDP
    broadcasts rank 0's parameters when it wraps the model, then averages gradients so
    that every rank applies the same update. Parameters that differ after the same
    steps mean the ranks now train different models (the gradients averaged are those
    of different functions), and the checkpoint saved by rank 0 is not what the other
    ranks evaluated. It never heals by itself.

    ## How to fix
    - Change parameters only through the optimizer step, or identically on every rank (same seed, same data): no in-place edits on one rank.
    - Load checkpoints before wrapping in `DistributedDataParallel` (the wrap broadcasts rank 0's weights), or on every rank.
    - Wrap the model in `DistributedDataParallel`; without it each rank trains its own copy.
    - Parameters that DDP ignores (`_ddp_params_and_buffers_to_ignore`) or that are excluded from the optimizer on some ranks drift: keep them in sync by hand.

    ## Known false positives
    - Sharded training (FSDP, DTensor): parameters differ by design; the check skips.
    - Independent models on purpose (ensembles or a hyper-parameter search launched as
      one process group).
    - Mixed hardware can make float sums differ in the last bits; `rel_tol` (1e-5)
      sits far above that.

    ## Example
    `with torch.no_grad(): ddp.module.fc.weight.mul_(1.01)` on rank 1 only: the weights
    of rank 1 differ from rank 0's from that step on, and DDP never resynchronises them.

    ## References
    - PyTorch docs, DistributedDataParallel (parameters are broadcast at construction;
      gradients are all-reduced so replicas stay in sync).
    - PyTorch docs, Distributed Data Parallel design notes.
    """

    id = "ddp-parameter-divergence"
    title = "Parameters differ across ranks after the same steps"
    family = "distributed"
    severity = Severity.ERROR
    needs = ("experiments",)
    thresholds = (
        Threshold("rel_tol", 1e-5,
                  "relative difference of a parameter's float64 sum or sum of squares from rank 0's "
                  "above which it has diverged", "fraction"),
    )
    citations = (DDP_DOCS, DDP_NOTES)

    def evaluate(self, obs) -> Iterable[Finding]:
        ranks = _ranks(obs)
        if any(r.get("sharded") for r in ranks):
            raise Skip("the model is sharded (FSDP/DTensor): parameters differ across ranks by design")
        with_params = [r for r in ranks if r.get("params")]
        if len(with_params) < 2:
            raise Skip("no parameter fingerprints were gathered (pass the model to gather_reports)")
        ref = with_params[0]
        diverged: dict[str, dict[str, float]] = {}  # name -> {rank: relative difference}
        for other in with_params[1:]:
            for name, (s0, ss0, n0) in ref["params"].items():
                fp = other["params"].get(name)
                if fp is None:
                    continue
                s1, ss1, n1 = fp
                if n1 != n0:
                    diverged.setdefault(name, {})[str(other["rank"])] = math.inf
                    continue
                # |sum| <= sqrt(numel * sum of squares): the natural scale of the sum.
                scale_sum = math.sqrt(max(n0 * max(ss0, ss1), 0.0)) or 1e-30
                scale_sq = max(abs(ss0), abs(ss1)) or 1e-30
                rel = max(abs(s1 - s0) / scale_sum, abs(ss1 - ss0) / scale_sq)
                if not math.isfinite(rel) or rel > self.rel_tol:
                    diverged.setdefault(name, {})[str(other["rank"])] = rel
        if not diverged:
            return
        bad_ranks = sorted({int(r) for d in diverged.values() for r in d})
        names = list(diverged)
        worst = max((v for d in diverged.values() for v in d.values()), default=0.0)
        n_total = len(ref["params"])
        wrapped = [r["rank"] for r in ranks if r.get("ddp")]
        evidence = {
            "parameters": names[:20], "n_diverged": len(names), "n_parameters": n_total,
            "diverged_ranks": bad_ranks, "reference_rank": ref["rank"],
            "max_relative_difference": worst,
            "relative_difference": {n: diverged[n] for n in names[:20]},
        }
        if not wrapped:
            yield self.finding(
                f"{len(names)} of {n_total} parameters differ between rank {ref['rank']} and "
                f"{_rank_list(bad_ranks)} (e.g. {_names(names, 2)}, relative difference up to {fmt(worst)}), "
                f"and the model is not wrapped in DistributedDataParallel: each rank trains its own copy.",
                where=names[0], ranks=bad_ranks, **evidence,
                fix="Wrap the model: `model = DistributedDataParallel(model)` (after moving it to its device), "
                    "and train the wrapped model.")
            return
        yield self.finding(
            f"The parameters of {_rank_list(bad_ranks)} differ from rank {ref['rank']}'s after the same steps: "
            f"{len(names)} of {n_total} ({_names(names)}; relative difference up to {fmt(worst)}). "
            f"The replicas now train different models.",
            where=names[0], ranks=bad_ranks, **evidence)


class DdpSameBatchEveryRank(Check):
    """## What it measures
    The fingerprint of the model's first input on each sampled step, rank by rank:
    the share of compared steps on which every rank received the identical batch.

    ## Why it matters
    Data parallelism pays off only when each rank sees a different slice of the data.
    A plain `DataLoader` (no `DistributedSampler`) with the same seed on every rank hands
    every rank the same batches: N processes compute the same gradient, the effective
    batch is not N times larger, an epoch takes as long as on one process, and the
    learning rate scaled for N × batch is N times too large for the real data seen.

    ## How to fix
    - Use `DistributedSampler(dataset)` as the DataLoader's `sampler` (and drop `shuffle=True` from the DataLoader; the sampler shuffles).
    - Call `sampler.set_epoch(epoch)` at the start of every epoch.
    - For iterable data sets, shard by rank yourself (`itertools.islice(stream, rank, None, world_size)`).

    ## Known false positives
    - Deliberately identical inputs on every rank (e.g. model-parallel or evaluation
      runs that reuse the process group).
    - Not caught (false negative): ranks that each shuffle the whole data set with
      different seeds see different batches but still overlap.

    ## Example
    `DataLoader(train_set, batch_size=32, shuffle=False)` under `torchrun --nproc-per-node 2`:
    both ranks receive samples 0-31, then 32-63, and so on.

    ## References
    - PyTorch docs, DistributedSampler ("restricts data loading to a subset of the
      dataset ... each process can pass a DistributedSampler instance as a DataLoader sampler").
    - PyTorch docs, DistributedDataParallel.
    """

    id = "ddp-same-batch-every-rank"
    title = "Every rank trains on the same batches (no DistributedSampler)"
    family = "distributed"
    severity = Severity.WARNING
    needs = ("experiments",)
    thresholds = (
        Threshold("min_steps", 2, "steps with an input fingerprint on every rank needed before judging", "steps"),
        Threshold("min_identical_share", 0.5,
                  "share of compared steps with identical inputs on all ranks at which the check fires",
                  "fraction"),
    )
    citations = (SAMPLER_DOCS, DDP_DOCS)

    def evaluate(self, obs) -> Iterable[Finding]:
        ranks = _ranks(obs)
        per_rank = [{int(s): (a, b) for s, a, b in r.get("inputs") or []} for r in ranks]
        common = sorted(set.intersection(*(set(d) for d in per_rank)))
        if len(common) < self.min_steps:
            raise Skip(f"input batches were compared on {len(common)} step(s) across ranks "
                       f"(needs {int(self.min_steps)})")

        def same(a: tuple[float, float], b: tuple[float, float]) -> bool:
            return all(math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12) for x, y in zip(a, b))

        identical = [s for s in common if all(same(per_rank[0][s], d[s]) for d in per_rank[1:])]
        share = len(identical) / len(common)
        if share < self.min_identical_share:
            return
        has_sampler = any(r.get("samplers") for r in ranks)
        hint = ("a DistributedSampler exists, but the batches are still identical: is it the DataLoader's sampler?"
                if has_sampler else "no DistributedSampler was found")
        yield self.finding(
            f"All {len(ranks)} ranks received identical input batches on {len(identical)} of {len(common)} "
            f"compared steps: the ranks repeat each other's work ({hint}).",
            step=identical[0], identical_steps=len(identical), compared_steps=len(common), share=share,
            ranks=[r["rank"] for r in ranks], sampler_found=has_sampler)


class DdpUnusedParameters(Check):
    """## What it measures
    Under `DistributedDataParallel`, the parameters that require a gradient but had
    none on every sampled step of every rank (DDP leaves globally unused parameters'
    `.grad` untouched), and the wrapper's `find_unused_parameters` setting.

    ## Why it matters
    DDP's reducer waits for a gradient of every parameter before it all-reduces a
    bucket. With a parameter that never gets one, DDP raises "Expected to have finished
    reduction in the prior iteration" at the next step, unless
    `find_unused_parameters=True`, which makes every step walk the autograd graph to
    mark unused parameters: extra time per step, for weights that never learn.

    ## How to fix
    - Remove the layers the forward pass does not use, or freeze them (`requires_grad_(False)`) before wrapping in DDP.
    - Keep `find_unused_parameters=True` only when the set of used parameters really changes from step to step (e.g. mixture of experts, conditional branches).
    - If the graph is the same every step, `static_graph=True` lets DDP handle unused parameters without the per-step search.

    ## Known false positives
    - Branches used only on some steps (conditional computation): the parameters are
      reported when no sampled step used them.
    - Parameters excluded on purpose with `_set_params_and_buffers_to_ignore_for_ddp`.

    ## Example
    A model with `self.aux = nn.Linear(64, 10)` that `forward` never calls, wrapped in
    `DistributedDataParallel(model, find_unused_parameters=True)`.

    ## References
    - PyTorch docs, DistributedDataParallel (`find_unused_parameters`: "traverse the
      autograd graph ... mark unused parameters as ready"; its cost).
    - PyTorch docs, Distributed Data Parallel design notes (gradient buckets, unused parameters).
    """

    id = "ddp-unused-parameters"
    title = "Parameters without gradients under DistributedDataParallel"
    family = "distributed"
    severity = Severity.WARNING
    needs = ("experiments",)
    thresholds = (
        Threshold("min_steps", 1, "sampled steps with a backward, on every rank, needed before judging", "steps"),
    )
    citations = (DDP_DOCS, DDP_NOTES)

    def evaluate(self, obs) -> Iterable[Finding]:
        ranks = _ranks(obs, need=1)
        if len(ranks) < 2 and (ranks[0].get("world_size") or 1) < 2:
            raise Skip(NOT_DISTRIBUTED)
        ddp = [r for r in ranks if r.get("ddp")]
        if not ddp:
            raise Skip("the watched model is not a DistributedDataParallel (watch the DDP-wrapped model)")
        judged = [r for r in ddp if r.get("grads_never") is not None
                  and (r.get("sampled_backward_steps") or 0) >= self.min_steps]
        if not judged:
            raise Skip("no sampled training step with a backward pass on the DDP ranks")
        never = set.intersection(*(set(r["grads_never"]) for r in judged))
        find_unused = any(r.get("find_unused_parameters") for r in ddp)
        static = any(r.get("static_graph") for r in ddp)
        names = sorted(never)
        if names:
            modules = sorted({n.rpartition(".")[0] for n in names})
            setting = ("with find_unused_parameters=True every step pays an extra autograd-graph traversal "
                       "to find them" if find_unused else
                       "without find_unused_parameters=True DDP raises 'Expected to have finished reduction "
                       "in the prior iteration' at the next step" if not static else
                       "static_graph=True copes with them, but they never learn")
            yield self.finding(
                f"{len(names)} parameter(s) never received a gradient on any rank under DDP "
                f"({_names(names)}, in {_names(modules, 3)}): {setting}.",
                where=modules[0] or names[0], parameters=names[:50], modules=modules[:20],
                find_unused_parameters=find_unused, static_graph=static,
                ranks=[r["rank"] for r in judged])
        elif find_unused:
            yield self.finding(
                "DistributedDataParallel runs with find_unused_parameters=True but every parameter received "
                "a gradient: the per-step search for unused parameters costs time for nothing.",
                severity=Severity.INFO, find_unused_parameters=True, ranks=[r["rank"] for r in judged],
                fix="Drop find_unused_parameters=True (the default is False).")


class DdpSetEpochMissing(Check):
    """## What it measures
    For each `DistributedSampler` with `shuffle=True` (recorded by
    `nndoctor._distributed.track_samplers`): the epoch value each new epoch (each
    `iter(sampler)`) started with, and the number of `set_epoch` calls.

    ## Why it matters
    `DistributedSampler` shuffles with the seed `seed + epoch`, and only `set_epoch`
    changes `epoch`. Without it every epoch replays exactly the same order on every
    rank: the model sees the same batches in the same sequence each epoch, as if the
    data were not shuffled after the first epoch.

    ## How to fix
    - Call `sampler.set_epoch(epoch)` at the start of every epoch, before iterating the DataLoader.

    ## Known false positives
    - A run of one epoch (the check needs two epochs started while tracked).
    - A deliberately fixed order (`shuffle=False` is not judged).
    - Not counted: subclasses whose `__iter__` does not call `DistributedSampler.__iter__`.
      Without `track_samplers()` the epochs are unknown and the check skips.

    ## Example
    `for epoch in range(10): for x, y in loader: ...` with
    `loader = DataLoader(ds, sampler=DistributedSampler(ds))` and no `loader.sampler.set_epoch(epoch)`.

    ## References
    - PyTorch docs, DistributedSampler ("calling the set_epoch() method at the beginning of
      each epoch before creating the DataLoader iterator is necessary to make shuffling
      work properly across multiple epochs. Otherwise, the same ordering will be always used.").
    """

    id = "ddp-set-epoch-missing"
    title = "DistributedSampler.set_epoch is never called: every epoch has the same order"
    family = "distributed"
    severity = Severity.WARNING
    needs = ("experiments",)
    thresholds = (
        Threshold("min_epochs", 2, "epochs started (iter(sampler)) while tracked before judging", "epochs"),
    )
    citations = (SAMPLER_DOCS,)

    def evaluate(self, obs) -> Iterable[Finding]:
        ranks = _ranks(obs, need=1)
        samplers = [(r["rank"], s) for r in ranks for s in (r.get("samplers") or [])]
        if not samplers:
            raise Skip("no DistributedSampler was found")
        shuffled = [(rank, s) for rank, s in samplers if s.get("shuffle")]
        if not shuffled:
            raise Skip("no DistributedSampler shuffles (shuffle=False)")
        tracked = [(rank, s) for rank, s in shuffled if s.get("tracked") and s.get("iter_epochs") is not None]
        if not tracked:
            raise Skip("DistributedSampler epochs were not counted: run the training inside "
                       "nndoctor._distributed.track_samplers()")
        judged = [(rank, s) for rank, s in tracked if len(s["iter_epochs"]) >= self.min_epochs]
        if not judged:
            raise Skip(f"fewer than {int(self.min_epochs)} epochs started while the samplers were tracked")
        bad = [(rank, s) for rank, s in judged
               if any(a == b for a, b in zip(s["iter_epochs"], s["iter_epochs"][1:]))]
        if not bad:
            return
        rank_ids = sorted({rank for rank, _ in bad})
        _, s = bad[0]
        epochs = s["iter_epochs"]
        repeats = sum(a == b for a, b in zip(epochs, epochs[1:]))
        calls = s.get("set_epoch_calls") or 0
        how = ("set_epoch was never called" if calls == 0
               else f"set_epoch was called {calls} time(s) but the epoch did not change between epochs")
        yield self.finding(
            f"{s.get('class', 'DistributedSampler')} (shuffle=True) started {len(epochs)} epochs with epoch "
            f"values {epochs[:8]} on {_rank_list(rank_ids)}: {how}, so {repeats} epoch(s) replayed the "
            f"previous epoch's order.",
            epochs_started=len(epochs), iter_epochs=epochs[:16], set_epoch_calls=calls, ranks=rank_ids)
