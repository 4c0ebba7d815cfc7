"""GPU paths (run on a lent GPU machine: `python -m pytest -m gpu`). Without CUDA these
are skipped; their CPU twins are in test_no_sync.py and test_amp.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nndoctor import Doctor

pytestmark = pytest.mark.gpu


def cuda_setup():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    ).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(8, 16, 3, 32, 32, device="cuda")
    y = torch.randint(0, 10, (8, 16), device="cuda")
    return model, opt, x, y


def test_unsampled_steps_do_not_synchronize():
    model, opt, x, y = cuda_setup()
    doctor = Doctor(model, optimizer=opt, sample_every=20, dense_steps=4)
    with doctor.watch():
        for i in range(5):  # dense, sampled steps (they sync once each, by design)
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x[i % 8]), y[i % 8]).backward()
            opt.step()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for i in range(5, 19):
                opt.zero_grad(set_to_none=True)
                nn.functional.cross_entropy(model(x[i % 8]), y[i % 8]).backward()
                opt.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert doctor.report().steps_observed == 19


def test_fp16_grad_scaler_on_cuda():
    model, opt, x, y = cuda_setup()
    scaler = torch.amp.GradScaler("cuda")
    doctor = Doctor(model, optimizer=opt, sample_every=1)
    losses = []
    with doctor.watch():
        for i in range(6):
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.float16):
                loss = nn.functional.cross_entropy(model(x[i]), y[i])
            losses.append(loss.item())
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    got = [s.loss for s in doctor.observations.steps]
    assert got == pytest.approx(losses, rel=1e-2)
    assert not doctor.report().errors
