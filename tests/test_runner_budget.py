"""The experiments' time budget: derived from the script's measured step time when the
user gave no --timeout, served to the probes that most change the diagnosis first, the
long probes shortened (never below a useful length) rather than dropped, and every
experiment that is dropped shown on the console with its reason."""

from __future__ import annotations

import io
import textwrap
import time
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch
from torch import nn

from _scripts import write
from nndoctor._experiment_budget import SIZINGS, BudgetPlanner, derived_budget
from nndoctor._experiments import DEFAULT_OPTIONS, run_checkup
from nndoctor._runner import run_script
from nndoctor._runner_session import _Session

def blobs(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return x, (x @ torch.randn(4, 3, generator=g)).argmax(1)


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))


class Slow(nn.Module):
    """An MLP whose forward takes at least ``seconds``: a step cost the planner measures
    on the copy, whatever the machine's load (which only makes it slower)."""

    def __init__(self, seconds=0.02):
        super().__init__()
        self.net, self.seconds = mlp(), seconds

    def forward(self, x):
        time.sleep(self.seconds)
        return self.net(x)


# --------------------------------------------------------------- the derived budget
def test_derived_budget_grows_with_the_step_time_between_a_floor_and_a_ceiling():
    assert derived_budget(None) == derived_budget(0.0) == derived_budget(float("nan")) == 120.0
    assert derived_budget(0.01) == 120.0  # a small script keeps the former fixed budget
    one, two, three = derived_budget(0.5), derived_budget(1.0), derived_budget(1.5)
    assert 120.0 < one < two < three  # a slower step buys proportionally more time
    assert three - two == pytest.approx(two - one, abs=1.0)
    assert float(one).is_integer()  # shown as "the experiments' time budget (210 s)"
    assert derived_budget(100.0) == derived_budget(3.0) == 300.0  # never a quarter of an hour


def test_session_step_time_is_the_median_gap_after_the_first_step():
    s = _Session(Path("x.py"), "x.py", steps=5, timeout=1, doctor_kwargs={}, on_event=None)
    assert s.step_seconds is None
    s.first_forward_at = 10.0
    s.step_marks = [15.0]  # one step only: its whole time (compile, first batch) is all there is
    assert s.step_seconds == pytest.approx(5.0)
    s.step_marks = [15.0, 16.0, 16.5, 18.5]  # the first step's 5 s (a cold start) does not count
    assert s.step_seconds == pytest.approx(1.0)


def test_experiment_budget_is_the_users_timeout_or_derived_from_the_step_time():
    s = _Session(Path("x.py"), "x.py", steps=5, timeout=1, doctor_kwargs={}, on_event=None)
    s.first_forward_at, s.step_marks = 0.0, [1.0, 3.0, 5.0]  # 2 s per step
    assert s.experiment_budget == derived_budget(2.0) > 120.0
    s.experiment_timeout = 45.0
    assert s.experiment_budget == 45.0
    s.experiment_timeout = 0.0  # --timeout 0: no limit (not a zero budget)
    assert s.experiment_budget is None


# --------------------------------------------------------------- sizing the probes
def test_planner_leaves_the_probes_whole_when_the_budget_affords_them():
    p = BudgetPlanner(600.0, started=0.0, step_seconds=0.01)
    opts = dict(DEFAULT_OPTIONS)
    assert p.size("lr_sweep", opts, ["lr_range", "random_input"], now=1.0) is opts
    assert p.notes() == []


def test_planner_cuts_a_long_probe_to_what_is_left_after_the_room_kept_for_the_next():
    p = BudgetPlanner(100.0, started=0.0, step_seconds=1.0)
    opts = dict(DEFAULT_OPTIONS)
    # 100 s left; the range test and random inputs after it need 30 + 35 steps at least:
    # 35 s remain for 3 copies -> 11 steps each, not 25.
    sized = p.size("lr_sweep", opts, ["lr_range", "random_input"], now=0.0)
    assert sized["sweep_steps"] == 11 and opts["sweep_steps"] == 25
    assert "11 steps instead of 25" in p.notes()[0]
    # Nothing left at all: the shortest useful run, never fewer steps.
    assert p.size("lr_sweep", opts, ["lr_range"], now=99.0)["sweep_steps"] == SIZINGS["lr_sweep"].minimum


def test_planner_uses_the_probes_measured_step_cost_once_known():
    p = BudgetPlanner(100.0, started=0.0, step_seconds=1.0)
    p.record(steps=200, seconds=2.0)  # the overfit probe: 10 ms a step, not the script's 1 s
    assert p.unit_seconds() == pytest.approx(0.01)
    assert p.size("lr_sweep", dict(DEFAULT_OPTIONS), ["lr_range"], now=10.0)["sweep_steps"] == 25


def test_planner_times_a_copy_before_cutting_a_probe_on_its_first_guess():
    # The script's step "took" 1 s (observers on every layer, the whole batch): a sweep
    # would be cut to 11 steps on that guess. A copy's steps, timed, cost 10 ms: whole.
    p = BudgetPlanner(100.0, started=0.0, step_seconds=1.0)
    timed = []
    sized = p.size("lr_sweep", dict(DEFAULT_OPTIONS), ["lr_range", "random_input"], now=0.0,
                   measure=lambda: timed.append(1) or (3, 0.03))
    assert sized["sweep_steps"] == 25 and timed == [1] and p.notes() == []
    # Measured once: the next probe is sized on that, without timing again.
    p.size("lr_range", dict(DEFAULT_OPTIONS), [], now=1.0, measure=lambda: timed.append(1) or (3, 0.03))
    assert timed == [1]
    # A copy as slow as the guess: the cut stands.
    q = BudgetPlanner(100.0, started=0.0, step_seconds=1.0)
    cut = q.size("lr_sweep", dict(DEFAULT_OPTIONS), ["lr_range", "random_input"], now=0.0, measure=lambda: (3, 3.0))
    assert cut["sweep_steps"] < 25


