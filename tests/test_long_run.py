"""Watching long runs: records stay bounded, and a NaN that appears at an unsampled step
far into training arms layer-by-layer tracing of the following steps."""

from __future__ import annotations

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
    assert 57 not in sampled and {76, 77, 78} <= set(sampled)  # traced after the next sync (75)
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
