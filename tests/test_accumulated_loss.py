"""Gradient accumulation without dividing the loss (harmless under Adam): a step's loss
adds up its micro-batches' losses, so the chance-level check must judge their mean, not
the sum (4 x ln 10 = 9.2 was reported as 'confidently wrong logits' on a healthy script)."""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from nndoctor import Doctor


def train(accum: int, scale_last: float = 1.0):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10))
    with torch.no_grad():
        model[2].weight.mul_(scale_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    doctor = Doctor(model)
    with doctor.watch():
        opt.zero_grad()
        for i in range(8 * accum):
            x, y = torch.randn(16, 16, generator=g), torch.randint(0, 10, (16,), generator=g)
            F.cross_entropy(model(x), y).backward()  # not divided by accum
            if (i + 1) % accum == 0:
                opt.step()
                opt.zero_grad()
    return doctor


def test_the_mean_of_the_micro_batch_losses_is_judged():
    doctor = train(accum=4)
    first = next(r for r in doctor.observations.steps if r.loss is not None)
    assert first.loss_terms == 4 and first.loss > 4 * 2.0  # the sum, as backpropagated
    assert not doctor.report().by_check("chance-level-loss")


def test_a_confidently_wrong_start_still_fires_under_accumulation():
    doctor = train(accum=4, scale_last=60.0)
    found = doctor.report().by_check("chance-level-loss")
    assert found and "mean of its 4 micro-batch losses" in found[0].message
    assert found[0].evidence["loss"] < doctor.observations.steps[0].loss  # the mean, not the sum
