"""The command line: real subprocess runs on the bundled examples, and typer's CliRunner
for every option and exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from typer.testing import CliRunner

from _scripts import write
from nndoctor._catalogue import check_files, render_check_page, render_explain
from nndoctor.checks._registry import REGISTRY
from nndoctor.cli import ExitCode, app

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SCHEMA = json.loads((Path(__file__).parent / "contract_schema.json").read_text())

runner = CliRunner()


def validate(report: dict) -> None:
    jsonschema.validate(report, SCHEMA)


def cli(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def nndoctor(*args: str, timeout: float = 150) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "250", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "nndoctor", *map(str, args)], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=timeout,
    )


def test_exit_codes_are_the_contract():
    assert [(c.name, int(c)) for c in ExitCode] == [
        ("OK", 0), ("FINDINGS", 1), ("USAGE_OR_INTERNAL", 2), ("SCRIPT_RAISED", 3)]


# ------------------------------------------------------------------ real subprocess runs
def test_healthy_example_exits_0_with_a_valid_json_report(tmp_path):
    out = tmp_path / "report.json"
    proc = nndoctor("check", EXAMPLES / "healthy_mlp.py", "--steps", "12", "--json", out)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    validate(report)
    assert report["steps_observed"] == 12
    assert report["model"] == {"class": "Sequential", "parameters": 26122, "trainable": 26122}
    assert [f for f in report["findings"] if f["severity"] == "error"] == []
    assert {"overfit-tiny-batch", "lr-sweep", "dead-relu"} <= set(report["checks_run"])
    assert "No problem found" in proc.stdout or "0 error(s)" in proc.stdout


BUGS = [
    # script, the check that must fire (an error unless noted), the layer it must name
    ("bug_missing_zero_grad.py", "grad-not-zeroed", None),
    ("bug_softmax_cross_entropy.py", "loss-input-format", "loss"),
    # a warning on its own; the 0-255 inputs also blow up the first conv (activation-std)
    ("bug_unnormalized_input.py", "input-normalization", None),
    ("bug_nan_log.py", "nan-trace", "loss"),
    ("bug_frozen_detach.py", "frozen-layer", "encoder.0"),
]


@pytest.mark.parametrize("script,check_id,where", BUGS, ids=[b[0][:-3] for b in BUGS])
def test_bug_examples_are_diagnosed(tmp_path, script, check_id, where):
    out = tmp_path / "report.json"
    proc = nndoctor("check", EXAMPLES / script, "--steps", "10", "--no-experiments", "--json", out)
    assert proc.returncode == int(ExitCode.FINDINGS), proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    validate(report)
    found = [f for f in report["findings"] if f["check"] == check_id]
    assert found, [f["check"] for f in report["findings"]]
    assert f"[{check_id}]" in proc.stdout
    if where is not None:
        assert any(f["where"] == where for f in found)
        assert f"[{check_id}]" in proc.stdout and f"at {where}" in proc.stdout
    assert "nndoctor:" in proc.stderr
    if found[0]["severity"] == "error":
        assert check_id in proc.stderr  # the exit message names the failing checks


def test_manual_sgd_example_runs_with_experiments():
    r = runner.invoke(app, ["check", str(EXAMPLES / "manual_sgd.py"), "--steps", "8", "--format", "json"],
                      env={"COLUMNS": "250"}, catch_exceptions=False)
    assert r.exit_code == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)  # stdout holds the JSON report and nothing else
    validate(report)
    assert "overfit-tiny-batch" in report["checks_run"]
    assert "SGD with lr=0.2" in r.stderr


def test_console_script_is_installed():
    exe = Path(sys.executable).parent / "nndoctor"
    if not exe.exists():
        pytest.skip("the nndoctor console script is not next to this python")
    proc = subprocess.run([str(exe), "explain", "dead-relu", "--format", "markdown"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout == render_explain(REGISTRY["dead-relu"])


# ------------------------------------------------------------------ CliRunner: bad inputs
def test_missing_file_exits_2(tmp_path):
    r = cli("check", tmp_path / "train.py")
    assert r.exit_code == 2 and "no such file" in r.stderr and r.stdout == ""


def test_syntax_error_exits_2_with_the_line(tmp_path):
    r = cli("check", write(tmp_path, "syntax_error"))
    assert r.exit_code == 2
    assert "syntax_error.py:2" in r.stderr and "x = = 1" in r.stderr


def test_script_raising_before_training_exits_3(tmp_path):
    r = cli("check", write(tmp_path, "raise_before"))
    assert r.exit_code == 3
    assert "FileNotFoundError" in r.stderr and "raise_before.py:4" in r.stderr
    assert "_runner.py" not in r.stderr


def test_script_raising_while_training_exits_3_with_findings_so_far(tmp_path):
    out = tmp_path / "r.json"
    r = cli("check", write(tmp_path, "raise_during"), "--steps", "10", "--no-experiments", "--json", out)
    assert r.exit_code == 3
    assert "ZeroDivisionError" in r.stderr and "at step 4" in r.stderr and "raise_during.py:18" in r.stderr
    report = json.loads(out.read_text())
    validate(report)
    assert report["steps_observed"] == 4
    assert "4 step(s) watched" in r.stdout


def test_verbose_shows_the_users_traceback(tmp_path):
    r = cli("check", write(tmp_path, "raise_during"), "--steps", "10", "--no-experiments", "-v")
    assert r.exit_code == 3 and "Traceback" in r.stderr and "ratio = 1 / 0" in r.stderr
    assert "runpy" not in r.stderr


@pytest.mark.parametrize("name,says", [
    ("never_trains", "no module forward with gradients"),
    ("no_backward", "forward seen but no backward"),
    ("no_torch", "no torch.nn.Module was ever called"),
])
def test_script_that_never_trains_exits_2(tmp_path, name, says):
    r = cli("check", write(tmp_path, name))
    assert r.exit_code == 2 and says in r.stderr and "--" in r.stderr


def test_timeout_with_no_step_exits_2(tmp_path):
    r = cli("check", write(tmp_path, "sleepy"), "--timeout", "0.5")
    assert r.exit_code == 2 and "--timeout 0.5" in r.stderr


def test_stdin_reading_script_gets_eof(tmp_path):
    r = cli("check", write(tmp_path, "stdin"), "--steps", "5", "--no-experiments")
    assert r.exit_code == 0, r.stderr
    r = cli("check", write(tmp_path, "input_eof"))
    assert r.exit_code == 3 and "EOFError" in r.stderr


def test_dataloader_workers(tmp_path):
    r = cli("check", EXAMPLES / "healthy_mlp.py", "--steps", "4", "--no-experiments",
            "--", "--workers", "2", "--epochs", "1")
    assert r.exit_code == 0, r.stderr
    assert "4 step(s) watched" in r.stdout


def test_sys_exit_inside_the_script_reports_normally(tmp_path):
    r = cli("check", write(tmp_path, "exit_during"), "--steps", "20", "--no-experiments")
    assert r.exit_code == 0, r.stderr
    assert "6 step(s) watched" in r.stdout and "sys.exit(0)" in r.stderr


def test_arguments_after_double_dash_reach_the_script(tmp_path):
    out = tmp_path / "lr.txt"
    r = cli("check", write(tmp_path, "with_args"), "--steps", "3", "--no-experiments",
            "--", "--lr", "0.5", "--out", out)
    assert r.exit_code == 0, r.stderr
    assert out.read_text() == "0.5"
    # without them argparse exits with 2 before any training: nndoctor says so
    r = cli("check", write(tmp_path, "with_args"), "--steps", "3")
    assert r.exit_code == 2 and "sys.exit(2)" in r.stderr and "after `--`" in r.stderr


# ------------------------------------------------------------------ CliRunner: options
def test_format_json_puts_only_the_report_on_stdout(tmp_path):
    r = cli("check", write(tmp_path, "train"), "--steps", "5", "--no-experiments", "--format", "json")
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    validate(report)
    assert report["script"].endswith("train.py")
    assert "step 0 loss" in r.stderr  # the script's prints went to stderr


def test_select_and_ignore(tmp_path):
    script = write(tmp_path, "train")
    r = cli("check", script, "--steps", "5", "--no-experiments", "--format", "json",
            "--select", "dead-relu,frozen-layer")
    report = json.loads(r.stdout)
    assert set(report["checks_run"]) | {s["check"] for s in report["checks_skipped"]} == {"dead-relu", "frozen-layer"}
    r = cli("check", script, "--steps", "5", "--no-experiments", "--format", "json", "--ignore", "dead-relu")
    report = json.loads(r.stdout)
    assert "dead-relu" not in report["checks_run"] and "frozen-layer" in report["checks_run"]
    r = cli("check", script, "--select", "dead-rel")
    assert r.exit_code == 2 and "dead-relu" in r.stderr and r.stdout == ""


def test_no_experiments_lists_them_as_skipped(tmp_path):
    r = cli("check", write(tmp_path, "train"), "--steps", "5", "--no-experiments", "--format", "json")
    skipped = {s["check"]: s["reason"] for s in json.loads(r.stdout)["checks_skipped"]}
    for cid in ("overfit-tiny-batch", "random-input-loss", "lr-sweep", "gradient-check"):
        assert "--no-experiments" in skipped[cid]


def test_experiments_run_by_default(tmp_path):
    r = cli("check", write(tmp_path, "train"), "--steps", "5", "--format", "json",
            "--select", "overfit-tiny-batch,gradient-check")
    assert r.exit_code == 0, r.stderr
    assert set(json.loads(r.stdout)["checks_run"]) == {"overfit-tiny-batch", "gradient-check"}


def test_fail_on_lowers_the_bar(tmp_path):
    script = EXAMPLES / "bug_unnormalized_input.py"
    args = ["check", script, "--steps", "6", "--no-experiments", "--select", "input-normalization"]
    r = cli(*args)
    assert r.exit_code == 0, r.stdout + r.stderr   # input-normalization is a warning here
    assert "[input-normalization]" in r.stdout
    r = cli(*args, "--fail-on", "warning")
    assert r.exit_code == 1 and "input-normalization" in r.stderr


def test_bad_option_values_exit_2(tmp_path):
    script = write(tmp_path, "train")
    assert cli("check", script, "--steps", "0").exit_code == 2
    assert cli("check", script, "--fail-on", "fatal").exit_code == 2
    assert cli("check", script, "--format", "yaml").exit_code == 2
    assert cli("check").exit_code == 2


def test_logdir_gets_tensorboard_files(tmp_path):
    logdir = tmp_path / "tb"
    r = cli("check", write(tmp_path, "train"), "--steps", "4", "--no-experiments", "--logdir", logdir)
    assert r.exit_code == 0, r.stderr
    assert any(p.name.startswith("events.out.tfevents") for p in logdir.rglob("*"))


# ------------------------------------------------------------------ catalogue
def test_checks_lists_every_check():
    r = cli("checks", "--format", "json")
    assert r.exit_code == 0
    assert [row["id"] for row in json.loads(r.stdout)] == list(REGISTRY)
    r = runner.invoke(app, ["checks"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and all(cid in r.stdout for cid in REGISTRY)


@pytest.mark.parametrize("check_id", list(REGISTRY))
def test_explain_prints_the_catalogue_page(check_id):
    r = cli("explain", check_id, "--format", "markdown")
    assert r.exit_code == 0
    # == checks/<id>.md (test below) without its first line, the maintainer comment
    assert r.stdout == render_explain(REGISTRY[check_id])
    page = render_check_page(REGISTRY[check_id])
    assert page.startswith("<!--") and page.endswith(r.stdout)
    assert "<!--" not in r.stdout and "Generated by" not in r.stdout


def test_explain_renders_and_rejects_unknown_ids():
    r = runner.invoke(app, ["explain", "dead-relu"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "What it measures" in r.stdout and "max_dead_fraction" in r.stdout
    r = cli("explain", "dead-rellu")
    assert r.exit_code == 2 and "dead-relu" in r.stderr


def test_committed_catalogue_is_up_to_date():
    problems = check_files(ROOT / "checks")
    assert not problems, (
        "checks/ is stale; regenerate it with `python -m nndoctor._catalogue write checks/`:\n"
        + "\n".join(problems)
    )
