"""optimizer.step() in the wrong place of the iteration. Two orders look different in the
code and alike to the gradients: 'zero_grad(); loss = f(x); step(); backward()' (the step
runs after the forward, before its backward: named as step_before_backward) and
'zero_grad(); step(); loss = f(x); backward()' (its events are those of a zero_grad()
between backward() and step(): named as gradients zeroed before the step, with the
canonical order as the fix). Both are errors that lead the report."""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from nndoctor import Doctor


def train(order: str):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    doctor = Doctor(model, sample_every=1)
    with doctor.watch():
        for _ in range(6):
            x, y = torch.randn(16, 8, generator=g), torch.randint(0, 3, (16,), generator=g)
            opt.zero_grad()
            if order == "step-after-forward":
                loss = F.cross_entropy(model(x), y)
                opt.step()
                loss.backward()
            elif order == "step-first":
                opt.step()
                F.cross_entropy(model(x), y).backward()
            else:
                F.cross_entropy(model(x), y).backward()
                opt.step()
    return doctor.report()


def test_step_between_forward_and_backward_is_named():
    report = train("step-after-forward")
    f = report.by_check("frozen-layer")[0]
    assert f.evidence["mechanism"] == "step_before_backward" and f.severity.value == "error"
    assert report.diagnosis.cause == "frozen-layer" and "before loss.backward()" in report.diagnosis.summary


def test_step_first_is_named_with_the_canonical_order():
    report = train("step-first")
    f = report.by_check("frozen-layer")[0]
    assert f.evidence["mechanism"] == "grads_zeroed_before_step"
    assert "loss.backward(); optimizer.step()" in f.fix


def test_the_right_order_is_quiet():
    assert not train("right").by_check("frozen-layer")
