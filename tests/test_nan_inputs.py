"""NaN in the input batch (per-feature standardisation dividing a constant feature by its
zero std): nan-trace names the input, not the loss code, and the ReLUs whose units are
NaN are not called dead (a red-team script led with dead-relu, 'lower the learning rate')."""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from nndoctor import Doctor


def train(x):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    y = torch.randint(0, 3, (len(x),), generator=torch.Generator().manual_seed(1))
    doctor = Doctor(model, sample_every=1)
    with doctor.watch():
        for i in range(4):
            idx = torch.arange(i * 16, i * 16 + 16) % len(x)
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return doctor.report()


def test_a_nan_input_is_named_as_the_input():
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(64, 8, generator=g)
    raw[:, 3] = 0.0  # a constant feature
    x = (raw - raw.mean(0)) / raw.std(0)  # 0 / 0 = NaN in column 3
    report = train(x)
    assert report.diagnosis.cause == "nan-trace", [(f.check, f.message) for f in report.findings]
    nan = report.by_check("nan-trace")[0]
    assert nan.evidence["direction"] == "input" and "input batch already contains NaN" in nan.message
    assert nan.where == "0"
    assert not report.by_check("dead-relu")


def test_finite_inputs_give_no_input_verdict():
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    report = train(x)
    assert not report.by_check("nan-trace") and not report.by_check("dead-relu")
