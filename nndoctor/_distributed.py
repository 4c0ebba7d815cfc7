"""Distributed runs (``torch.distributed``, DDP): one report for all ranks.

Every rank watches its own training with its own ``Doctor``; at the end,
``gather_reports`` sends each rank's report (its JSON form) and a few per-rank facts
to rank 0, which returns ONE merged report:

* a finding seen on every rank is reported once, with ``evidence["ranks"]``;
* a finding seen on some ranks only names them: ``"on rank 1: ..."``;
* the DDP checks (``nndoctor/checks/distributed.py``) run on the gathered facts,
  which no single rank can judge alone (parameters that diverge across ranks, every
  rank seeing the same batch, parameters without gradients under DDP, a
  ``DistributedSampler`` that replays the same order every epoch).

Without an initialised process group every helper is a no-op: ``gather_reports``
returns the report it was given.

The per-rank facts (``local_facts``) are plain data, computed once, cheaply: one
device->host transfer for the parameter fingerprints (float64 sum and sum of squares
per parameter), the input fingerprints the recorder already took, and the sampler
records of ``track_samplers``.

Samplers: ``DistributedSampler`` keeps no count of its epochs, so "``set_epoch`` was
never called across two epochs" can only be seen while it happens. ``track_samplers()``
patches ``DistributedSampler.__iter__`` and ``.set_epoch`` (class attributes, installed
while at least one tracker is open and removed with the last one, like the backward
interceptor) and records, per sampler, the epoch value each new epoch started with.
Without a tracker, ``local_facts`` falls back to finding live ``DistributedSampler``
objects with ``gc`` (their class, ``shuffle`` and current ``epoch``): enough to say a
sampler exists, not enough to judge ``set_epoch`` (that check then says so and skips).
A subclass that overrides ``__iter__`` without calling ``super().__iter__()`` is not
counted (its epochs are unknown, never misjudged).
"""

from __future__ import annotations

import contextlib
import gc
import weakref
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from ._patching import SharedPatch

from ._report import Finding, Report

__all__ = [
    "is_distributed",
    "track_samplers",
    "SamplerTracker",
    "local_facts",
    "gather_reports",
    "merge_rank_payloads",
    "DISTRIBUTED_FACTS",
    "LOCAL_FACTS",
]

# Key of the gathered facts in ``Observations.experiments`` (what the DDP checks read).
DISTRIBUTED_FACTS = "distributed"
# Key under which a Doctor may store this rank's facts at the end of watch().
LOCAL_FACTS = "distributed_local"

_MAX_EPOCHS_RECORDED = 64


def is_distributed() -> bool:
    """True when ``torch.distributed`` is available and a default process group exists."""
    dist = torch.distributed
    return bool(dist.is_available() and dist.is_initialized())


# --------------------------------------------------------------------------------------
# Sampler tracking
# --------------------------------------------------------------------------------------
class SamplerTracker:
    """Per-sampler records of one ``track_samplers()`` block: the epoch value each
    ``__iter__`` (a new epoch) started with, and how often ``set_epoch`` was called."""

    def __init__(self) -> None:
        self._records: dict[int, dict[str, Any]] = {}
        self._refs: dict[int, weakref.ref] = {}

    def _record(self, sampler: Any) -> dict[str, Any]:
        key = id(sampler)
        ref = self._refs.get(key)
        if ref is None or ref() is not sampler:  # a new object (or a recycled id)
            try:
                self._refs[key] = weakref.ref(sampler)
            except TypeError:  # pragma: no cover - samplers are plain Python objects
                self._refs[key] = lambda: sampler  # type: ignore[assignment]
            self._records[key] = {
                "class": type(sampler).__name__,
                "shuffle": bool(getattr(sampler, "shuffle", False)),
                "num_replicas": getattr(sampler, "num_replicas", None),
                "rank": getattr(sampler, "rank", None),
                "tracked": True,
                "iter_epochs": [],
                "set_epoch_calls": 0,
                "epoch": getattr(sampler, "epoch", None),
            }
        return self._records[key]

    def _on_iter(self, sampler: Any) -> None:
        rec = self._record(sampler)
        rec["shuffle"] = bool(getattr(sampler, "shuffle", False))
        rec["epoch"] = getattr(sampler, "epoch", None)
        if len(rec["iter_epochs"]) < _MAX_EPOCHS_RECORDED:
            rec["iter_epochs"].append(rec["epoch"])

    def _on_set_epoch(self, sampler: Any) -> None:
        rec = self._record(sampler)
        rec["set_epoch_calls"] += 1
        rec["epoch"] = getattr(sampler, "epoch", None)

    def facts(self) -> list[dict[str, Any]]:
        """Plain-data records, one per sampler seen (copies)."""
        return [dict(r, iter_epochs=list(r["iter_epochs"])) for r in self._records.values()]


