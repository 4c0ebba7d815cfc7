"""Adam at lr 1 on a small CNN (a red-team script): the first updates are ~0.4 of the
weights, which grow ~90x in 20 steps while the loss still falls a little. That is a
learning rate blowing up a deep net's weights, not a linear model's near-zero start; the
report must lead with the update ratio, not with 'raise the learning rate' or init advice."""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from sklearn.datasets import load_digits

from nndoctor import Doctor


def train(lr: float):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(32 * 4, 10))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    digits = load_digits()
    xs = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    ys = torch.tensor(digits.target)
    g = torch.Generator().manual_seed(1)
    doctor = Doctor(model, optimizer=opt, sample_every=1)  # as nndoctor check watches
    with doctor.watch():
        for _ in range(20):
            idx = torch.randint(0, len(xs), (64,), generator=g)
            x, y = xs[idx], ys[idx]
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    return doctor.report()


def test_adam_at_lr_one_leads_with_the_update_ratio():
    report = train(1.0)
    ratio = report.by_check("update-ratio")
    assert ratio and ratio[0].severity.value in ("warning", "error"), [(f.check, f.message) for f in report.findings]
    assert ratio[0].evidence.get("kind") != "small_start"
    assert report.diagnosis.cause == "update-ratio"


def test_adam_at_a_normal_lr_has_no_update_ratio_warning():
    report = train(1e-3)
    assert all(f.severity.value == "info" for f in report.by_check("update-ratio"))
