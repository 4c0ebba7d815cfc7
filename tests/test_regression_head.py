"""A regression net with a ReLU after its last Linear (a loop that appends ReLU after
every layer) trained with MSELoss on standardised targets, half of them negative: the
predictions can never reach them. loss-input-format names the final ReLU."""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from nndoctor import Doctor


def train(final_relu: bool, shift: float = 0.0):
    torch.manual_seed(0)
    layers = [nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 1)] + ([nn.ReLU()] if final_relu else [])
    model = nn.Sequential(*layers)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    w = torch.randn(6, 1, generator=g)
    doctor = Doctor(model, sample_every=1)
    with doctor.watch():
        for _ in range(8):
            x = torch.randn(32, 6, generator=g)
            y = x @ w + shift
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            opt.step()
    return doctor.report()


def test_a_final_relu_before_negative_targets_is_named():
    report = train(final_relu=True)
    found = [f for f in report.by_check("loss-input-format") if f.evidence.get("problem") == "non_negative_outputs"]
    assert found and found[0].severity.value == "error", [(f.check, f.message) for f in report.findings]
    assert found[0].evidence["negative_target_fraction"] > 0.2
    assert report.diagnosis.cause == "loss-input-format"


def test_no_final_relu_or_non_negative_targets_stay_quiet():
    assert not train(final_relu=False).by_check("loss-input-format")
    # a ReLU head is fine for targets that are never negative (counts, prices)
    assert not train(final_relu=True, shift=20.0).by_check("loss-input-format")


def train_targets(scale: float, offset: float):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    w = torch.randn(6, 1, generator=g)
    doctor = Doctor(model, sample_every=1)
    with doctor.watch():
        for _ in range(12):
            x = torch.randn(32, 6, generator=g) * 0.05  # features scaled as sklearn's load_diabetes ships them
            y = (x / 0.05 @ w) * scale + offset  # e.g. disease progression 25..346
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            opt.step()
    return doctor.report()


def test_unstandardised_regression_targets_are_named():
    report = train_targets(scale=40.0, offset=150.0)
    found = report.by_check("prediction-collapse")
    assert found and found[0].severity.value == "warning", [(f.check, f.message) for f in report.findings]
    assert found[0].evidence["mechanism"] == "unscaled_targets" and "(y - mean) / std" in found[0].fix
    assert report.diagnosis.cause == "prediction-collapse"


def test_standardised_targets_are_not_called_unscaled():
    report = train_targets(scale=1.0, offset=0.0)
    assert not [f for f in report.by_check("prediction-collapse") if f.evidence.get("mechanism") == "unscaled_targets"]