def _install_sampler_patch(patch: SharedPatch) -> list[tuple[Any, str, Any]]:
    """``DistributedSampler.__iter__`` (an epoch starts) and ``set_epoch``, seen by
    every open tracker; a tracker never breaks the data loader."""
    from torch.utils.data.distributed import DistributedSampler

    orig_iter = DistributedSampler.__dict__["__iter__"]
    orig_set_epoch = DistributedSampler.__dict__["set_epoch"]

    def __iter__(sampler: Any) -> Any:
        for t in patch.listeners:
            try:
                t._on_iter(sampler)
            except Exception:
                pass
        return orig_iter(sampler)

    def set_epoch(sampler: Any, epoch: int) -> None:
        result = orig_set_epoch(sampler, epoch)
        for t in patch.listeners:
            try:
                t._on_set_epoch(sampler)
            except Exception:
                pass
        return result

    return [(DistributedSampler, "__iter__", __iter__), (DistributedSampler, "set_epoch", set_epoch)]


_sampler_patch = SharedPatch(_install_sampler_patch)


@contextlib.contextmanager
def track_samplers() -> Iterator[SamplerTracker]:
    """Count, per ``DistributedSampler``, the epochs started and the ``set_epoch``
    calls while the block runs. The patch is removed on exit (exceptions too).

    >>> with track_samplers() as samplers, doctor.watch():
    ...     train()
    >>> report = gather_reports(doctor, samplers=samplers)
    """
    tracker = SamplerTracker()
    _sampler_patch.add(tracker)
    try:
        yield tracker
    finally:
        _sampler_patch.remove(tracker)


def _samplers_from_gc() -> list[dict[str, Any]]:
    """Live ``DistributedSampler`` objects, found by scanning the heap (once, at the end:
    a fallback when no tracker ran; epochs unknown)."""
    from torch.utils.data.distributed import DistributedSampler

    out = []
    for obj in gc.get_objects():
        try:
            if isinstance(obj, DistributedSampler):
                out.append({
                    "class": type(obj).__name__,
                    "shuffle": bool(getattr(obj, "shuffle", False)),
                    "num_replicas": getattr(obj, "num_replicas", None),
                    "rank": getattr(obj, "rank", None),
                    "tracked": False,
                    "iter_epochs": None,
                    "set_epoch_calls": None,
                    "epoch": getattr(obj, "epoch", None),
                })
        except Exception:  # objects with odd __class__ properties
            continue
    return out


# --------------------------------------------------------------------------------------
# Per-rank facts
# --------------------------------------------------------------------------------------
def _ddp_facts(model: nn.Module | None) -> dict[str, Any]:
    if model is None:
        return {"wrapper": None, "ddp": None, "sharded": None, "find_unused_parameters": None}
    from torch.nn.parallel import DistributedDataParallel

    ddp = isinstance(model, DistributedDataParallel)
    sharded = False
    try:  # FSDP (1 or 2) shards parameters: they differ across ranks by design.
        from torch.distributed.fsdp import FullyShardedDataParallel

        sharded = any(isinstance(m, FullyShardedDataParallel) for m in model.modules())
    except Exception:
        pass
    if not sharded:
        try:
            from torch.distributed.tensor import DTensor

            sharded = any(isinstance(p, DTensor) for p in model.parameters())
        except Exception:
            pass
    return {
        "wrapper": type(model).__name__,
        "ddp": ddp,
        "sharded": sharded,
        "find_unused_parameters": bool(getattr(model, "find_unused_parameters", False)) if ddp else None,
        "static_graph": bool(getattr(model, "static_graph", False)) if ddp else None,
    }


def _param_fingerprints(model: nn.Module) -> dict[str, list[float]]:
    """name -> [sum, sum of squares, numel], in float64, one transfer per device."""
    named = [(n, p) for n, p in model.named_parameters() if p.is_floating_point() and p.numel() > 0]
    if not named:
        return {}
    out: dict[str, list[float]] = {}
    by_device: dict[torch.device, list[tuple[str, torch.Tensor]]] = {}
    for n, p in named:
        by_device.setdefault(p.device, []).append((n, p))
    with torch.no_grad():
        for items in by_device.values():
            rows = []
            for _, p in items:
                x = p.detach().to(torch.float64) if p.device.type != "mps" else p.detach().float()
                rows.append(torch.stack([x.sum(), (x * x).sum()]))
            host = torch.stack(rows).cpu().tolist()
            for (n, p), (s, ss) in zip(items, host):
                out[n] = [float(s), float(ss), int(p.numel())]
    return out


