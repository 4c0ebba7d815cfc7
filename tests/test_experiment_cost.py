"""What the experiments cost, and what they may leave out without changing a verdict.

A probe step is one evaluation of the model (forward + backward): a closure optimizer's
copy (LBFGS) does one iteration per step, so a 25-step sweep costs 25 evaluations, not
up to 25 x 20 (pytorch/examples' time_sequence_prediction ran only its LR sweep in 300
s). The closure's first evaluation is the step's own loss, not a second pass. The LR
sweep's x10 trial is left out when the check's own reading of x0.1 and x1 says it cannot
change the verdict; an intervention's unfixed run is the overfit probe's run, not a
second one (a 44M-parameter Transformer: 125 Adam steps fewer)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from nndoctor._experiments import _x10_unneeded, run_checkup
from nndoctor._runner_session import _Session
from nndoctor.checks.lr_sweep import LrSweep
from nndoctor.probes import interventions, lr_sweep, overfit
from nndoctor.probes.context import ProbeContext, train_curve

EXPERIMENTS = ("overfit-tiny-batch", "random-input-loss", "lr-sweep", "gradient-check")


def wave(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=g, dtype=torch.float64) * 4 - 2
    return x, torch.sin(2 * x)


class Counted(nn.Module):
    """A small regression net that counts its forward calls and takes at least ``pause``
    seconds per call (a slow model, whatever the machine's load)."""

    def __init__(self, pause=0.0):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 1)).double()
        self.calls, self.pause = 0, pause

    def forward(self, x):
        self.calls += 1
        if self.pause:
            time.sleep(self.pause)
        return self.net(x)


# --------------------------------------------------------------- LBFGS: one evaluation a step
def test_lbfgs_copy_steps_walk_the_points_of_one_many_iteration_step():
    """Oracle: the script's LBFGS(max_iter=6), one step(closure), evaluates the loss at 6
    points; the probe's copy (one iteration per step) evaluates the same points, one per
    step, each step costing one forward and one backward."""
    x, y = wave()
    model = Counted()
    user = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=6, tolerance_grad=0, tolerance_change=0)
    ctx = ProbeContext(model, (x, y), user, nn.MSELoss())

    reference = ctx.copy_model()
    ref_opt = torch.optim.LBFGS(reference.parameters(), lr=0.5, max_iter=6, tolerance_grad=0, tolerance_change=0)
    seen = []

    def closure():
        ref_opt.zero_grad()
        loss = nn.functional.mse_loss(reference(x), y)
        seen.append(float(loss.detach()))
        loss.backward()
        return loss

    ref_opt.step(closure)
    assert len(seen) == 6

    clone = ctx.copy_model()
    opt = ctx.make_optimizer(clone)
    assert opt.param_groups[0]["max_iter"] == 1 and opt.param_groups[0]["lr"] == 0.5
    before_calls, before_steps = clone.calls, ctx.train_steps
    losses, _ = train_curve(ctx, clone, opt, x, y, 6)
    assert losses[:6] == pytest.approx(seen, rel=1e-10)
    assert clone.calls - before_calls == 7  # 6 steps + the loss after the last: no second pass
    assert ctx.train_steps - before_steps == 6  # the budget's unit: evaluations


def test_a_slow_lbfgs_model_runs_all_four_experiments_within_a_small_budget():
    """LBFGS(max_iter=20) on a model whose every evaluation takes >= 3 ms: with a probe
    step of 20 evaluations the experiments would need minutes; sized in evaluations they
    all run inside a 20 s budget, and the healthy model gets no error."""
    x, y = wave(64)
    model = Counted(pause=0.003)
    user = torch.optim.LBFGS(model.parameters(), lr=0.5)  # max_iter 20, as in time_sequence_prediction
    started = time.monotonic()
    report = run_checkup(model, (x, y), optimizer=user, loss_fn=nn.MSELoss(), select=",".join(EXPERIMENTS),
                         time_budget=20.0, step_seconds=0.3, interventions=0)
    wall = time.monotonic() - started
    skipped = {s["check"]: s["reason"] for s in report.checks_skipped}
    for cid in EXPERIMENTS:
        assert cid in report.checks_run or "inconclusive" in skipped.get(cid, ""), (cid, skipped.get(cid))
    assert not any("time budget" in r for r in skipped.values()), skipped
    assert not [f.check for f in report.findings if f.severity.name == "ERROR"]
    assert wall < 40.0  # never past the hard stop (twice the budget)
    # The sweep ran its full length: 25 steps of one evaluation each.
    assert report.experiments["lr_sweep"].steps == 25


def test_without_any_step_time_the_planner_times_a_copy_before_sizing():
    """A script whose first step outlasted --timeout gives no step time: the first probe
    is still sized, on a copy's timed steps, not run at full length on no estimate."""
    from nndoctor._experiment_budget import BudgetPlanner
    from nndoctor._experiments import DEFAULT_OPTIONS

    p = BudgetPlanner(60.0, started=0.0, step_seconds=None)
    sized = p.size("lr_sweep", dict(DEFAULT_OPTIONS), ["overfit"], now=0.0, measure=lambda: (3, 6.0))
    assert p.unit_seconds() == pytest.approx(2.0)
    assert sized["sweep_steps"] == 10  # (60 - 6 - 60 x 2) / 6 < 10: its shortest run


