"""Where a watch's closed steps go: what a *step* is, decided once the script shows it.

A step is one ``optimizer.step()`` when the script uses an optimizer, and one backward
when it updates the weights by hand. Until the first optimizer step (or the first sign
of an update by hand) the two cannot be told apart: the micro-batch backwards of
gradient accumulation, or the closure evaluations inside the first LBFGS step, look
exactly like steps updated by hand. So each backward closes a *provisional* record,
held back here (not in ``Observations.steps``, not streamed to a live reporter):

* the first optimizer step folds the held records into the step it closes
  (:meth:`StepLedger.absorb`): one step, its loss the sum of the micro-batch losses that
  were backpropagated (or, for closure evaluations inside the step, the first one);
* an update by hand (a parameter's version counter moved, or the weight fingerprints of
  two held records differ once they reach the host) releases them as steps;
* the end of the watch, or too many held records, releases them too.

Committed records are kept in ``Observations.steps`` (thinned on long runs: sampled steps
always stay) and handed to the live reporter at the next sync.
"""

from __future__ import annotations

import math
from typing import Callable

from .._observations import Observations, StepRecord

# What the step was fed (the first micro-batch's, when micro-batches are folded into one
# optimizer step): the fields a held record lends to the step that absorbs it.
_FED = ("activations", "input", "labels", "loss_graph", "loss_values", "output_shape", "bn_batch_one",
        "stale_grad_norm")


class StepLedger:
    """Closed step records: held back while provisional, then committed."""

    # Held records beyond this many: whatever the script does, they are steps.
    max_held = 256

    def __init__(self, obs: Observations, *, max_records: int, holding: bool,
                 trace_steps_after_nonfinite: int,
                 on_sync: Callable[[Observations, list[StepRecord]], None] | None = None) -> None:
        self.obs = obs
        self.max_records = max_records
        self.holding = holding  # still unknown whether a step is an optimizer step
        self.held: list[StepRecord] = []
        self.on_sync = on_sync
        self.trace_until = -1  # steps up to this one are traced after a non-finite value
        self._trace_after = trace_steps_after_nonfinite
        self._last_armed_for = -1
        self._unstreamed: list[StepRecord] = []
        self._scanned = 0  # committed records already scanned for non-finite values
        self._thinned = False

    # -- closing, holding, committing ---------------------------------------------------
    def close(self, rec: StepRecord) -> None:
        if not self.holding:
            self._commit(rec)
            return
        self.held.append(rec)
        if len(self.held) > self.max_held:
            self.release()

    def release(self) -> None:
        """The held records are steps (weights updated by hand, or no optimizer ever)."""
        self.holding = False
        held, self.held = self.held, []
        for rec in held:
            self._commit(rec)

    def absorb(self, cur: StepRecord, *, closure: bool) -> None:
        """The first optimizer step: the held records were backwards of the step ``cur``
        closes (values already on the host). ``closure``: they ran inside the optimizer's
        ``step()`` (closure evaluations), so the step's loss is the first of them; else
        they were micro-batches whose backpropagated losses add up."""
        self.holding = False
        held, self.held = self.held, []
        if not held:
            return
        first = held[0]
        if closure:
            if first.loss is not None:
                cur.loss, cur.loss_terms = first.loss, first.loss_terms
        else:
            losses = [r.loss for r in held if r.loss is not None]
            if losses:
                cur.loss = math.fsum(losses) + (cur.loss or 0.0)
                cur.loss_terms += sum(r.loss_terms for r in held)
        cur.backward_calls += sum(r.backward_calls for r in held)
        for name in _FED:
            if getattr(first, name) not in (None, [], {}) and getattr(cur, name) in (None, [], {}):
                setattr(cur, name, getattr(first, name))
        cur.step = first.step
        cur.sampled = cur.sampled or first.sampled

    def _commit(self, rec: StepRecord) -> None:
        steps = self.obs.steps
        steps.append(rec)
        self._unstreamed.append(rec)
        if rec.sampled:
            self.obs.sampled_steps += 1
        if len(steps) > self.max_records:
            self._thin()

    def _thin(self) -> None:
        steps = self.obs.steps
        plain = [r for r in steps if not r.sampled]
        if len(plain) <= self.max_records:
            return  # cheap no-op until unsampled records exceed the bound
        older = {id(r) for i, r in enumerate(plain[: len(plain) // 2])
                 if i % 2 and not r.grad_nonfinite and (r.loss is None or math.isfinite(r.loss))}
        self.obs.steps = [r for r in steps if id(r) not in older]
        self._scanned = max(0, self._scanned - (len(steps) - len(self.obs.steps)))
        if not self._thinned:
            self._thinned = True
            self.obs.notes.append("long run: the older per-step records (loss, gradient norm) were thinned; "
                                  "every sampled step is kept")

    # -- after values reached the host ----------------------------------------------------
    def synced(self, step_now: int) -> None:
        """Values reached the host: release held records that show an update by hand,
        arm tracing after a non-finite value, stream the committed records."""
        if self.holding and _weights_moved(self.held):
            self.release()
        self._scan_nonfinite(self.obs.steps[self._scanned:], step_now)
        self._scanned = len(self.obs.steps)
        self._scan_nonfinite(self.held, step_now)
        if self.on_sync is not None and self._unstreamed:
            done, self._unstreamed = self._unstreamed, []
            try:
                self.on_sync(self.obs, done)
            except Exception as exc:
                self.obs.notes.append(f"live reporter failed and was switched off: {exc!r}")
                self.on_sync = None

    def arm(self, step: int) -> None:
        """The per-step alarm saw a non-finite loss or gradient at ``step`` (not sampled):
        trace the next steps now (the scan at the next sync will not arm again for it)."""
        if step > self._last_armed_for:
            self._last_armed_for = step
            self.trace_until = max(self.trace_until, step + self._trace_after)

    def _scan_nonfinite(self, records: list[StepRecord], step_now: int) -> None:
        """The first non-finite loss or gradient seen on a step arms full tracing of the
        next steps (the one that went bad may not have been sampled), once per bad step."""
        for rec in records:
            bad = bool(rec.grad_nonfinite) or (rec.loss is not None and not math.isfinite(rec.loss))
            if bad and rec.step > self._last_armed_for:
                self._last_armed_for = rec.step
                self.trace_until = max(self.trace_until, step_now + self._trace_after)


def _weights_moved(held: list[StepRecord]) -> bool:
    """Two held records whose weight fingerprints (taken at their first backward) differ:
    the weights changed between those backwards without an optimizer step."""
    prints = [r.weight_fingerprint for r in held if r.weight_fingerprint is not None]
    return any(p != prints[0] for p in prints[1:])


__all__ = ["StepLedger"]
