"""Inputs and labels of sampled steps: statistics of the model's first input tensor,
the class labels (counts, range, a fingerprint to spot repeated batches), and one clone
of the first training batch for the experiments (``Recorder.captured``)."""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn

from .._observations import InputRecord, LabelRecord, StepRecord
from .._tree import map_tensors, tensors
from ._base import Observer, tensor_stats


def _clone(obj: Any) -> Any:
    return map_tensors(obj, lambda t: t.detach().clone())


class InputObserver(Observer):
    name = "inputs"
    feeds = ("input-normalization", "repeated-batch", "label-distribution")

    def __init__(self, recorder: Any) -> None:
        super().__init__(recorder)
        self._labels_step = -1
        self._previous_input: Any = None  # weakref to the last recorded input tensor

    def model_pre(self, cur: StepRecord, args: Any, kwargs: Any) -> None:
        if cur.input is None:
            found = tensors((args, kwargs))
            if found:
                self._record_input(cur, found[0])
        captured = self.rec.captured
        if "args" not in captured:
            captured["args"], captured["kwargs"] = _clone((args, kwargs))

    def loss_pre(self, cur: StepRecord, module: nn.Module, args: Any) -> None:
        if len(args) < 2 or not isinstance(args[1], torch.Tensor):
            return
        if "target" not in self.rec.captured:
            self.rec.captured["target"] = _clone(args[1])
        if not args[1].is_floating_point():
            logits = args[0] if isinstance(args[0], torch.Tensor) else None
            k = int(logits.shape[1]) if logits is not None and logits.dim() >= 2 else None
            self._record_labels(cur, args[1], k, getattr(module, "ignore_index", None))

    def before_backward(self, cur: StepRecord, loss: Any, first_after_update: bool) -> None:
        # The loss graph unit (listed before this one) leaves the NLL node of a
        # cross-entropy: its saved target holds the labels, whatever code computed the loss.
        found = self.rec.scratch.pop("nll_node", None)
        if found is None or cur.labels is not None:
            return
        nll, n_classes = found
        try:
            target = nll._saved_target
            ignore = int(nll._saved_ignore_index)
        except Exception:  # saved tensors already freed (retain_graph=False twice)
            return
        if ignore >= 2**63:  # saved as an unsigned 64-bit int
            ignore -= 2**64
        self._record_labels(cur, target, n_classes, ignore)

    def _record_input(self, cur: StepRecord, x: torch.Tensor) -> None:
        with torch.no_grad():
            xf = x.detach().float().reshape(-1)
            n = xf.numel()
            if n == 0:
                return
            stride = max(1, n // 4096)
            sample = xf[::stride]
            weights = torch.arange(1, sample.numel() + 1, device=xf.device, dtype=torch.float32)
            mean_std = tensor_stats(xf)
            lo_hi = torch.aminmax(xf)
            vec = torch.stack([
                mean_std[0], mean_std[1], lo_hi.min, lo_hi.max, (xf == 0).float().mean(),
                sample.sum(), (sample * weights).sum(),
            ])
        dtype, shape, is_float = str(x.dtype).replace("torch.", ""), tuple(x.shape), x.is_floating_point()
        previous = self._previous_input() if self._previous_input is not None else None
        same = None if self._previous_input is None else previous is x
        try:
            self._previous_input = weakref.ref(x)
        except TypeError:  # pragma: no cover - tensors support weak references
            self._previous_input = None

        def sink(v: list[float]) -> None:
            cur.input = InputRecord(
                dtype=dtype, shape=shape, mean=v[0], std=v[1], min=v[2], max=v[3],
                zero_fraction=v[4], fingerprint=(v[5], v[6]), is_float=is_float, same_tensor=same,
            )

        self.add(vec, sink)

    def _record_labels(self, cur: StepRecord, target: torch.Tensor, n_classes: int | None,
                       ignore_index: int | None) -> None:
        # Once a step: the loss module's pre-hook and the loss graph's NLL node both see
        # the same targets (values reach cur.labels only at the sync).
        if (cur.labels is not None or self._labels_step == cur.step or target.is_floating_point()
                or target.numel() == 0):
            return
        self._labels_step = cur.step
        with torch.no_grad():
            t = target.detach().reshape(-1).long()
            valid = t != ignore_index if ignore_index is not None else torch.ones_like(t, dtype=torch.bool)
            k = int(n_classes) if n_classes else 0
            big = torch.iinfo(torch.int64).max
            tmin = torch.where(valid, t, torch.full_like(t, big)).min()
            tmax = torch.where(valid, t, torch.full_like(t, -big)).max()
            n_valid = valid.sum()
            if 0 < k <= 4096:
                idx = torch.where(valid & (t >= 0) & (t < k), t, torch.full_like(t, k))
                counts = torch.zeros(k + 1, device=t.device, dtype=torch.float64)
                counts.scatter_add_(0, idx, torch.ones_like(idx, dtype=torch.float64))
            else:
                counts = torch.zeros(0, device=t.device, dtype=torch.float64)
            tf = t.double()
            w = torch.arange(1, tf.numel() + 1, device=t.device, dtype=torch.float64)
            vec = torch.cat([
                torch.stack([tmin.double(), tmax.double(), n_valid.double(), tf.sum(), (tf * w).sum()]),
                counts,
            ])

        def sink(v: list[float]) -> None:
            counts_map = {i: int(c) for i, c in enumerate(v[5 : 5 + k]) if c}
            cur.labels = LabelRecord(
                n=int(v[2]), counts=counts_map, min=int(v[0]) if v[2] else 0,
                max=int(v[1]) if v[2] else 0, fingerprint=(v[3], v[4]), ignore_index=ignore_index,
            )

        self.add(vec, sink)
