"""The loss value of every step: the tensor ``backward()`` is called on (unscaled when a
GradScaler multiplied it), or what the user hands to ``log_loss``."""

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
        self.explicit_steps: set[int] = set()  # steps whose loss came from log_loss()
        self._scaled: tuple[int, Any] | None = None  # (id of the scaled loss, scale tensor)

    def on_scaled(self, scaled_loss: torch.Tensor, scaler: Any) -> None:
        self._scaled = (id(scaled_loss), getattr(scaler, "_scale", None))

    def log(self, cur: StepRecord, loss: Any) -> None:
        self.explicit_steps.add(cur.step)
        if not isinstance(loss, torch.Tensor):
            cur.loss = float(loss)
            return

        def sink(v: list[float]) -> None:
            cur.loss = v[0]

        self.add(loss.detach().reshape(-1)[:1].float(), sink)

    def before_backward(self, cur: StepRecord, loss: Any, first_after_update: bool) -> None:
        if (loss is None or loss.numel() != 1 or self.rec.backwards_in_step != 1
                or cur.step in self.explicit_steps):
            return
        value = loss.detach().reshape(())
        scaled, self._scaled = self._scaled, None
        if scaled is not None and scaled[0] == id(loss) and scaled[1] is not None:
            # GradScaler multiplied the loss: report it in the user's units (a device
            # division, no sync).
            scale = scaled[1].detach().reshape(()).to(value.dtype)

            def scaled_sink(v: list[float]) -> None:
                if cur.loss is None:
                    cur.loss, cur.loss_scale = v[0], v[1]

            self.add(torch.stack([value / scale, scale]), scaled_sink)
            return

        def sink(v: list[float]) -> None:
            if cur.loss is None:
                cur.loss = v[0]

        self.add(value, sink)

    def release(self) -> None:
        self._scaled = None