def local_facts(model: nn.Module | None, obs: Any = None, *,
                samplers: "SamplerTracker | Sequence[dict[str, Any]] | None" = None) -> dict[str, Any]:
    """This rank's facts for the DDP checks (plain data). ``model`` is the model as
    trained (the ``DistributedDataParallel`` wrapper, ideally); ``obs`` the rank's
    ``Observations``; ``samplers`` a ``track_samplers()`` tracker (or its facts)."""
    dist = torch.distributed
    distributed = is_distributed()
    facts: dict[str, Any] = {
        "rank": dist.get_rank() if distributed else 0,
        "world_size": dist.get_world_size() if distributed else 1,
        "backend": str(dist.get_backend()) if distributed else None,
    }
    facts.update(_ddp_facts(model))
    # Names as the Doctor reports them: the wrapped module's (no `module.` prefix).
    inner = model.module if facts.get("ddp") and hasattr(model, "module") else model
    facts["params"] = _param_fingerprints(inner) if inner is not None else None
    inputs: list[list[float]] = []
    labels: list[list[float]] = []
    grads_never: list[str] | None = None
    requires_grad: set[str] = set()
    backward_steps = 0
    if obs is not None:
        requires_grad = {n for n, m in getattr(obs, "params", {}).items() if m.requires_grad}
        for s in getattr(obs, "steps", []):
            if s.input is not None:
                inputs.append([s.step, *map(float, s.input.fingerprint)])
            if s.labels is not None:
                labels.append([s.step, *map(float, s.labels.fingerprint)])
            if s.sampled and s.backward_calls > 0:
                backward_steps += 1
                missing = set(s.grads_missing)
                grads_never = missing if grads_never is None else (grads_never & missing)
    facts["inputs"] = inputs
    facts["labels"] = labels
    facts["sampled_backward_steps"] = backward_steps
    facts["grads_never"] = sorted((grads_never or set()) & requires_grad) if grads_never is not None else None
    if isinstance(samplers, SamplerTracker):
        facts["samplers"] = samplers.facts()
    elif samplers is not None:
        facts["samplers"] = [dict(s) for s in samplers]
    else:
        facts["samplers"] = _samplers_from_gc()
    return facts


# --------------------------------------------------------------------------------------
# Gathering and merging
# --------------------------------------------------------------------------------------
def gather_reports(
    report: Any,
    model: nn.Module | None = None,
    *,
    samplers: "SamplerTracker | Sequence[dict[str, Any]] | None" = None,
    thresholds: dict[str, dict[str, float]] | None = None,
    checks: Any = None,
    group: Any = None,
    dst: int = 0,
) -> Report | None:
    """Call on EVERY rank, at the same point (it is a collective). ``report`` is this
    rank's ``Report``, or the ``Doctor`` itself (then its report, model and check set
    are used). ``checks``: the ``CheckSet`` whose DDP checks judge the gathered facts
    (``nndoctor check`` passes its own; ``thresholds`` is the older way to give their
    thresholds). Rank ``dst`` returns the merged ``Report``; the other ranks return None.
    Without an initialised process group, returns ``report`` unchanged (a Doctor's
    report, when given a Doctor)."""
    doctor = None
    if not isinstance(report, Report) and hasattr(report, "report") and hasattr(report, "model"):
        doctor = report
        report = doctor.report()
        model = model if model is not None else doctor.model
        if checks is None and thresholds is None:
            checks = getattr(doctor, "checkset", None)
    if not isinstance(report, Report):
        raise TypeError(f"gather_reports needs a Report or a Doctor, got {type(report).__name__}")
    if not is_distributed():
        return report
    dist = torch.distributed
    obs = report.observations
    stored = getattr(obs, "experiments", {}).get(LOCAL_FACTS) if obs is not None else None
    if stored is not None:  # taken by watch() at its end: parameters as the watch left them
        facts = dict(stored)
        if samplers is not None:
            facts["samplers"] = local_facts(None, None, samplers=samplers)["samplers"]
    else:
        facts = local_facts(model, obs, samplers=samplers)
    payload = {"rank": facts["rank"], "report": report.to_dict(), "facts": facts}
    rank = dist.get_rank()
    world = dist.get_world_size(group) if group is not None else dist.get_world_size()
    gathered: list[Any] | None = [None] * world if rank == dst else None
    dist.gather_object(payload, gathered, dst=dst, group=group)
    if rank != dst:
        return None
    merged = merge_rank_payloads([p for p in gathered if p is not None], thresholds=thresholds, checks=checks)
    merged.observations = obs
    merged.logdir = report.logdir
    merged.experiments = {**report.experiments, **merged.experiments}
    return merged


