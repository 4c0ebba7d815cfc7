"""Updates whose size the learning rate does not set. Gradient clipping with a max_norm far below the gradients' norm (clip_grad_norm_(...,
1e-6)): the updates are too small, but the learning rate is not the problem. update-ratio
names the clipping (the gradients' norm at the optimizer's step over their norm when
backward() ended), and no LR intervention claims to confirm it."""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from nndoctor import Doctor
from nndoctor.probes.interventions import plan


def train(max_norm: float | None):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    doctor = Doctor(model, optimizer=opt, sample_every=1)
    with doctor.watch():
        for _ in range(12):
            x = torch.randn(32, 16, generator=g)
            y = (x[:, :4]).argmax(1)
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            if max_norm is not None:
                nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            opt.step()
    return doctor.report()


def test_a_tiny_clip_is_named_as_the_cause_of_tiny_updates():
    report = train(1e-6)
    found = report.by_check("update-ratio")
    assert found and found[0].evidence["mechanism"] == "clipped", [(f.check, f.message) for f in report.findings]
    assert found[0].evidence["clip_factor"] < 1e-3 and "clip_grad_norm_" in found[0].fix
    assert report.diagnosis.cause == "update-ratio" and "clipping" in report.diagnosis.summary
    assert plan(None, "update-ratio", found[0].evidence) is None


def test_a_normal_clip_and_no_clip_give_no_update_ratio_warning():
    for max_norm in (1.0, None):
        report = train(max_norm)
        assert all(f.severity.value == "info" for f in report.by_check("update-ratio")), max_norm


def train_decay(weight_decay: float):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(1)
    doctor = Doctor(model, optimizer=opt, sample_every=1)
    with doctor.watch():
        for _ in range(12):
            x = torch.randn(32, 16, generator=g)
            opt.zero_grad()
            F.cross_entropy(model(x), x[:, :4].argmax(1)).backward()
            opt.step()
    return doctor.report()


def test_a_huge_weight_decay_is_named_instead_of_the_learning_rate():
    """weight_decay=0.5 meant as 5e-4: SGD momentum 0.9 removes lr*wd/(1-m) = 0.5 of the
    weights a step; the update ratio is high because of the decay, not the LR."""
    report = train_decay(0.5)
    found = report.by_check("update-ratio")
    assert found and found[0].evidence.get("mechanism") == "weight_decay", [(f.check, f.message) for f in report.findings]
    assert "weight_decay" in found[0].fix and plan(None, "update-ratio", found[0].evidence) is None
    assert report.diagnosis.cause == "update-ratio" and "Weight decay" in report.diagnosis.summary


def test_a_usual_weight_decay_is_not_blamed():
    report = train_decay(5e-4)
    assert not [f for f in report.by_check("update-ratio") if f.evidence.get("mechanism") == "weight_decay"]
