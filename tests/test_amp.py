"""AMP on CPU: autocast (bf16, fp16) + GradScaler. Losses are reported unscaled, skipped
steps are counted and not a NaN error unless they persist, bf16 works."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nndoctor import Doctor, Severity


def make(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    return model, opt


def data(n=64):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 16, generator=g), torch.randint(0, 4, (n,), generator=g)


def test_grad_scaler_loss_is_reported_unscaled():
    model, opt = make()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    x, y = data()
    doctor = Doctor(model, optimizer=opt, sample_every=1)
    plain_losses = []
    with doctor.watch():
        for i in range(6):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = nn.functional.cross_entropy(model(x), y)
            plain_losses.append(loss.item())
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    obs = doctor.observations
    got = [s.loss for s in obs.steps]
    assert got == pytest.approx(plain_losses, rel=1e-3)  # not 65536x too large
    assert obs.steps[0].loss_scale == 2.0 ** 16
    report = doctor.report()
    assert "nan-trace" not in report.ids()
    # gradient norms are measured after GradScaler.unscale_ (at the optimizer pre-step hook)
    total = math.sqrt(sum(v * v for v in obs.steps[0].grad_norms.values()))
    assert total < 100, total


class Overflow(nn.Module):
    """Multiplies by a huge factor: fp16 gradients overflow at any useful scale."""

    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


def run_skipping(factor, steps=12):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), Overflow(factor), nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=1e-6)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16, growth_interval=1000)
    x, y = data()
    doctor = Doctor(model, optimizer=opt, sample_every=1)
    with doctor.watch():
        for _ in range(steps):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.float16):
                out = model(x)
            loss = nn.functional.cross_entropy(out.float(), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    return doctor


def test_calibration_skips_are_not_an_error():
    doctor = run_skipping(factor=30.0)  # overflows only at the first, large scales
    steps = doctor.observations.steps
    assert any(s.skipped for s in steps) and not all(s.skipped for s in steps)
    assert len(steps) == 12  # skipped steps are counted as steps
    assert not [f for f in doctor.report().by_check("nan-trace") if f.severity is Severity.ERROR]


def test_persistent_skipping_is_an_error():
    doctor = run_skipping(factor=1e30)  # inf in fp16 whatever the scale
    steps = doctor.observations.steps
    assert all(s.skipped for s in steps)
    (f,) = [f for f in doctor.report().by_check("nan-trace") if f.evidence.get("direction") == "amp"]
    assert f.severity is Severity.ERROR and "skipped" in f.message


def test_fp16_overflow_is_traced_to_the_layer():
    doctor = run_skipping(factor=1e30, steps=3)
    nan = [f for f in doctor.report().by_check("nan-trace") if f.evidence.get("direction") == "forward"]
    assert nan and nan[0].where == "1", [f.message for f in doctor.report().findings]


def test_bf16_autocast_statistics_are_finite():
    model, opt = make()
    x, y = data()
    doctor = Doctor(model, optimizer=opt, sample_every=1)
    with doctor.watch():
        for i in range(5):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = nn.functional.cross_entropy(model(x[i * 8:(i + 1) * 8]), y[i * 8:(i + 1) * 8])
            loss.backward()
            opt.step()
    acts = [a for s in doctor.observations.steps for a in s.activations]
    assert acts and all(math.isfinite(a.std) and not a.out_nonfinite for a in acts)
    assert not doctor.report().errors
