"""(input, target) pairs of the batches the script really trains on, kept for the pairing
experiment (``nndoctor.probes.pairing``): a larger held-out set than one batch.

On sampled steps only, the root forward's arguments are held (references, until the
step's first backward) and paired with the targets the loss saw (the loss module's
pre-hook, or the saved target of a cross-entropy/NLL node in the loss graph). A pair is
kept when every input tensor and the target share the batch size along dim 0; it is
cloned on the device (no host sync) into ``Recorder.captured["pairs"]`` until
``max_samples`` samples or ``max_elements`` elements are held."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._observations import StepRecord
from .._tree import map_tensors, tensors
from ._base import Observer


class PairObserver(Observer):
    name = "pairs"
    feeds = ("random-input-loss",)
    max_samples = 512
    max_elements = 1 << 24  # 64 MB of float32 at most

    def __init__(self, recorder: Any) -> None:
        super().__init__(recorder)
        self._call: tuple[Any, Any] | None = None
        self._target: torch.Tensor | None = None
        self._samples = 0
        self._elements = 0

    def _full(self) -> bool:
        return self._samples >= self.max_samples or self._elements >= self.max_elements

    def begin_step(self, cur: StepRecord) -> None:
        self._call, self._target = None, None

    def model_pre(self, cur: StepRecord, args: Any, kwargs: Any) -> None:
        if self._call is None and not self._full():
            self._call = (args, kwargs)

    def loss_pre(self, cur: StepRecord, module: nn.Module, args: Any) -> None:
        if self._target is None and len(args) >= 2 and isinstance(args[1], torch.Tensor):
            self._target = args[1]

    def before_backward(self, cur: StepRecord, loss: Any, first_after_update: bool) -> None:
        call, target = self._call, self._target
        self._call, self._target = None, None
        if self.rec.backwards_in_step != 1 or call is None or self._full():
            return
        if target is None:
            found = self.rec.scratch.get("nll_node")  # the loss graph unit's, before the inputs unit pops it
            if found is not None:
                try:
                    target = found[0]._saved_target
                except Exception:  # saved tensors already freed
                    target = None
        if not isinstance(target, torch.Tensor) or target.dim() == 0:
            return
        inputs = tensors(call)
        n = int(target.shape[0])
        if not inputs or any(t.dim() == 0 or t.shape[0] != n for t in inputs):
            return  # sequence-first inputs, a hidden state, flattened targets: not cut here
        per_sample = sum(t[0].numel() for t in inputs) + target[0].numel()
        k = min(n, self.max_samples - self._samples, max(1, (self.max_elements - self._elements) // max(per_sample, 1)))
        with torch.no_grad():
            kept = map_tensors(call, lambda t: t[:k].detach().clone())
            kept_target = target[:k].detach().clone()
        self._samples += k
        self._elements += k * per_sample
        self.rec.captured.setdefault("pairs", []).append((kept[0], kept[1], kept_target))

    def release(self) -> None:
        self._call, self._target = None, None
