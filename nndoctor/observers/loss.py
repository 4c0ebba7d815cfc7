"""The loss value of every step: what ``backward()`` was called on (unscaled when a
GradScaler multiplied it), or what the user hands to ``log_loss``. A step with several
backwards before its optimizer step (gradient accumulation: ``(loss / n).backward()`` per
micro-batch) gets the sum of what was backpropagated, the loss whose gradient the step
applies; a closure optimizer's re-evaluations inside ``step()`` (LBFGS line search) are
not added: the step's loss is its first evaluation."""

from __future__ import annotations

from typing import Any

import torch

from .._observations import StepRecord
from ._base import Observer


class LossObserver(Observer):
    name = "loss"
    feeds = ("loss-not-decreasing", "chance-level-loss", "nan-trace")
    every_step = True

    def __init__(self, recorder: Any) -> None:
        super().__init__(recorder)
        self._explicit: dict[int, StepRecord] = {}  # the steps given log_loss(), by id
        self._counted: StepRecord | None = None  # the step that has a backward's loss queued
        self._scaled: tuple[int, Any] | None = None  # (id of the scaled loss, scale tensor)

    def on_scaled(self, scaled_loss: torch.Tensor, scaler: Any) -> None:
        self._scaled = (id(scaled_loss), getattr(scaler, "_scale", None))

    def log(self, cur: StepRecord, loss: Any) -> None:
        self._explicit[id(cur)] = cur
        cur.loss_terms = 1
        if not isinstance(loss, torch.Tensor):
            cur.loss = float(loss)
            return

        def sink(v: list[float]) -> None:
            cur.loss = v[0]

        self.add(loss.detach().reshape(-1)[:1].float(), sink)

    def _logged(self, cur: StepRecord) -> bool:
        return self._explicit.get(id(cur)) is cur

    def before_backward(self, cur: StepRecord, loss: Any, first_after_update: bool) -> None:
        scaled, self._scaled = self._scaled, None
        if loss is None or loss.numel() != 1 or self._logged(cur):
            return
        if self.rec.in_optimizer_step and self._counted is cur:
            return  # a closure re-evaluation inside the optimizer's step
        self._counted = cur
        value = loss.detach().reshape(())
        if not cur.sampled:
            self.rec.alarm.watch(value)
        if scaled is not None and scaled[0] == id(loss) and scaled[1] is not None:
            # GradScaler multiplied the loss: report it in the user's units (a device
            # division, no sync).
            scale = scaled[1].detach().reshape(()).to(value.dtype)

            def scaled_sink(v: list[float]) -> None:
                if not self._logged(cur):
                    cur.loss = v[0] + (cur.loss or 0.0)
                    cur.loss_terms += 1
                    cur.loss_scale = v[1]

            self.add(torch.stack([value / scale, scale]), scaled_sink)
            return

        def sink(v: list[float]) -> None:
            if not self._logged(cur):
                cur.loss = v[0] + (cur.loss or 0.0)
                cur.loss_terms += 1

        self.add(value, sink)

    def release(self) -> None:
        self._scaled = None
        self._counted = None
