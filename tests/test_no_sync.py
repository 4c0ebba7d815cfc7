"""Low overhead: between sample points, watching adds no host sync. Counted on CPU with
a TorchDispatchMode that records every scalar extraction (`aten._local_scalar_dense`,
what `.item()`, `bool(t)` and `float(t)` dispatch to) and every copy to the host."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from nndoctor import Doctor


class SyncCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.scalar = 0
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        if func is torch.ops.aten._local_scalar_dense.default:
            self.scalar += 1
        return func(*args, **(kwargs or {}))


def setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])

    def step():
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    return model, opt, step


def count(watch: bool, sample_every: int = 20):
    model, opt, step = setup()
    doctor = Doctor(model, optimizer=opt, sample_every=sample_every, dense_steps=4)
    ctx = doctor.watch() if watch else None
    if ctx:
        ctx.__enter__()
    try:
        for _ in range(5):  # steps 0-4: the dense (sampled) ones
            step()
        counter = SyncCounter()
        with counter:
            for _ in range(10):  # steps 5-14: not sampled
                step()
    finally:
        if ctx:
            ctx.__exit__(None, None, None)
    return counter


def test_unsampled_steps_do_not_sync():
    plain = count(watch=False)
    watched = count(watch=True)
    assert watched.scalar == plain.scalar == 0
    # The always-on part is a few ops per step: the loss kept (detach, reshape) and one
    # norm per parameter tensor (6 here; a single fused kernel on CUDA) plus a stack.
    n_params = len(list(setup()[0].parameters()))
    assert watched.ops - plain.ops <= 10 * (2 * n_params + 4), (watched.ops, plain.ops)


def test_sampled_steps_sync_once_not_per_layer():
    watched = count(watch=True, sample_every=1)  # every step sampled
    # one host transfer per sampled step (a .tolist() of one concatenated tensor), no
    # scalar extraction per layer
    assert watched.scalar == 0