def test_a_short_budget_shortens_the_lr_sweep_instead_of_dropping_it():
    x, y = blobs()
    model = Slow(0.02)
    # A copy's step takes >= 20 ms and the budget is 0.5 s: a full sweep (3 x 25 steps,
    # >= 1.5 s) does not fit, its shortest useful run is given instead.
    report = run_checkup(model, (x, y), optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                         select="lr-sweep", time_budget=0.5, step_seconds=1.0)
    sweep = report.experiments["lr_sweep"]
    assert sweep.steps == SIZINGS["lr_sweep"].minimum
    assert all(len(t.losses) == sweep.steps + 1 for t in sweep.trials.values())
    assert "lr-sweep" in report.checks_run
    assert any("LR sweep ran 10 steps instead of 25" in n for n in report.notes)


def test_a_measured_fast_copy_keeps_its_whole_sweep_despite_a_slow_first_guess():
    x, y = blobs()
    model = mlp()
    # The script's step "took" 1 s, but a copy's takes ~1 ms: timed, the sweep is whole.
    report = run_checkup(model, (x, y), optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                         select="lr-sweep", time_budget=30.0, step_seconds=1.0)
    assert report.experiments["lr_sweep"].steps == 25
    assert not any("instead of" in n for n in report.notes)
    assert len(report.experiments["lr_range"].lrs) > 30


def test_lr_sweep_is_served_before_every_other_experiment():
    x, y = blobs()
    model = mlp()
    report = run_checkup(model, (x, y), optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                         select="random-input-loss,gradient-check,overfit-tiny-batch,lr-sweep", time_budget=0.0)
    skipped = {s["check"]: s["reason"] for s in report.checks_skipped}
    assert "lr-sweep" in report.checks_run and "lr-sweep" not in skipped
    for later in ("overfit-tiny-batch", "random-input-loss", "gradient-check"):
        assert "time budget" in skipped[later], later


def test_a_slow_model_gets_a_short_sweep_and_still_its_overfit():
    # >= 20 ms a step and 1.5 s: the sweep keeps room for the overfit (60 steps, >= 1.2 s),
    # so it runs <= (1.5 - 1.2) / 3 / 0.02 = 5 -> its shortest, 10 steps (>= 0.6 s); the
    # overfit then starts within the budget.
    x, y = blobs()
    model = Slow(0.02)
    report = run_checkup(model, (x, y), optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                         select="overfit-tiny-batch,lr-sweep", time_budget=1.5, step_seconds=1.0)
    assert report.experiments["lr_sweep"].steps == SIZINGS["lr_sweep"].minimum
    assert {"lr-sweep", "overfit-tiny-batch"} <= set(report.checks_run)


# --------------------------------------------------------------- the runner and the CLI
def test_runner_derives_the_experiments_budget_from_the_scripts_step_time(tmp_path):
    out = io.StringIO()
    with redirect_stdout(out):
        run = run_script(write(tmp_path, "train"), steps=6, select="lr-sweep")
    assert run.experiments == "ran"
    assert run.step_seconds is not None and run.step_seconds > 0
    assert run.experiment_budget == derived_budget(run.step_seconds)


def test_runner_timeout_zero_means_no_limit_for_the_experiments(tmp_path):
    out = io.StringIO()
    with redirect_stdout(out):
        run = run_script(write(tmp_path, "train"), steps=4, select="lr-sweep", timeout=0)
    assert run.experiments == "ran" and run.experiment_budget is None
    assert "lr-sweep" in run.report.checks_run


SLOW = textwrap.dedent("""
    import time
    import torch
    from torch import nn

    class Slow(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            time.sleep(0.5)
            return self.fc(x)

    torch.manual_seed(0)
    model = Slow()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(32, 4)
    y = torch.randint(0, 3, (32,))
    for step in range(100):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
""")


def test_cli_shows_each_experiment_the_budget_dropped_with_its_reason(tmp_path, monkeypatch):
    # A 0.5 s step: the LR sweep alone (at its shortest, 3 x 10 steps) outlasts --timeout 12,
    # so the random-input test that comes after it never starts. In-process (typer's
    # CliRunner): a fresh interpreter's imports could eat the script's share of the 12 s.
    from typer.testing import CliRunner

    from nndoctor.cli import app

    script = tmp_path / "slow.py"
    script.write_text(SLOW)
    monkeypatch.chdir(tmp_path)
    torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1)  # torch's lazy imports, done before the clock runs
    result = CliRunner().invoke(app, ["check", str(script), "--steps", "3", "--timeout", "12",
                                      "--select", "lr-sweep,random-input-loss"], catch_exceptions=False)
    assert result.exit_code in (0, 1), result.output
    err = getattr(result, "stderr", None) or result.output
    lines = [ln for ln in err.splitlines() if "experiment random-input-loss skipped:" in ln]
    assert lines and "time budget (12 s)" in lines[0] and "--timeout" in lines[0], err
