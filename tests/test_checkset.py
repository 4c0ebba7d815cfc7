"""One check set: select, ignore and thresholds resolved once (config, then arguments or
options, then a call's own narrowing), validated at construction for every check kind,
and used by watch/report, checkup, the CLI runner and the DDP merge. Plus the judging
policy: a crashing check is visible (internal error skip + console note), and raises in
strict mode."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
import torch
from torch import nn

from nndoctor import Doctor
from nndoctor._checkset import STRICT_ENV, CheckSet
from nndoctor._doctor import NNDoctorUsageError

EXAMPLES = Path(__file__).parents[1] / "examples"


def _model_and_batch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    return model, (torch.randn(16, 4), torch.randint(0, 3, (16,)))


# -- construction-time validation, every kind -----------------------------------------
@pytest.mark.parametrize("kind_id, name", [
    ("dead-relu", "max_dead_fractio"),                      # passive
    ("overfit-tiny-batch", "no_such_threshold"),            # experiment
    ("ddp-same-batch-every-rank", "min_step"),              # distributed
])
def test_unknown_threshold_name_of_any_kind_fails_at_construction(kind_id, name):
    model, _ = _model_and_batch()
    with pytest.raises(NNDoctorUsageError, match=f"{kind_id}.*no threshold named '{name}'") as info:
        Doctor(model, thresholds={kind_id: {name: 1}})
    real = [t.name for t in CheckSet().get(kind_id).thresholds]
    assert all(t in str(info.value) for t in real)  # names the valid ones


@pytest.mark.parametrize("key", ["select", "ignore"])
@pytest.mark.parametrize("bad", ["overfit-tiny-bach", "ddp-set-epoch-mising", "dead-rellu"])
def test_unknown_id_of_any_kind_fails_at_construction(key, bad):
    model, _ = _model_and_batch()
    with pytest.raises(NNDoctorUsageError, match=f"unknown check id '{bad}' in {key}.*did you mean"):
        Doctor(model, **{key: [bad]})
    with pytest.raises(NNDoctorUsageError, match="unknown check id"):
        Doctor(model, thresholds={bad: {}})


def test_threshold_values_must_be_numbers():
    model, _ = _model_and_batch()
    with pytest.raises(NNDoctorUsageError, match="must be a number"):
        Doctor(model, thresholds={"dead-relu": {"max_dead_fraction": "high"}})


def test_layers_select_replaces_ignore_removes_thresholds_merge():
    first = CheckSet.resolve(["dead-relu", "nan-trace", "lr-sweep"], None, {"dead-relu": {"max_dead_fraction": 0.7}})
    second = CheckSet.resolve(None, ["nan-trace"], {"lr-sweep": {"min_gain": 0.5}}, base=first)
    assert second.ids == ("dead-relu", "lr-sweep")
    assert second.get("dead-relu").max_dead_fraction == 0.7
    assert second.thresholds["lr-sweep"] == {"min_gain": 0.5}
    assert CheckSet.resolve(["nan-trace"], None, None, base=second).ids == ("nan-trace",)


# -- checkup uses the Doctor's set ---------------------------------------------------
def _overfit_steps(report) -> list[int]:
    return [len(run["losses"]) - 1 for run in report.experiments["overfit"]["runs"]]


def test_thresholds_reach_the_checkup():
    model, batch = _model_and_batch()
    report = Doctor(model, thresholds={"overfit-tiny-batch": {"max_steps": 1}}).checkup(
        batch, select=["overfit-tiny-batch"])
    assert report.experiments["overfit"]["max_steps"] == 1
    assert _overfit_steps(report) and max(_overfit_steps(report)) <= 1
    # With the default (100 steps) the same probe runs longer: the threshold made the difference.
    default = Doctor(model).checkup(batch, select=["overfit-tiny-batch"])
    assert max(_overfit_steps(default)) > 1


def test_checkup_select_and_ignore():
    model, batch = _model_and_batch()
    doctor = Doctor(model)
    selected = doctor.checkup(batch, select=["chance-level-loss"])
    assert selected.checks_run + [s["check"] for s in selected.checks_skipped] == ["chance-level-loss"]
    assert set(selected.experiments) == {"init"}
    ignored = doctor.checkup(batch, select="chance-level-loss,overfit-tiny-batch", ignore=["overfit-tiny-batch"])
    assert set(ignored.experiments) == {"init"}
    # The Doctor's own ignore holds in the checkup, and a call's select may bring a check back.
    doctor = Doctor(model, ignore=["overfit-tiny-batch", "random-input-loss", "lr-sweep", "gradient-check"])
    assert set(doctor.checkup(batch).experiments) == {"init"}
    assert "overfit" in doctor.checkup(batch, select=["overfit-tiny-batch"]).experiments
    with pytest.raises(NNDoctorUsageError, match="unknown check id 'overfit' in select of checkup"):
        doctor.checkup(batch, select=["overfit"])


# -- the DDP merge uses the set's thresholds -------------------------------------------
def _rank_payload(rank: int) -> dict:
    from nndoctor._checkset import CheckSet

    ddp = [c.id for c in CheckSet().distributed]
    inputs = [[step, 1.0, 2.0] for step in range(3)]  # same batch on both ranks, 3 steps
    return {"rank": rank,
            "report": {"findings": [], "checks_run": [], "steps_observed": 3, "model": {"class": "Net"},
                       "checks_skipped": [{"check": c, "reason": "not a distributed run"} for c in ddp]},
            "facts": {"rank": rank, "world_size": 2, "ddp": True, "sharded": False, "inputs": inputs}}


def test_gather_judges_ddp_checks_with_the_doctors_thresholds():
    from nndoctor._distributed import merge_rank_payloads

    payloads = [_rank_payload(0), _rank_payload(1)]
    plain = merge_rank_payloads(payloads, checks=CheckSet())
    assert "ddp-same-batch-every-rank" in {f.check for f in plain.findings}
    model, _ = _model_and_batch()
    strict = Doctor(model, thresholds={"ddp-same-batch-every-rank": {"min_steps": 50}})
    merged = merge_rank_payloads(payloads, checks=strict.checkset)
    assert "ddp-same-batch-every-rank" not in {f.check for f in merged.findings}
    reason = {s["check"]: s["reason"] for s in merged.checks_skipped}["ddp-same-batch-every-rank"]
    assert "needs 50" in reason


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_ddp_checks_get_the_project_thresholds(tmp_path):
    shutil.copy(Path(__file__).parent / "scripts" / "ddp_no_sampler.py", tmp_path / "train.py")
    (tmp_path / "pyproject.toml").write_text(
        "[tool.nndoctor.thresholds.ddp-same-batch-every-rank]\nmin_steps = 50\n")
    out = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
           "-m", "nndoctor", "check", "train.py", "--steps", "6", "--no-experiments", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    # Without the config this script fires ddp-same-batch-every-rank (test_distributed_cli).
    assert "ddp-same-batch-every-rank" not in {f["check"] for f in report["findings"]}
    reason = {s["check"]: s["reason"] for s in report["checks_skipped"]}["ddp-same-batch-every-rank"]
    assert "needs 50" in reason


# -- [tool.nndoctor] keys reach `nndoctor check` ----------------------------------------
def _check(tmp_path, pyproject: str, *options: str):
    shutil.copy(EXAMPLES / "bug_missing_zero_grad.py", tmp_path / "train.py")
    (tmp_path / "pyproject.toml").write_text(pyproject)
    proc = subprocess.run([sys.executable, "-m", "nndoctor", "check", "train.py", "--no-experiments",
                           "--json", "r.json", *options], cwd=tmp_path, capture_output=True, text=True,
                          timeout=180)
    path = tmp_path / "r.json"
    return proc, (json.loads(path.read_text()) if path.exists() else None)


def test_config_steps_and_fail_on_are_honoured(tmp_path):
    proc, report = _check(tmp_path, "[tool.nndoctor]\nsteps = 6\nfail_on = \"info\"\n"
                                    "ignore = [\"grad-not-zeroed\"]\n")
    assert report is not None, proc.stderr
    assert report["steps_observed"] == 6
    # fail_on = "info": any finding at all fails; without findings the run exits 0.
    assert proc.returncode == (1 if report["findings"] else 0), proc.stderr
    # The command line wins over the config.
    proc, report = _check(tmp_path, "[tool.nndoctor]\nsteps = 6\nfail_on = \"info\"\n", "--steps", "4",
                          "--fail-on", "error")
    assert report["steps_observed"] == 4
    assert proc.returncode == (1 if any(f["severity"] == "error" for f in report["findings"]) else 0)


def test_config_fail_on_lowers_the_bar(tmp_path):
    base = "[tool.nndoctor]\nsteps = 8\nignore = [\"grad-not-zeroed\"]\n"
    proc, report = _check(tmp_path, base)
    assert report is not None, proc.stderr
    severities = {f["severity"] for f in report["findings"]}
    assert severities == {"warning"} and proc.returncode == 0, (severities, proc.stderr)
    proc, report = _check(tmp_path, base + "fail_on = \"warning\"\n")
    assert proc.returncode == 1 and "at or above 'warning'" in proc.stderr, proc.stderr


def test_run_script_honours_sample_every_and_dense_steps():
    from nndoctor._runner import run_script

    run = run_script(EXAMPLES / "bug_missing_zero_grad.py", steps=8, experiments=False,
                     sample_every=3, dense_steps=2)
    sampled = [i for i, s in enumerate(run.report.observations.steps) if s.sampled]
    assert sampled[:4] == [0, 1, 3, 6], sampled
    run = run_script(EXAMPLES / "bug_missing_zero_grad.py", steps=5, experiments=False)
    assert all(s.sampled for s in run.report.observations.steps[:5])  # short runs: every step


@pytest.mark.parametrize("toml, key", [
    ("steps = 0", "steps"),
    ("steps = \"6\"", "steps"),
    ("fail_on = \"fatal\"", "fail_on"),
    ("sample_every = 0", "sample_every"),
    ("dense_steps = -1", "dense_steps"),
    ("select = [\"dead-rellu\"]", "select"),
    ("thresholds = {dead-relu = {max_dead_fractio = 0.5}}", "max_dead_fractio"),
    ("stesp = 6", "stesp"),
])
def test_bad_config_exits_2_naming_file_and_key(tmp_path, toml, key):
    proc, report = _check(tmp_path, f"[tool.nndoctor]\n{toml}\n")
    assert proc.returncode == 2 and report is None, proc.stderr
    err = " ".join(proc.stderr.split())
    assert "pyproject.toml" in err and key in err, err


# -- no silent failure ----------------------------------------------------------------
def _broken_doctor(monkeypatch):
    from nndoctor.checks.activations import DeadRelu

    def evaluate(self, obs):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(DeadRelu, "evaluate", evaluate)
    model, batch = _model_and_batch()
    doctor = Doctor(model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    with doctor.watch():
        for _ in range(3):
            doctor.optimizer.zero_grad()
            nn.functional.cross_entropy(model(batch[0]), batch[1]).backward()
            doctor.optimizer.step()
    return doctor


def test_a_crashing_check_fails_in_strict_mode(monkeypatch):
    doctor = _broken_doctor(monkeypatch)
    with pytest.raises(RuntimeError, match="kaboom"):
        doctor.report()


def test_a_crashing_check_is_visible_in_a_normal_report(monkeypatch):
    from rich.console import Console

    doctor = _broken_doctor(monkeypatch)
    monkeypatch.setenv(STRICT_ENV, "0")
    report = doctor.report()
    reason = {s["check"]: s["reason"] for s in report.checks_skipped}["dead-relu"]
    assert reason.startswith("internal error") and "kaboom" in reason
    assert "dead-relu" not in report.checks_run
    out = StringIO()
    report.print(Console(file=out, width=100, color_system=None))
    text = " ".join(out.getvalue().split())
    assert "internal error in the check dead-relu: RuntimeError: kaboom" in text
    assert json.loads(report.to_json())["checks_skipped"]


def test_a_crashing_experiment_check_is_visible_in_checkup_too(monkeypatch):
    from nndoctor.checks.experiments import OverfitTinyBatch

    def evaluate(self, obs):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(OverfitTinyBatch, "evaluate", evaluate)
    model, batch = _model_and_batch()
    doctor = Doctor(model, thresholds={"overfit-tiny-batch": {"max_steps": 2}})
    with pytest.raises(RuntimeError, match="kaboom"):
        doctor.checkup(batch, select=["overfit-tiny-batch"])
    monkeypatch.setenv(STRICT_ENV, "")
    report = doctor.checkup(batch, select=["overfit-tiny-batch", "chance-level-loss"])
    reason = {s["check"]: s["reason"] for s in report.checks_skipped}["overfit-tiny-batch"]
    assert reason.startswith("internal error")
    assert "chance-level-loss" in report.checks_run  # the others still judged
    assert any("internal error" in n for n in report.notes)


def test_a_crashing_probe_fails_in_strict_mode(monkeypatch):
    from nndoctor.probes import init_loss

    def probe(ctx):
        raise RuntimeError("probe kaboom")

    monkeypatch.setattr(init_loss, "measure", probe)
    model, batch = _model_and_batch()
    with pytest.raises(RuntimeError, match="probe kaboom"):
        Doctor(model).checkup(batch, select=["chance-level-loss"])
    monkeypatch.setenv(STRICT_ENV, "0")
    report = Doctor(model).checkup(batch, select=["chance-level-loss"])
    assert "internal error" in report.experiments["init"].skipped


def test_a_misspelt_threshold_attribute_is_a_real_error(monkeypatch):
    from nndoctor.checks.activations import DeadRelu

    check = DeadRelu()
    with pytest.raises(AttributeError, match="max_dead_fractoin.*thresholds are.*max_dead_fraction"):
        check.max_dead_fractoin  # noqa: B018
    monkeypatch.setattr(DeadRelu, "evaluate", lambda self, obs: [self.finding("x")] if self.max_dead_fractoin else [])
    with pytest.raises(AttributeError):
        check.run(None)


def test_checks_only_read_attributes_they_have():
    """Statically: every ``self.NAME`` a check's methods read is a threshold, or defined
    on the class (a typo would otherwise only show when that branch runs)."""
    import ast
    import inspect
    import textwrap

    from nndoctor.checks._registry import REGISTRY

    problems = []
    for cls in REGISTRY.values():
        names = {t.name for t in cls.thresholds} | {"values"}
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in ("self", "cls") and isinstance(node.ctx, ast.Load)):
                if node.attr not in names and not hasattr(cls, node.attr):
                    problems.append(f"{cls.id}: self.{node.attr}")
    assert not problems, problems
