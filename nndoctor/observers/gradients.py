"""Gradient norms: the L2 norm of every parameter's gradient in one ``_foreach_norm``
call on every step (kept per parameter on sampled steps only), and the gradients already
present at the first backward after an update (gradients not zeroed). On sampled steps a
post-accumulate-grad hook per parameter also keeps the norm each gradient had when the
backward finished, so gradients that existed but were wiped before the optimizer step
(``zero_grad()`` between ``backward()`` and ``step()``) are told apart from gradients that
never arrived (a cut graph)."""

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

    def __init__(self, recorder: Any) -> None:
        super().__init__(recorder)
        self._at_backward: dict[str, torch.Tensor] = {}

    def step_hooks(self, model: Any) -> list[Any]:
        # Sampled steps only (removed when the step ends): one 0-d norm per parameter
        # whose gradient was accumulated, kept on the device until the optimizer step.
        self._at_backward = {}
        handles = []
        store = self._at_backward
        for name, p in self.rec.params:
            if not p.requires_grad or not hasattr(p, "register_post_accumulate_grad_hook"):
                continue

            def hook(param: torch.Tensor, name: str = name) -> None:
                try:
                    if param.grad is not None:
                        with torch.no_grad():
                            store[name] = torch.linalg.vector_norm(param.grad.detach()).float()
                except Exception:  # a hook never raises into the user's backward
                    pass

            handles.append(p.register_post_accumulate_grad_hook(hook))
        return handles

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
        if cur.backward_calls:  # else a closure optimizer: measured at its first evaluation
            self._measure(cur)
        seen = dict(self._at_backward)
        self._at_backward.clear()  # the hooks hold this dict: clear it in place
        if cur.sampled and seen:
            names = list(seen)
            vec = torch.stack([seen[n] for n in names])

            def sink(v: list[float]) -> None:
                cur.grad_norms_at_backward = dict(zip(names, v))

            self.add(vec, sink)

    def closure_backward(self, cur: StepRecord) -> None:
        self._measure(cur)

    def release(self) -> None:
        self._at_backward.clear()

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
        if not sampled:
            self.rec.alarm.watch(norms)

        def sink(v: list[float]) -> None:
            bad = [n for n, x in zip(names, v) if not math.isfinite(x)]
            cur.grad_nonfinite = bad
            cur.grad_total = math.inf if bad else math.sqrt(sum(x * x for x in v))
            if sampled:
                cur.grad_norms = dict(zip(names, v))

        self.add(norms, sink)