def _rank_label(ranks: Sequence[int]) -> str:
    ranks = sorted(ranks)
    if len(ranks) == 1:
        return f"rank {ranks[0]}"
    return "ranks " + ", ".join(str(r) for r in ranks)


def _merge_findings(per_rank: list[tuple[int, list[Finding]]], world: int) -> list[Finding]:
    """Findings with the same (check, severity, where, title), paired by their order of
    appearance on each rank, become one finding listing the ranks."""
    groups: dict[tuple[Any, ...], list[tuple[int, Finding]]] = {}
    for rank, findings in per_rank:
        seen: dict[tuple[Any, ...], int] = {}
        for f in findings:
            base = (f.check, f.severity.value, f.where, f.title)
            k = seen.get(base, 0)
            seen[base] = k + 1
            groups.setdefault((*base, k), []).append((rank, f))
    all_ranks = sorted(r for r, _ in per_rank)
    out = []
    for members in groups.values():
        ranks = sorted(r for r, _ in members)
        first = min(members, key=lambda m: m[0])[1]
        evidence = dict(first.evidence)
        evidence["ranks"] = ranks
        messages = {str(r): f.message for r, f in members}
        if len(set(messages.values())) > 1:
            evidence["messages_by_rank"] = messages
        message = first.message
        if world > 1 and ranks != all_ranks:
            message = f"on {_rank_label(ranks)}: {message}"
        out.append(Finding(
            check=first.check, severity=first.severity, title=first.title, message=message,
            fix=first.fix, where=first.where, step=first.step, evidence=evidence,
        ))
    return out


def merge_rank_payloads(payloads: Sequence[dict[str, Any]],
                        thresholds: dict[str, dict[str, float]] | None = None,
                        checks: Any = None) -> Report:
    """One report from every rank's ``{"rank", "report" (JSON dict), "facts"}``: merged
    findings, and the DDP checks evaluated on the gathered facts. Pure Python on plain
    data (the tests call it without a process group).

    ``checks``: the run's ``CheckSet`` (its DDP checks, with their thresholds, judge the
    facts). Without it, the DDP checks the ranks listed are built with ``thresholds``."""
    from ._checkset import CheckSet, judge
    from ._observations import Observations

    payloads = sorted(payloads, key=lambda p: p["rank"])
    reports = [(p["rank"], Report.from_dict(p["report"])) for p in payloads]
    world = max([len(payloads), *[int(p.get("facts", {}).get("world_size") or 1) for p in payloads]])
    findings = _merge_findings([(r, rep.findings) for r, rep in reports], world)

    # DDP checks: the check set's, judged on the gathered facts.
    if checks is None:  # no set given: those each rank ran or skipped (i.e. selected)
        listed = {cid for _, rep in reports for cid in rep.checks_run} | {
            s["check"] for _, rep in reports for s in rep.checks_skipped}
        everything = CheckSet.resolve(None, None, thresholds, where="merge_rank_payloads(thresholds=...)")
        checks = CheckSet.resolve([c.id for c in everything.distributed if c.id in listed], None, None,
                                  base=everything)
    elif thresholds is not None:
        raise TypeError("merge_rank_payloads(): pass either checks= or thresholds=, not both")
    ddp_checks = checks.distributed
    selected = [c.id for c in ddp_checks]
    facts = {
        "world_size": world,
        "backend": next((p["facts"].get("backend") for p in payloads if p.get("facts")), None),
        "ranks": [p["facts"] for p in payloads if p.get("facts")],
    }
    verdict = judge(ddp_checks, Observations(experiments={DISTRIBUTED_FACTS: facts}))
    ddp_findings, ddp_run, ddp_skipped = verdict
    findings = [f for f in findings if f.check not in selected] + list(ddp_findings)

    # A check counts as run when any rank ran it; skipped (first reason) otherwise.
    run: list[str] = []
    for _, rep in reports:
        run.extend(c for c in rep.checks_run if c not in selected)
    run.extend(ddp_run)
    run = list(dict.fromkeys(run))
    skipped: dict[str, dict[str, str]] = {}
    for _, rep in reports:
        for s in rep.checks_skipped:
            if s["check"] not in run and s["check"] not in selected:
                skipped.setdefault(s["check"], dict(s))
    for s in ddp_skipped:
        skipped.setdefault(s["check"], dict(s))

    first = reports[0][1] if reports else Report()
    merged = Report(
        findings=findings,
        checks_run=run,
        checks_skipped=list(skipped.values()),
        steps_observed=max((rep.steps_observed for _, rep in reports), default=0),
        model=first.model,
        script=first.script,
        experiments={DISTRIBUTED_FACTS: facts},
        notes=list(dict.fromkeys([*(n for _, rep in reports for n in rep.notes), *verdict.notes])),
    )
    return merged
