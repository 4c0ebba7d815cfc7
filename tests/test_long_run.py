"""Watching long runs: records stay bounded, and a NaN that appears at an unsampled step
far into training arms layer-by-layer tracing of the following steps (at once: the
per-step non-finite alarm, not the next sampled step's sync)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nndoctor import Doctor
from nndoctor._observe import Recorder


def test_records_are_thinned_but_sampled_steps_kept(monkeypatch):
    monkeypatch.setattr(Recorder, "max_records", 40)
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    doctor = Doctor(model, optimizer=opt, sample_every=10, dense_steps=2)
    with doctor.watch():
        for _ in range(200):
            opt.zero_grad()
            model(torch.randn(8, 4)).pow(2).mean().backward()
            opt.step()
    obs = doctor.observations
    sampled = [s for s in obs.steps if s.sampled]
    assert len(obs.steps) - len(sampled) <= 41
    assert {s.step for s in obs.steps if s.sampled} == {0, 1} | set(range(10, 200, 10)) | {0}
    assert obs.steps[-1].step == 199 and all(s.loss is not None for s in obs.steps)


class Blowup(nn.Module):
    """Healthy until `at`, then divides by zero."""

    def __init__(self, at):
        super().__init__()
        self.at, self.calls = at, 0

    def forward(self, x):
        self.calls += 1
        return x / 0.0 if self.calls > self.at else x


def run_blowup(sample_every):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), Blowup(at=57), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    doctor = Doctor(model, optimizer=opt, sample_every=sample_every, dense_steps=2)
    with doctor.watch():
        for _ in range(90):
            opt.zero_grad()
            model(torch.randn(8, 4)).pow(2).mean().backward()
            opt.step()
    (f,) = doctor.report().by_check("nan-trace")
    return doctor, f


def test_late_nan_at_an_unsampled_step_arms_tracing():
    doctor, f = run_blowup(sample_every=25)
    sampled = [s.step for s in doctor.observations.steps if s.sampled]
    # traced from the next step on (before the alarm: only after the next sync, at 75)
    assert 57 not in sampled and {58, 59, 60} <= set(sampled)
    assert f.step == 57 and f.evidence["direction"] == "loss" and "sample_every=1" in f.message
    forward = [e for e in f.evidence["events"] if e["direction"] == "forward"]
    # by then the update at step 57 had made the first layer's weights NaN: said so
    assert forward[0]["params_nonfinite"] and forward[0]["where"] == "0"
    backward = [e for e in f.evidence["events"] if e["direction"] == "backward"]
    assert backward[0]["step"] == 57


def test_late_nan_is_traced_to_its_layer_when_every_step_is_sampled():
    doctor, f = run_blowup(sample_every=1)
    assert f.where == "1" and f.step == 57 and f.evidence["direction"] == "forward"
    assert "Blowup" in f.message


class PoisonedBackward(torch.autograd.Function):
    """Identity forward; the backward returns NaN gradients when ``poisoned``."""

    poisoned = False

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan") if PoisonedBackward.poisoned else grad


class Poison(nn.Module):
    def forward(self, x):
        return PoisonedBackward.apply(x)


def test_nonfinite_gradient_at_an_unsampled_step_arms_the_backward_trace():
    """The loss stays finite: only the cheap per-step gradient flag can see the NaN. The
    detailed pass traces the next step, which names the layer the bad gradient reached."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), Poison(), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    doctor = Doctor(model, optimizer=opt, sample_every=20, dense_steps=2)
    try:
        with doctor.watch():
            for step in range(30):
                PoisonedBackward.poisoned = step == 7
                opt.zero_grad()
                loss = model(torch.randn(8, 4)).pow(2).mean()
                loss.backward()
                opt.step()
    finally:
        PoisonedBackward.poisoned = False
    steps = {s.step: s for s in doctor.observations.steps}
    assert not steps[7].sampled and not steps[6].sampled  # the bad step itself was not sampled
    assert steps[7].loss is not None and steps[7].loss == steps[7].loss  # finite loss at 7
    assert steps[7].grad_nonfinite == ["0.weight", "0.bias"]
    assert steps[8].sampled and steps[8].activations  # traced from the next step
    # without the alarm the first traced step after 7 would be 21 (after the sync at 20)
    assert all(not steps[s].sampled for s in range(2, 7))
    (f,) = doctor.report().by_check("nan-trace")
    backward = [e for e in f.evidence["events"] if e["direction"] == "backward"]
    assert backward[0]["step"] == 7 and backward[0]["where"] in ("0.weight", "0.bias")
    forward = [e for e in f.evidence["events"] if e["direction"] == "forward"]
    # the update at 7 made the first layer's weights NaN; step 8's trace says so
    assert forward[0]["step"] == 8 and forward[0]["where"] == "0" and forward[0]["params_nonfinite"]


@pytest.mark.gpu
def test_nonfinite_gradient_alarm_on_cuda_reads_without_a_sync():
    """On CUDA the flags travel to host memory without a sync and are read at a later
    close: tracing starts within a couple of steps of the bad one."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), Poison(), nn.ReLU(), nn.Linear(8, 2)).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    doctor = Doctor(model, optimizer=opt, sample_every=20, dense_steps=2)
    xs = torch.randn(30, 8, 4, device="cuda")
    try:
        with doctor.watch():
            for step in range(30):
                PoisonedBackward.poisoned = step == 7
                opt.zero_grad()
                model(xs[step]).pow(2).mean().backward()
                if 2 <= step < 7:
                    torch.cuda.set_sync_debug_mode("error")  # unsampled, healthy steps: no sync
                try:
                    opt.step()
                finally:
                    torch.cuda.set_sync_debug_mode("default")
    finally:
        PoisonedBackward.poisoned = False
    steps = {s.step: s for s in doctor.observations.steps}
    assert not steps[7].sampled and steps[7].grad_nonfinite == ["0.weight", "0.bias"]
    assert any(steps[s].sampled for s in (8, 9, 10))
