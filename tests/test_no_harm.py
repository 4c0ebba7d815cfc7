"""Does no harm: with the Doctor attached, training produces bitwise the same weights
and leaves the RNG streams where they would be without it."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from nndoctor import Doctor


def build():
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.3),
        nn.Flatten(), nn.Linear(8 * 6 * 6, 5),
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    return model, opt


def train(model, opt, steps=12, accumulate=1):
    for i in range(steps):
        opt.zero_grad()
        for _ in range(accumulate):
            x = torch.randn(6, 3, 6, 6)
            y = torch.randint(0, 5, (6,))
            nn.functional.cross_entropy(model(x), y).backward()  # dropout draws from the RNG
        opt.step()


@pytest.mark.parametrize("sample_every", [1, 3, 20])
@pytest.mark.parametrize("accumulate", [1, 2])
def test_weights_bitwise_equal_and_rng_untouched(sample_every, accumulate):
    model_a, opt_a = build()
    train(model_a, opt_a, accumulate=accumulate)
    after_a = (torch.rand(3), np.random.rand(), random.random())

    model_b, opt_b = build()
    doctor = Doctor(model_b, optimizer=opt_b, sample_every=sample_every)
    with doctor.watch():
        train(model_b, opt_b, accumulate=accumulate)
    after_b = (torch.rand(3), np.random.rand(), random.random())

    for (n, a), (_, b) in zip(model_a.state_dict().items(), model_b.state_dict().items()):
        assert torch.equal(a, b), f"{n} differs with the Doctor attached"
    assert torch.equal(after_a[0], after_b[0])
    assert after_a[1:] == after_b[1:]
    assert doctor.report().steps_observed == 12


def test_no_harm_without_optimizer_argument_and_manual_updates():
    def run(watch):
        torch.manual_seed(5)
        model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
        ctx = Doctor(model, sample_every=2).watch() if watch else None
        if ctx:
            ctx.__enter__()
        try:
            for _ in range(10):
                loss = model(torch.randn(5, 4)).pow(2).mean()
                loss.backward()
                with torch.no_grad():
                    for p in model.parameters():
                        p -= 0.1 * p.grad
                        p.grad = None
        finally:
            if ctx:
                ctx.__exit__(None, None, None)
        return [p.detach().clone() for p in model.parameters()], torch.rand(2)

    (wa, ra), (wb, rb) = run(False), run(True)
    assert all(torch.equal(a, b) for a, b in zip(wa, wb))
    assert torch.equal(ra, rb)


def test_training_flag_and_requires_grad_untouched():
    model, opt = build()
    model[0].weight.requires_grad_(False)
    model.eval()
    with Doctor(model, optimizer=opt).watch():
        pass
    assert model.training is False and not model[0].weight.requires_grad
