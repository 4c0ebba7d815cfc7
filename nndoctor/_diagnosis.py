"""Differential diagnosis: which finding is the root cause, which findings are its symptoms
(pure Python, no torch). The link table itself is ``nndoctor._causal_links``.

The checks judge one quantity each, so one bug raises several findings: inputs in 0-255
make the activations explode, the updates huge and the tiny batch unfittable. Sorted by
severity alone the symptoms come first and point the user elsewhere. This module holds an
explicit table of causal links, ``LINKS``: *cause X explains symptom Y when <condition on
the two findings>, because <one line>*. From it, ``diagnose`` ranks the candidate root
causes and orders the findings: the most likely root cause first, then the findings it
explains (each with ``finding.explained_by = <cause id>``), then the rest.

Ranking. A finding (warning or error) that another present finding explains is not a
root-cause candidate unless nothing else is left (a cycle). Candidates are ranked by
1. the worst severity among the candidate and everything it explains (a warning that
   explains an error ranks with errors: 0-255 inputs explain activation-std errors),
2. whether the check can name a cause at all (``SYMPTOM_ONLY`` checks, such as
   loss-not-decreasing, only describe an outcome; they lead only when nothing explains them),
3. the candidate's own severity, 4. how many other checks it explains.
The best candidate and the findings it explains (transitively) form the first group; the
ranking repeats on what is left. Info findings never lead (they are often intended), but
they are marked as explained when a cause in a group explains them.

Confidence. ``high``: a cause-naming check that is an error or explains at least one other
finding; ``medium``: a cause-naming warning that explains nothing, or a head picked from a
cycle; ``low``: a symptom-only check leads (no cause was found).

Exit code. The exit status stays by severity over *all* findings (CONTRACT §2), not by
the cause's own severity: when the root cause is a warning and the symptoms it explains
are errors, errors exist and the exit status is still 1. Ordering never hides a finding.

Confirmation. ``Diagnosis.confirmed`` is None until an intervention (re-running a probe
with the proposed fix applied on a copy) fills it with ``Diagnosis.confirm(...)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

# The table of causal links (data) lives in _causal_links; the summaries below read the
# same evidence predicates.
from ._causal_links import (  # noqa: F401  (ANY re-exported)
    ANY, LINKS, SYMPTOM_ONLY, Link, _ev, _num, explaining_links, inputs_unscaled, loss_squashed,
    loss_unbounded, lr_too_high, lr_too_high_lower_fits, ratio_high,
)
from ._report import Finding, Severity

__all__ = ["Link", "LINKS", "Diagnosis", "diagnose", "candidates", "SYMPTOM_ONLY", "explaining_links",
           "DEMOTED_WHEN_EXPLAINED", "candidate_findings", "judge_intervention"]


# ------------------------------------------------------------------------------ summaries
_ABBREVIATIONS = ("e.g", "i.e", "etc", "vs", "approx")


def _first_sentence(text: str) -> str:
    """Up to the first '. ' or '; ' outside brackets and code, not after 'e.g.'."""
    text = (text or "").strip()
    depth, code = 0, False
    for i, ch in enumerate(text):
        if ch == "`":
            code = not code
        elif code:
            continue
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(0, depth - 1)
        elif ch in ".;" and depth == 0 and text[i + 1 : i + 2] == " ":
            if ch == "." and text[:i].lower().endswith(_ABBREVIATIONS):
                continue
            return text[:i]
    return text.rstrip(".")


def _lower_first(text: str) -> str:
    """'Divide the LR' -> 'divide the LR', keeping names such as 'CrossEntropyLoss'."""
    if len(text) > 1 and text[0].isupper() and text[1].islower():
        return text[0].lower() + text[1:]
    return text


def _fmt(value: Any) -> str:
    v = _num(value)
    return f"{v:.3g}" if math.isfinite(v) else str(value)


def _summary(f: Finding) -> str:
    """One sentence: the mechanism and the fix."""
    c = f.check
    if c == "input-normalization" and inputs_unscaled(f):
        return (f"The inputs are not normalised (mean {_fmt(_ev(f, 'mean'))}, std {_fmt(_ev(f, 'std'))}), "
                "which scales every activation, gradient and update; standardise them with the training "
                "split's mean and std (divide 0-255 pixels by 255 first).")
    if c == "input-normalization":
        return ("The inputs reaching the model are all zeros or constant, so there is nothing to learn from; "
                "print a batch right before the model and check the data loading and transforms.")
    if c == "loss-input-format" and loss_squashed(f):
        return (f"The model's outputs go through a final {_ev(f, 'fed_by')} before a loss that expects raw "
                "logits, which squashes them twice and shrinks the gradients; remove the final "
                f"{_ev(f, 'fed_by')} and feed the logits.")
    if c == "loss-input-format" and loss_unbounded(f):
        return ("NLLLoss is fed raw outputs instead of log-probabilities, so the loss is unbounded below; "
                "apply log_softmax first or use CrossEntropyLoss on the logits.")
    if c == "grad-not-zeroed":
        return ("Gradients are never reset, so every step applies the sum of all past gradients; call "
                "optimizer.zero_grad() once per update (or set p.grad = None after a hand-written update).")
    if c == "frozen-layer" and _ev(f, "mechanism") == "optimizer_over_other_model":
        return ("The optimizer holds none of this model's parameters (it was built over another instance), so "
                "the model never updates; build the optimizer over model.parameters() of the model you train.")
    if c == "frozen-layer" and _ev(f, "mechanism") == "step_before_backward":
        return ("optimizer.step() runs before loss.backward(), so every step applies gradients already cleared "
                "and nothing updates; call loss.backward() first, then optimizer.step().")
    if c == "frozen-layer" and _ev(f, "kind") == "not_in_optimizer":
        return ("Trainable parameters are in no optimizer, so they never update; build the optimizer after the "
                "model exists, over model.parameters().")
    if c == "frozen-layer" and _ev(f, "kind") == "no_gradient":
        return ("Layers run in the forward pass but no gradient reaches them, so they never learn; remove the "
                ".detach()/.data/no_grad/numpy round-trip between them and the loss.")
    if c == "frozen-layer" and _ev(f, "kind") == "never_changed":
        return ("Parameters get gradients but never change, so nothing learns; check the learning rate of their "
                "param group and that the optimizer holds this model's parameters.")
    if c == "frozen-layer" and _ev(f, "kind") == "all_frozen":
        return "Every parameter has requires_grad=False, so nothing trains; unfreeze the parameters that must learn."
    if c == "update-ratio" and _ev(f, "mechanism") == "weight_decay":
        return (f"Weight decay ({_fmt(_ev(f, 'weight_decay'))}) removes {_fmt(_ev(f, 'decay_per_step'))} of the "
                "weights every step, so the decay, not the gradient, drives them; lower weight_decay (5e-4 for "
                "SGD, 0.01-0.1 with AdamW).")
    if c == "update-ratio" and _ev(f, "mechanism") == "clipped":
        return (f"Gradient clipping scales the gradients to {_fmt(_ev(f, 'clip_factor'))} of their norm before "
                "every step, so the updates are too small to matter; raise clip_grad_norm_'s max_norm (or "
                "remove it).")
    if c == "update-ratio":
        word = "high" if ratio_high(f) else "low"
        fix = "lower it (x0.1) or add warm-up/clipping" if word == "high" else "raise it (x10)"
        return (f"Each update changes the weights by {_fmt(_ev(f, 'median_ratio'))} of their norm (~1e-3 is "
                f"healthy): the learning rate is too {word}; {fix}.")
    if c == "lr-sweep":
        word = "high" if lr_too_high(f) else "low"
        return f"The LR sweep shows your learning rate ({_fmt(_ev(f, 'base_lr'))}) is too {word}; {_lower_first(_first_sentence(f.fix))}."
    if c == "weight-init":
        kind = _ev(f, "kind") or "wrong"
        what = "all equal, so the units never differentiate" if kind == "symmetric" else f"too {kind} for their fan-in"
        return (f"The initial weights are {what}; use Kaiming (ReLU) or Xavier (tanh/sigmoid) init, "
                "or PyTorch's defaults.")
    if c == "nan-trace" and _ev(f, "direction") == "input":
        return (f"The input batch already contains NaN/Inf, so everything computed from it is meaningless; "
                f"{_lower_first(_first_sentence(f.fix))}.")
    if c == "nan-trace":
        where = f.where or "the model"
        return (f"Non-finite values start in `{where}`, and everything computed after them is meaningless; "
                f"{_lower_first(_first_sentence(f.fix))}.")
    text = f"{_first_sentence(f.message)}; {_lower_first(_first_sentence(f.fix))}."
    return text[0].upper() + text[1:] if text[0].islower() else text


# ------------------------------------------------------------------------------ diagnosis
@dataclass
class Diagnosis:
    """The most likely root cause (CONTRACT §6). ``explains``: the check ids it explains;
    ``because``: symptom id -> the link's one-line reason; ``confirmed``: filled by an
    intervention (``confirm``), None when none ran."""

    cause: str
    confidence: str
    explains: list[str] = field(default_factory=list)
    summary: str = ""
    confirmed: dict[str, Any] | None = None
    because: dict[str, str] = field(default_factory=dict)

    def __setattr__(self, name: str, value: Any) -> None:
        # The confidence follows the intervention, however ``confirmed`` gets set (here,
        # or by Report.sort carrying a confirmation over to a recomputed diagnosis): a
        # confirmed cause is "high"; "not confirmed" lowers the ranking's confidence a step.
        object.__setattr__(self, name, value)
        if name == "confidence":
            object.__setattr__(self, "_ranked_confidence", value)
        if name in ("confidence", "confirmed") and "_ranked_confidence" in self.__dict__:
            object.__setattr__(self, "confidence",
                               _confidence_after(self.__dict__["_ranked_confidence"], self.__dict__.get("confirmed")))

    def confirm(self, intervention: str, probe: str, before: str, after: str, **more: Any) -> None:
        """Record the intervention that applied the proposed fix on a copy and re-ran the
        probe that showed the symptom; ``outcome`` in ``more``: "confirmed" (the default;
        the confidence becomes high), "not confirmed" (the fix did not remove the symptom;
        the confidence drops a step) or "inconclusive" (the probe did not show it)."""
        more.setdefault("outcome", "confirmed")
        self.confirmed = {"intervention": intervention, "probe": probe, "before": before, "after": after, **more}

    def to_dict(self) -> dict[str, Any]:
        return {"cause": self.cause, "confidence": self.confidence, "explains": list(self.explains),
                "confirmed": self.confirmed, "summary": self.summary, "because": dict(self.because)}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "Diagnosis | None":
        if not data:
            return None
        return cls(cause=data["cause"], confidence=data.get("confidence", "low"),
                   explains=list(data.get("explains") or []), summary=data.get("summary") or "",
                   confirmed=data.get("confirmed"), because=dict(data.get("because") or {}))


_LEVELS = ("low", "medium", "high")


def _confidence_after(ranked: str, confirmed: dict[str, Any] | None) -> str:
    if not confirmed or ranked not in _LEVELS:
        return ranked
    outcome = confirmed.get("outcome", "confirmed")
    if outcome == "confirmed":
        return "high"
    if outcome == "not confirmed":
        return _LEVELS[max(0, _LEVELS.index(ranked) - 1)]
    return ranked  # inconclusive: the probe did not show the symptom; nothing learned


# ------------------------------------------------------------------------------ interventions
def _losses(curve: Any) -> list[float]:
    raw = curve.get("losses") if isinstance(curve, dict) else getattr(curve, "losses", None)
    return [_num(v) for v in raw or []]


def _reached(losses: list[float], floor: float, target: float) -> int | None:
    """The first step whose loss is within ``target`` of the floor (None: never, or the
    loss turned non-finite first)."""
    for i, v in enumerate(losses):
        if not math.isfinite(v):
            return None
        if v - floor <= target:
            return i
    return None


def _fit_words(losses: list[float], at: int | None) -> str:
    if at is not None:
        return f"fitted in {at} steps"
    bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    if bad is not None:
        return f"not fitted: the loss became non-finite at step {bad}"
    if len(losses) >= 2:
        return f"not fitted in {len(losses) - 1} steps (loss {_fmt(losses[0])} -> {_fmt(losses[-1])})"
    return "not fitted"


# The fix must take the tiny batch to a common target both runs are judged against:
# ``loss_fraction`` of the smaller starting loss above the floor (the unfixed run may
# start far higher: 0-255 inputs give huge initial losses). When neither reaches it, the
# fix must leave at most this share of the unfixed run's final loss (above the floor);
# when both reach it, it must get there in at most this share of the steps (and 5 fewer).
INTERVENTION_MAX_LEFT = 0.5
INTERVENTION_SPEEDUP = 0.5


def _judge_pair(before: Any, after: Any, floor: float, loss_fraction: float) -> tuple[str, str, str]:
    """(outcome, before in words, after in words) of one before/after pair."""
    lb, la = _losses(before), _losses(after)
    starts = [v - floor for v in (lb[:1] + la[:1]) if math.isfinite(v)]
    if not lb or not la or not starts:
        return "inconclusive", "not measured", "not measured"
    # A loss below its floor is unbounded (raw outputs fed to NLLLoss): "fitting" it
    # means nothing; a fix that makes it bounded again is the confirmation.
    below = [v for v in lb if math.isfinite(v) and v < floor - 1e-6]
    if below:
        bounded = all(math.isfinite(v) and v >= floor - 1e-6 for v in la)
        return ("confirmed" if bounded else "inconclusive",
                f"unbounded: the loss fell below its floor {_fmt(floor)} (to {_fmt(min(below))})",
                f"bounded: loss {_fmt(la[0])} -> {_fmt(la[-1])}" if bounded else _fit_words(la, None))
    target = max(float(loss_fraction), 0.0) * max(min(starts), 0.0)
    fb, fa = _reached(lb, floor, target), _reached(la, floor, target)
    before_words, after_words = _fit_words(lb, fb), _fit_words(la, fa)
    end_b, end_a = lb[-1], la[-1]
    if fb is not None:
        # the tiny batch is fitted without the fix: it does not show the symptom
        if fa is not None and fa <= INTERVENTION_SPEEDUP * fb and fb - fa >= 5:
            return "confirmed", before_words, after_words
        return "inconclusive", before_words, after_words
    if fa is not None:
        return "confirmed", before_words, after_words
    if not math.isfinite(end_a):
        return "not confirmed", before_words, after_words
    if not math.isfinite(end_b):  # the fix must do more than avoid the blow-up: real progress
        ok = end_a - floor <= INTERVENTION_MAX_LEFT * (la[0] - floor)
    else:
        ok = end_a - floor <= INTERVENTION_MAX_LEFT * (end_b - floor)
    if ok:
        after_words += f" (was {_fmt(end_b)} without the fix)"
    return ("confirmed" if ok else "not confirmed"), before_words, after_words


def _worse(after: Any, before: Any) -> bool:
    la, lb = _losses(after), _losses(before)
    return bool(la and lb and math.isfinite(la[-1]) and math.isfinite(lb[-1]) and la[-1] > lb[-1])


def judge_intervention(trial: Any) -> dict[str, Any]:
    """Did the fix remove the symptom? A pure function of an ``InterventionTrial``
    (``nndoctor/_probe_records.py``; a plain dict of its shape works too). Both curves of
    a pair are judged against one target, ``loss_fraction`` x the smaller starting loss
    above the loss's floor (the unfixed run may start far higher).

    - ``confirmed``: the fixed copy reaches the target and the unfixed one does not; or
      neither does, but the fixed one ends with at most half the unfixed one's loss above
      the floor (or, where the unfixed one blew up, removes at least half of its own
      starting loss above the floor); or both reach
      it and the fix needs at most half the steps (and 5 fewer); or the unfixed loss is
      unbounded (below its floor) and the fixed one is not.
    - ``inconclusive``: the unfixed copy reaches the target too, at a similar pace: the
      tiny batch does not show the symptom, so the fix has nothing to remove.
    - ``not confirmed``: the symptom is there and the fix does not remove it.

    The pair measured with the user's optimizer decides; when it does not confirm and the
    same pair measured with Adam(lr=1e-3) does, that one is reported (a fix may need a
    step size of its own: standardised inputs at an LR tuned for 0-255 ones); when the fix
    made the user's run worse and that pair shows no symptom at all, the outcome is
    "inconclusive". Returns the
    fields of ``Diagnosis.confirm`` (intervention, probe, before, after, outcome) and the
    cause."""
    from ._probe_records import InterventionTrial

    t = InterventionTrial.coerce(trial)
    floor = _num(t.loss_floor)
    floor = floor if math.isfinite(floor) else 0.0
    outcome, before, after = _judge_pair(t.before, t.after, floor, t.loss_fraction)
    intervention = t.intervention
    if outcome != "confirmed" and t.retry_before is not None and t.retry_after is not None:
        retry = _judge_pair(t.retry_before, t.retry_after, floor, t.loss_fraction)
        if retry[0] == "confirmed":
            outcome, before, after = retry
            intervention += " (trained with Adam(lr=1e-3))"
        elif retry[0] == "inconclusive" and _worse(t.after, t.before):
            # The fix made the user's run worse, and with a step size of its own the tiny
            # batch shows no symptom: the signature of an LR tuned for the unfixed setup
            # (0-255 inputs), not of a wrong cause.
            outcome = "inconclusive"
    return {"intervention": intervention, "probe": t.probe, "before": before, "after": after,
            "outcome": outcome, "cause": t.cause}


@dataclass
class _Group:
    heads: list[Finding]
    explained: list[Finding]
    from_cycle: bool
    reasons: dict[str, str]


def _sev_key(f: Finding) -> tuple:
    return (-f.severity.rank, f.check, f.where or "")


def _groups(findings: Sequence[Finding]) -> tuple[list[_Group], list[Finding]]:
    """Greedy ranking of root causes over the warning/error findings; returns the groups
    in rank order and the findings left over (info findings that nothing explains)."""
    idx = {id(f): i for i, f in enumerate(findings)}
    pool = [f for f in findings if f.severity.rank >= Severity.WARNING.rank]
    edges: dict[int, list[tuple[Finding, str]]] = {}
    for c in pool:
        for s in findings:
            links = explaining_links(c, s)
            if links:
                edges.setdefault(id(c), []).append((s, links[0].because))
    remaining = {id(f) for f in pool}

    def reach(starts: list[Finding], within: set[int]) -> list[tuple[Finding, str]]:
        seen: set[int] = {id(f) for f in starts}
        out: list[tuple[Finding, str]] = []
        stack = list(starts)
        while stack:
            node = stack.pop()
            for s, because in edges.get(id(node), []):
                if id(s) in seen or id(s) not in within:
                    continue
                seen.add(id(s))
                out.append((s, because))
                stack.append(s)
        return out

    groups: list[_Group] = []
    while remaining:
        live = [f for f in pool if id(f) in remaining]
        explained_now = {id(s) for c in live for s, _ in edges.get(id(c), []) if id(s) in remaining}
        cands = [f for f in live if id(f) not in explained_now]
        from_cycle = not cands
        cands = cands or live

        def score(f: Finding) -> tuple:
            r = [s for s, _ in reach([f], remaining)]
            worst = max([f.severity.rank, *(s.severity.rank for s in r)])
            return (worst, f.check not in SYMPTOM_ONLY, f.severity.rank,
                    len({s.check for s in r}), -idx[id(f)])

        best = max(cands, key=score)
        heads = sorted([f for f in cands if f.check == best.check], key=_sev_key)
        found = reach(heads, remaining)
        for f in heads:
            remaining.discard(id(f))
        for s, _ in found:
            remaining.discard(id(s))
        groups.append(_Group(heads, [s for s, _ in found], from_cycle, {}))
        for s, because in found:
            groups[-1].reasons.setdefault(s.check, because)
    # Info findings: explained by the first group whose members explain them.
    placed = {id(f) for g in groups for f in [*g.heads, *g.explained]}
    rest: list[Finding] = []
    for f in findings:
        if id(f) in placed:
            continue
        for g in groups:
            hit = next((because for m in [*g.heads, *g.explained] for s, because in edges.get(id(m), [])
                        if s is f), None)
            if hit is not None:
                g.explained.append(f)
                g.reasons.setdefault(f.check, hit)
                break
        else:
            rest.append(f)
    return groups, rest


def candidates(findings: Sequence[Finding]) -> list[str]:
    """The root-cause candidates' check ids, most likely first (for interventions that
    try the leading candidates in turn)."""
    groups, _ = _groups(sorted(findings, key=_sev_key))
    return [g.heads[0].check for g in groups]


def candidate_findings(findings: Sequence[Finding]) -> list[Finding]:
    """The head finding of each root-cause candidate, most likely first (the evidence an
    intervention needs to pick its fix)."""
    groups, _ = _groups(sorted(findings, key=_sev_key))
    return [g.heads[0] for g in groups]


# Symptoms whose *advice* is wrong while another cause stands: the LR sweep tunes a model
# crippled by that cause (softmax before CrossEntropyLoss makes x10 look better, 0-255
# inputs make x0.1 look better). Explained by any cause but these, an lr-sweep finding is
# demoted to an "inconclusive" info that points at the cause. The causes listed here say
# the same thing as the sweep (the learning rate), so they keep its verdict.
DEMOTED_WHEN_EXPLAINED: dict[str, frozenset[str]] = {
    "lr-sweep": frozenset({"lr-sweep", "update-ratio"}),
}
_AS_JUDGED = "as_judged"  # evidence key: the check's own verdict, before a demotion


def _restore(f: Finding) -> None:
    """Undo an earlier demotion (the diagnosis is recomputed on every sort or merge)."""
    judged = (f.evidence or {}).pop(_AS_JUDGED, None)
    f.evidence.pop("inconclusive_because", None)
    if isinstance(judged, dict):
        f.severity = Severity.parse(judged.get("severity", f.severity))
        f.message = judged.get("message", f.message)
        f.fix = judged.get("fix", f.fix)


def _demote(f: Finding, cause: Finding) -> None:
    f.evidence[_AS_JUDGED] = {"severity": f.severity.value, "message": f.message, "fix": f.fix}
    f.evidence["inconclusive_because"] = cause.check
    f.severity = Severity.INFO
    f.message = (f"Inconclusive while `{cause.check}` stands: the sweep tuned a model that this cause "
                 f"cripples, so its verdict says nothing about your learning rate. (It measured: "
                 f"{f.message})")
    f.fix = (f"Fix `{cause.check}` first ({_lower_first(_first_sentence(cause.fix))}), then re-run the "
             "checkup to judge the learning rate.")


def _soften(f: Finding) -> None:
    """An overfit failure judged "a bug, not tuning" while the LR sweep fitted the samples at
    x0.1: the model, inputs and labels can learn, so it is the learning rate's symptom, a
    warning (undone by ``_restore`` like a demotion)."""
    f.evidence[_AS_JUDGED] = {"severity": f.severity.value, "message": f.message, "fix": f.fix}
    f.severity = Severity.WARNING
    f.message = (f"{f.message} (The LR sweep fitted samples of this batch at x0.1 of your learning rate: the "
                 f"model, inputs and labels can learn; your learning rate is what stalls it.)")


def diagnose(findings: list[Finding]) -> Diagnosis | None:
    """Set ``explained_by`` on every explained finding, reorder ``findings`` in place
    (root cause, what it explains, then the rest), and return the diagnosis (None when
    no finding is a warning or an error). A symptom whose advice the cause makes wrong
    (``DEMOTED_WHEN_EXPLAINED``) becomes an "inconclusive" info; recomputing the
    diagnosis first restores the check's own verdict, so this is idempotent."""
    for f in findings:
        f.explained_by = None
        if _AS_JUDGED in (f.evidence or {}):
            _restore(f)
    base = sorted(findings, key=_sev_key)
    groups, rest = _groups(base)
    ordered: list[Finding] = []
    for g in groups:
        for s in g.explained:
            s.explained_by = g.heads[0].check
            keep = DEMOTED_WHEN_EXPLAINED.get(s.check)
            if keep is not None and s.explained_by not in keep and s.severity is not Severity.INFO:
                _demote(s, g.heads[0])
            elif (s.check == "overfit-tiny-batch" and s.severity is Severity.ERROR
                  and any(lr_too_high_lower_fits(h) for h in g.heads)):
                _soften(s)
        ordered.extend(g.heads)
        ordered.extend(sorted(g.explained, key=_sev_key))
    ordered.extend(sorted(rest, key=_sev_key))
    findings[:] = ordered
    if not groups:
        return None
    g = groups[0]
    head = g.heads[0]
    explains = list(dict.fromkeys(s.check for s in sorted(g.explained, key=_sev_key)))
    if head.check in SYMPTOM_ONLY:
        confidence = "low"
    elif g.from_cycle or (head.severity is not Severity.ERROR and not g.explained):
        confidence = "medium"
    else:
        confidence = "high"
    return Diagnosis(cause=head.check, confidence=confidence, explains=explains,
                     summary=_summary(head), because={k: g.reasons[k] for k in explains if k in g.reasons})
