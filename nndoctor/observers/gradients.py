"""Gradient norms: the L2 norm of every parameter's gradient in one ``_foreach_norm``
call on every step (kept per parameter on sampled steps only), and the gradients already
present at the first backward after an update (gradients not zeroed)."""

from __future__ import annotations

import math
from typing import Any

import torch

from .._observations import StepRecord
from ._base import Observer


class GradientObserver(Observer):
    name = "gradients"
    feeds = ("exploding-gradient", "vanishing-gradient", "nan-trace", "frozen-layer", "grad-not-zeroed")
    every_step = True

    def before_backward(self, cur: StepRecord, loss: Any, first_after_update: bool) -> None:
        if not cur.sampled:
            return
        rec = self.rec
        if first_after_update:
            # Gradients of parameters that no optimizer updates are irrelevant here
            # (frozen-layer reports those parameters).
            params = rec.obs.params
            stale = [p.grad.detach() for n, p in rec.params if p.grad is not None and p.requires_grad
                     and params[n].in_optimizer is not False]
            if not stale:
                cur.stale_grad_norm = 0.0
                return
            with torch.no_grad():
                total = torch.stack(torch._foreach_norm(stale)).float().norm()

            def sink(v: list[float]) -> None:
                cur.stale_grad_norm = v[0]

            self.add(total, sink)
        elif not rec.optimizer_mode and rec.backwards_in_step == 1:
            # Hand-written updates through `p.data` do not bump version counters:
            # fingerprint the weights (one norm per tensor) and the gradients already
            # present; whether the weights changed between two steps' backwards is
            # decided on the host at the end (_derive.infer_stale_gradients).
            self._fingerprint(cur)

    def _fingerprint(self, cur: StepRecord) -> None:
        params = self.rec.params
        weights = [p.detach() for _, p in params if p.requires_grad and p.is_floating_point()]
        if not weights:
            return
        grads = [p.grad.detach() for _, p in params if p.grad is not None and p.requires_grad]
        with torch.no_grad():
            fp = torch.stack(torch._foreach_norm(weights)).float()
            g = (torch.stack(torch._foreach_norm(grads)).float().norm().reshape(1) if grads
                 else torch.zeros(1, device=fp.device))
            vec = torch.cat([g, fp])

        def sink(v: list[float]) -> None:
            cur.grad_before_backward, cur.weight_fingerprint = v[0], v[1:]

        self.add(vec, sink)

    def after_backward(self, cur: StepRecord) -> None:
        self._measure(cur)

    def before_update(self, cur: StepRecord) -> None:
        self._measure(cur)

    def _measure(self, cur: StepRecord) -> None:
        names, grads, missing = [], [], []
        for name, p in self.rec.params:
            g = p.grad
            if g is not None:
                names.append(name)
                grads.append(g.detach())
            elif p.requires_grad:
                missing.append(name)
        sampled = cur.sampled
        if sampled:
            cur.grads_missing = missing
        if not grads:
            cur.grad_norms = {}
            return
        with torch.no_grad():
            norms = torch.stack(torch._foreach_norm(grads))

        def sink(v: list[float]) -> None:
            bad = [n for n, x in zip(names, v) if not math.isfinite(x)]
            cur.grad_nonfinite = bad
            cur.grad_total = math.inf if bad else math.sqrt(sum(x * x for x in v))
            if sampled:
                cur.grad_norms = dict(zip(names, v))

        self.add(norms, sink)
