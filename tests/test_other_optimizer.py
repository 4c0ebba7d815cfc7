"""An optimizer that steps while the model is watched but holds none of its parameters
(built before the model was re-created, over a deepcopy, over a fresh instance): with no
optimizer of its own the model never updates. Found by frozen-layer even when the Doctor
was given no optimizer (as `nndoctor check` is, on a script whose optimizer owns nothing
of the model it trains)."""

from __future__ import annotations

import copy

import torch
from torch import nn
import torch.nn.functional as F

from nndoctor import Doctor


def data(n=64):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 10, generator=g), torch.randint(0, 3, (n,), generator=g)


def net():
    return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))


def test_an_optimizer_over_another_instance_is_named():
    torch.manual_seed(0)
    model = net()
    opt = torch.optim.Adam(copy.deepcopy(model).parameters(), lr=1e-2)  # the bug
    x, y = data()
    doctor = Doctor(model)
    with doctor.watch():
        for i in range(8):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    found = doctor.report().by_check("frozen-layer")
    assert found and found[0].severity.value == "error", [(f.check, f.message) for f in doctor.report().findings]
    assert found[0].evidence["mechanism"] == "optimizer_over_other_model"
    assert found[0].evidence["optimizer_params"] == 4
    assert doctor.report().diagnosis.cause == "frozen-layer"


def test_hand_written_updates_beside_another_models_optimizer_are_fine():
    """A second model (a critic, a teacher) trained by its own optimizer while the
    watched model updates by hand: nothing to report."""
    torch.manual_seed(0)
    model, other = net(), net()
    other_opt = torch.optim.SGD(other.parameters(), lr=0.1)
    x, y = data()
    doctor = Doctor(model)
    with doctor.watch():
        for i in range(8):
            other_opt.zero_grad()
            F.cross_entropy(other(x), y).backward()
            other_opt.step()
            model.zero_grad()
            F.cross_entropy(model(x), y).backward()
            with torch.no_grad():
                for p in model.parameters():
                    p -= 0.1 * p.grad
    assert not doctor.report().by_check("frozen-layer")
