"""watch() verifies custom autograd.Functions passively (nndoctor/observers/custom_functions.py):
the first call of each user-defined Function is copied, its backward is checked against
finite differences when the report is built, and gradient-check judges it."""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch
from torch import nn

from nndoctor import Doctor
from nndoctor.checks.gradient_check import GradientCheck
from nndoctor.checks._base import Skip
from nndoctor._observations import Observations
from nndoctor.observers.custom_functions import PATCHES


# ---------------------------------------------------------------------------- Functions
class WrongScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2.0

    @staticmethod
    def backward(ctx, grad):
        return grad * 0.5  # the bug: the derivative of 2x is 2


class MySigmoid(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        y = 1 / (1 + torch.exp(-x))
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return grad * y * (1 - y)


class SlightlyWrongSigmoid(MySigmoid):
    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return grad * y * (1 - y) * 1.01  # 1% off: above the 1e-3 tolerance


class StraightThroughRound(torch.autograd.Function):
    """A correct straight-through estimator: round forward, identity backward."""

    @staticmethod
    def forward(ctx, x):
        return torch.round(x * 4) / 4

    @staticmethod
    def backward(ctx, grad):
        return grad


class ScaledLinear(torch.autograd.Function):
    """Two inputs that require grad (activations and a weight), a float option."""

    @staticmethod
    def forward(ctx, x, w, scale):
        ctx.save_for_backward(x, w)
        ctx.scale = scale
        return scale * x @ w

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        return ctx.scale * grad @ w.t(), ctx.scale * x.t() @ grad, None


class WrongWeightGrad(ScaledLinear):
    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        return ctx.scale * grad @ w.t(), x.t() @ grad, None  # the bug: scale dropped for w


class OwnGeneratorNoise(torch.autograd.Function):
    """Noise from a private generator: a different forward on every call."""

    gen = torch.Generator().manual_seed(123)

    @staticmethod
    def forward(ctx, x):
        return x + 0.1 * torch.randn(x.shape, generator=OwnGeneratorNoise.gen)

    @staticmethod
    def backward(ctx, grad):
        return grad


class GlobalRngDropout(torch.autograd.Function):
    """A correct dropout drawing its mask from torch's global generator."""

    @staticmethod
    def forward(ctx, x):
        mask = (torch.rand_like(x) > 0.5).to(x.dtype) * 2.0
        ctx.save_for_backward(mask)
        return x * mask

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return grad * mask


class Net(nn.Module):
    def __init__(self, fn, d=8, h=16, k=3):
        super().__init__()
        self.fn = fn
        self.body = nn.Linear(d, h)
        self.head = nn.Linear(h, k)

    def forward(self, x):
        return self.head(self.fn.apply(self.body(x)))


class Inner(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(16, 16) * 0.25)

    def forward(self, x):
        return WrongWeightGrad.apply(x, self.w, 0.5)


class NetWithInner(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(8, 16)
        self.block = nn.Sequential(Inner(), nn.Tanh())
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.block(self.body(x)))


def data(n=64, d=8, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    return x, torch.randint(0, k, (n,), generator=g)


def train(model, steps=8, doctor=None, raise_at=None):
    x, y = data(d=model.body.in_features)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    loss_fn = nn.CrossEntropyLoss()

    def loop():
        for i in range(steps):
            if raise_at == i:
                raise RuntimeError("user error")
            opt.zero_grad()
            loss_fn(model(x[i * 8:(i + 1) * 8]), y[i * 8:(i + 1) * 8]).backward()
            opt.step()

    if doctor is None:
        loop()
        return None
    with doctor.watch():
        loop()
    return doctor.report()


def watch(model, **kw):
    torch.manual_seed(0)
    doctor = Doctor(model, **kw)
    return train(model, doctor=doctor), doctor


def gradcheck_findings(report):
    return report.by_check("gradient-check")


# ---------------------------------------------------------------------------- fires
def test_wrong_backward_is_found_in_watch_mode_and_leads():
    torch.manual_seed(0)
    report, _ = watch(Net(WrongScale))
    found = gradcheck_findings(report)
    assert len(found) == 1
    f = found[0]
    assert f.severity.value == "error" and f.evidence["unit"] == "WrongScale"
    assert f.evidence["unit_kind"] == "function" and f.evidence["source"] == "watch"
    # 2x with a backward of 0.5: u^T J v is off by 1 - 0.5/2 = 0.75, whatever u and v
    assert f.evidence["max_rel_error"] == pytest.approx(0.75, rel=1e-6)
    assert f.evidence["tolerance"] == GradientCheck().max_relative_error == 1e-3
    assert "WrongScale" in f.message and "relative error 0.75" in f.message and "tolerance 1e-03" in f.message
    assert report.findings[0].check == "gradient-check" and report.diagnosis.cause == "gradient-check"
    assert "gradient-check" in report.checks_run


def test_a_one_percent_error_is_found():
    torch.manual_seed(0)
    report, _ = watch(Net(SlightlyWrongSigmoid))
    (f,) = gradcheck_findings(report)
    assert f.evidence["max_rel_error"] == pytest.approx(0.01 / 1.01, rel=1e-3)


def test_the_wrong_input_gradient_among_several_is_found_and_where_it_was_called():
    torch.manual_seed(0)
    report, _ = watch(NetWithInner())
    (f,) = gradcheck_findings(report)
    assert f.evidence["unit"] == "WrongWeightGrad" and f.where == "block.0"
    assert "(called in `block.0`)" in f.message
    assert f.evidence["input_shapes"] == [[8, 16], [16, 16]]


def test_large_inputs_keep_the_first_rows_of_the_batch_and_still_find_the_bug():
    class Wide(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(8, 2048)

        def forward(self, x):
            return WrongScale.apply(self.body(x)).mean(1, keepdim=True)

    model = Wide()
    x = torch.randn(64, 8)
    doctor = Doctor(model)
    with doctor.watch():
        model(x).pow(2).mean().backward()  # 64 x 2048 = 131k elements: over the 64k cap
    report = doctor.report()
    (rec,) = report.observations.custom_functions
    assert rec["sliced"] and rec["input_shapes"] == [[64, 2048]]
    (f,) = gradcheck_findings(report)
    assert f.evidence["sliced"] and f.evidence["max_rel_error"] == pytest.approx(0.75, rel=1e-6)


# ---------------------------------------------------------------------------- silent
@pytest.mark.parametrize("fn", [MySigmoid, GlobalRngDropout], ids=lambda c: c.__name__)
def test_a_correct_function_is_verified_and_silent(fn):
    torch.manual_seed(0)
    report, _ = watch(Net(fn))
    assert gradcheck_findings(report) == []
    (rec,) = report.observations.custom_functions
    assert rec["skipped"] is None and rec["name"] == fn.__name__
    assert rec["dtype"] == "float64" and rec["max_rel_error"] < 1e-6
    assert "gradient-check" in report.checks_run


def test_a_correct_multi_input_function_is_silent():
    class Good(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(8, 16)
            self.w = nn.Parameter(torch.randn(16, 3) * 0.2)

        def forward(self, x):
            return ScaledLinear.apply(torch.tanh(self.body(x)), self.w, 0.5)

    model = Good()
    doctor = Doctor(model)
    x, y = data()
    with doctor.watch():
        nn.functional.cross_entropy(model(x), y).backward()
    report = doctor.report()
    assert gradcheck_findings(report) == []
    (rec,) = report.observations.custom_functions
    assert rec["skipped"] is None and rec["max_rel_error"] < 1e-6


def test_a_correct_straight_through_estimator_is_silent_with_a_reason():
    torch.manual_seed(0)
    report, _ = watch(Net(StraightThroughRound))
    assert gradcheck_findings(report) == []
    (rec,) = report.observations.custom_functions
    assert "piecewise constant" in rec["skipped"]
    skipped = {s["check"]: s["reason"] for s in report.checks_skipped}
    assert "StraightThroughRound" in skipped["gradient-check"] and "straight-through" in skipped["gradient-check"]


def test_a_non_reproducible_forward_gets_no_verdict():
    torch.manual_seed(0)
    report, _ = watch(Net(OwnGeneratorNoise))
    assert gradcheck_findings(report) == []
    (rec,) = report.observations.custom_functions
    assert "not reproducible" in rec["skipped"]


def test_a_function_called_only_without_grad_is_not_verified():
    model = Net(MySigmoid)
    doctor = Doctor(model)
    x, _ = data()
    with doctor.watch():
        with torch.no_grad():
            model(x)
        model.head(torch.relu(model.body(x))).sum().backward()
    report = doctor.report()
    (rec,) = report.observations.custom_functions
    assert "grad disabled" in rec["skipped"]
    assert gradcheck_findings(report) == []


def test_no_custom_function_skips_the_check_in_watch_mode():
    model = nn.Sequential(nn.Linear(8, 3))
    doctor = Doctor(model)
    x, y = data()
    with doctor.watch():
        nn.functional.cross_entropy(model(x), y).backward()
    report = doctor.report()
    assert report.observations.custom_functions == []
    reason = {s["check"]: s["reason"] for s in report.checks_skipped}["gradient-check"]
    assert "no custom autograd.Function was called while watching" in reason


# ---------------------------------------------------------------------------- the check alone
def _record(errors, *, noise=None, dtype="float64", skipped=None):
    results = [{"fd": 1.0, "ad": 1.0 - e, "rel_error": e, **({"noise_rel": noise} if noise is not None else {})}
               for e in errors]
    return {"kind": "function", "name": "F", "where": "layer", "input_shapes": [[2, 3]], "dtype": dtype,
            "method": "directional u^T J v", "results": results, "max_rel_error": max(errors, default=0.0),
            "skipped": skipped}


@pytest.mark.parametrize("errors,noise,dtype,fires", [
    ([1e-9, 2e-9], None, "float64", False),
    ([0.5, 1e-9], None, "float64", True),
    ([2e-3], None, "float64", True),           # just above 1e-3
    ([0.9e-3], None, "float64", False),         # just below
    ([2e-3], 1e-3, "float64", False),           # within 3x the finite differences' own noise
    ([2e-3], None, "float32", False),           # float32: 100x the tolerance
    ([0.2], None, "float32", True),
])
def test_the_check_judges_watched_records(errors, noise, dtype, fires):
    obs = Observations(custom_functions=[_record(errors, noise=noise, dtype=dtype)])
    found = list(GradientCheck().evaluate(obs))
    assert bool(found) == fires
    if fires:
        assert found[0].where == "layer" and found[0].evidence["max_rel_error"] == max(errors)


def test_the_check_skips_when_every_function_was_skipped():
    obs = Observations(custom_functions=[_record([], skipped="its forward is piecewise constant")])
    with pytest.raises(Skip, match="`F` not verified: its forward is piecewise constant"):
        list(GradientCheck().evaluate(obs))


def test_the_checkup_record_wins_over_the_watch_record_in_the_same_observations():
    obs = Observations(custom_functions=[_record([0.5])])
    obs.experiments["gradcheck"] = {"skipped": "checkup ran it"}
    with pytest.raises(Skip, match="checkup ran it"):
        list(GradientCheck().evaluate(obs))


# ---------------------------------------------------------------------------- hygiene
def test_apply_is_wrapped_until_the_first_call_only():
    model = Net(MySigmoid)
    x, y = data()
    assert "apply" not in MySigmoid.__dict__
    doctor = Doctor(model)
    with doctor.watch():
        assert "apply" in MySigmoid.__dict__  # wrapped while watching, before the first call
        nn.functional.cross_entropy(model(x), y).backward()
        # captured: the original is back at once, later steps pay nothing
        assert "apply" not in MySigmoid.__dict__
        assert "apply" not in WrongScale.__dict__ or WrongScale in PATCHES.patched()
    assert "apply" not in WrongScale.__dict__ and "apply" not in MySigmoid.__dict__
    assert PATCHES.patched() == []
    assert not any("apply" in c.__dict__ for c in (StraightThroughRound, ScaledLinear, WrongWeightGrad))


def test_the_wrappers_are_removed_when_the_loop_raises():
    model = Net(WrongScale)
    doctor = Doctor(model)
    with pytest.raises(RuntimeError, match="user error"):
        with doctor.watch():
            assert "apply" in WrongScale.__dict__
            raise RuntimeError("user error")
    assert "apply" not in WrongScale.__dict__ and PATCHES.patched() == []
    # and after a raise mid-training, with a capture made
    model = Net(WrongScale)
    doctor = Doctor(model)
    with pytest.raises(RuntimeError, match="user error"):
        train(model, steps=4, doctor=doctor, raise_at=2)
    assert PATCHES.patched() == [] and "apply" not in WrongScale.__dict__
    assert gradcheck_findings(doctor.report())  # what was seen is still verified


def test_a_function_with_its_own_apply_gets_it_back():
    class OwnApply(MySigmoid):
        @classmethod
        def apply(cls, *args, **kwargs):
            return super().apply(*args, **kwargs)

    own = OwnApply.__dict__["apply"]
    model = Net(OwnApply)
    report, _ = watch(model)
    assert OwnApply.__dict__["apply"] is own
    assert gradcheck_findings(report) == []
    assert report.observations.custom_functions[0]["name"] == "OwnApply"


def test_two_doctors_watching_at_once_leave_nothing_behind():
    a, b = Net(WrongScale), Net(WrongScale)
    x, y = data()
    da, db = Doctor(a), Doctor(b)
    with da.watch():
        with db.watch():
            nn.functional.cross_entropy(b(x), y).backward()
        assert "apply" in WrongScale.__dict__  # still wanted by the first doctor
        nn.functional.cross_entropy(a(x), y).backward()
    assert PATCHES.patched() == [] and "apply" not in WrongScale.__dict__
    assert gradcheck_findings(da.report()) and gradcheck_findings(db.report())


def test_a_subclass_and_its_parent_are_both_verified():
    class Both(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(8, 16)

        def forward(self, x):
            h = self.body(x)
            return MySigmoid.apply(h) + SlightlyWrongSigmoid.apply(h)

    model = Both()
    doctor = Doctor(model)
    x, _ = data()
    with doctor.watch():
        model(x).sum().backward()
    report = doctor.report()
    names = {r["name"]: r for r in report.observations.custom_functions}
    assert set(names) == {"MySigmoid", "SlightlyWrongSigmoid"}
    assert [f.evidence["unit"] for f in gradcheck_findings(report)] == ["SlightlyWrongSigmoid"]
    assert PATCHES.patched() == []


@pytest.mark.parametrize("fn", [WrongScale, GlobalRngDropout, OwnGeneratorNoise], ids=lambda c: c.__name__)
def test_training_and_random_streams_are_the_same_with_and_without_the_doctor(fn):
    def run(with_doctor):
        torch.manual_seed(0)
        random.seed(0)
        np.random.seed(0)
        OwnGeneratorNoise.gen.manual_seed(123)
        model = Net(fn)
        if with_doctor:
            doctor = Doctor(model)
            train(model, doctor=doctor)
            doctor.report()
            doctor.report()  # verified once; a second report reads the same records
        else:
            train(model)
        return (copy.deepcopy(model.state_dict()), torch.rand(3), random.random(), np.random.rand(),
                torch.get_default_dtype())

    (wa, ta, ra, na, da), (wb, tb, rb, nb, db) = run(False), run(True)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert torch.equal(ta, tb) and ra == rb and na == nb and da == db == torch.float32


def test_checkup_after_watch_reports_the_function_once():
    torch.manual_seed(0)
    model = Net(WrongScale)
    doctor = Doctor(model, optimizer=None)
    report = train(model, doctor=doctor)
    x, y = data()
    merged = report.merge(doctor.checkup((x[:16], y[:16]), loss_fn=nn.CrossEntropyLoss(), select=["gradient-check"]))
    found = [f for f in merged.findings if f.check == "gradient-check"]
    assert len(found) == 1 and found[0].evidence["unit"] == "WrongScale"


class MyReLU(torch.autograd.Function):
    """pytorch-examples' custom ReLU (correct; its kink at 0)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        grad_x = grad_output.clone()
        grad_x[x < 0] = 0
        return grad_x


class WrongReLU(MyReLU):
    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        grad_x = grad_output.clone()
        grad_x[x < 0] = 0
        return grad_x * 3  # the bug


@pytest.mark.parametrize("fn,fires", [(MyReLU, False), (WrongReLU, True)], ids=["correct", "wrong"])
def test_a_function_fed_exact_zeros_at_its_kink_is_judged_off_the_kink(fn, fires):
    class AfterReLU(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(8, 16)

        def forward(self, x):
            return fn.apply(torch.relu(self.body(x)))  # half the inputs are exactly 0

    model = AfterReLU()
    doctor = Doctor(model)
    x, _ = data()
    with doctor.watch():
        model(x).pow(2).mean().backward()
    report = doctor.report()
    (rec,) = report.observations.custom_functions
    assert rec["skipped"] is None
    assert bool(gradcheck_findings(report)) == fires


SCRIPT = '''
import torch
from torch import nn


class WrongScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2.0

    @staticmethod
    def backward(ctx, grad):
        return grad * 0.5


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(8, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(WrongScale.apply(self.body(x)))


torch.manual_seed(0)
x, y = torch.randn(256, 8), torch.randint(0, 3, (256,))
model = Net()
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for step in range(200):
    idx = torch.randint(0, 256, (32,))
    opt.zero_grad()
    nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
    opt.step()
'''


def test_nndoctor_check_without_experiments_names_the_wrong_function(tmp_path):
    """A real subprocess run of the CLI: watching alone (--no-experiments) leads with the
    wrong backward, and the exit code says error."""
    import json
    import os
    import subprocess
    import sys

    script = tmp_path / "train_custom_fn.py"
    script.write_text(SCRIPT)
    out = tmp_path / "report.json"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "nndoctor", "check", str(script), "--steps", "8",
                           "--no-experiments", "--json", str(out)], capture_output=True, text=True,
                          timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    first = report["findings"][0]
    assert first["check"] == "gradient-check" and first["evidence"]["unit"] == "WrongScale"
    assert report["diagnosis"]["cause"] == "gradient-check"
    assert first["evidence"]["max_rel_error"] > first["evidence"]["tolerance"] == 1e-3