def test_the_pairing_test_is_skipped_rather_than_starve_the_gradient_check():
    """No room is kept for the pairing test; when its shortest run no longer fits, it is
    skipped, not run at its minimum over the time of the gradient check after it."""
    from nndoctor._experiment_budget import BudgetPlanner
    from nndoctor._experiments import DEFAULT_OPTIONS

    p = BudgetPlanner(100.0, started=0.0, step_seconds=1.0)
    p.record(3, 3.0)
    opts = dict(DEFAULT_OPTIONS)
    assert p.size("pairing", opts, ["gradcheck"], now=80.0) is None  # 20 s - 10 kept: < 2 x 40 steps
    assert p.size("pairing", opts, ["gradcheck"], now=0.0)["pairing_steps"] == 45  # (100 - 10) / 2
    assert p.size("lr_range", opts, ["gradcheck"], now=99.0)["range_iters"] == 30  # reserved: its shortest


def test_closure_scripts_budget_by_evaluation_not_by_lbfgs_step():
    s = _Session(Path("x.py"), "x.py", steps=5, timeout=1, doctor_kwargs={}, on_event=None)
    s.model = nn.Linear(2, 1)
    s.first_forward_at, s.step_marks = 0.0, [2.0, 4.0, 6.0]  # 2 s a step
    s.step_mark_calls = [20, 40, 60]  # 20 closure evaluations in each
    s.optimizers = [torch.optim.SGD(s.model.parameters(), lr=0.1)]
    assert s.evaluation_seconds == pytest.approx(2.0)  # one call a step: the step
    s.optimizers = [torch.optim.LBFGS(s.model.parameters(), lr=0.1)]
    assert s.evaluation_seconds == pytest.approx(0.1)
    assert s.step_seconds == pytest.approx(2.0)  # the script's own step is still reported
    # One step watched (a slow script stopped by --timeout): its calls since the first.
    s.step_marks, s.step_mark_calls = [50.0], [21]
    assert s.evaluation_seconds == pytest.approx(50.0 / 21)
    # No step finished before --timeout: the model's calls so far tell an evaluation's cost.
    s.step_marks, s.step_mark_calls = [], []
    s.seen.model_calls, s.last_call_at = 13, 60.0
    assert s.step_seconds is None and s.evaluation_seconds == pytest.approx(5.0)
    assert s.experiment_budget == 300.0  # not the 120 s of "unknown"


# --------------------------------------------------------------- the LR sweep's x10 trial
def blobs(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return x, (x @ torch.randn(4, 3, generator=g)).argmax(1)


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))


def verdict(record):
    return [(f.check, f.severity, (f.evidence or {}).get("better"))
            for f in LrSweep().evaluate(type("Obs", (), {"experiments": {"lr_sweep": record}})())]


@pytest.mark.parametrize("lr, x10_runs", [(0.5, False), (1e-6, True), (50.0, False)],
                         ids=["x1-trains", "x1-stalled", "x1-diverges"])
def test_x10_runs_only_when_it_can_change_the_verdict(lr, x10_runs):
    x, y = blobs()
    model = mlp()
    user = torch.optim.SGD(model.parameters(), lr=lr)
    check = LrSweep()
    ctx = ProbeContext(model, (x, y), user, None)
    short = lr_sweep.measure_sweep(ctx, x10_unneeded=lambda r: _x10_unneeded(check, r))
    full = lr_sweep.measure_sweep(ProbeContext(model, (x, y), user, None))
    assert ("10" in short.trials) is x10_runs
    assert list(short.trials) == [k for k in ("0.1", "1", "10") if k in short.trials]
    assert bool(ctx.notes) is not x10_runs
    for k in short.trials:  # the order of the trials changes no curve
        assert short.trials[k].losses == full.trials[k].losses
    assert verdict(short) == verdict(full)


def test_x10_is_left_out_when_x01_already_wins():
    record = lr_sweep.LrSweepRun(base_lr=1.0, optimizer="SGD", steps=25, n_samples=16, trials={
        "0.1": lr_sweep.LrTrial(lr=0.1, losses=[1.0] + [0.2 - 1e-4 * i for i in range(25)]),
        "1": lr_sweep.LrTrial(lr=1.0, losses=[1.0] + [1.0 + 1e-4 * (i % 2) for i in range(25)]),
    })
    assert "x0.1 already trains clearly better" in _x10_unneeded(LrSweep(), record)


# --------------------------------------------------------------- interventions reuse the overfit
def test_an_lr_intervention_reuses_the_overfits_full_unfixed_run():
    x, y = blobs()
    model = mlp()
    user = torch.optim.SGD(model.parameters(), lr=10.0)  # far too high: the tiny batch is not fitted
    ctx = ProbeContext(model, (x, y), user, None)
    fit = overfit.measure(ctx, max_steps=30)
    assert len(fit.runs[0].losses) == 31  # the full run, not fitted
    evidence = {"better": "x0.1"}
    kept = interventions.measure(ctx, "lr-sweep", evidence, max_steps=30)
    assert kept.before.losses == fit.runs[0].losses
    fresh = interventions.measure(ProbeContext(model, (x, y), user, None), "lr-sweep", evidence, max_steps=30)
    # Training it again gives the same curve (the reuse changes nothing but the cost).
    assert fresh.before.losses == pytest.approx(kept.before.losses, nan_ok=True)
    assert fresh.after.losses == kept.after.losses and fresh.intervention == kept.intervention


def test_a_fitted_overfit_run_is_not_reused():
    x, y = blobs()
    model = mlp()
    user = torch.optim.SGD(model.parameters(), lr=0.5)
    ctx = ProbeContext(model, (x, y), user, None)
    fit = overfit.measure(ctx, max_steps=300)
    assert len(fit.runs[0].losses) < 301  # stopped once fitted
    assert ctx.full_overfit_runs == {}
    assert not math.isnan(fit.runs[0].losses[-1])
