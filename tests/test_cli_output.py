"""The CLI's output options: --version, completion, --format github|sarif, --exit-zero,
the `--` hint, Ctrl-C during the experiments, refusing to create output folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from typer.testing import CliRunner

from nndoctor import Finding, Report, __version__
from nndoctor.checks._registry import REGISTRY
from nndoctor.cli import ExitCode, app
from nndoctor.reporters.annotations import github_annotations, sarif_log

ROOT = Path(__file__).resolve().parents[1]
SOFTMAX = ROOT / "examples" / "bug_softmax_cross_entropy.py"
HEALTHY = ROOT / "examples" / "healthy_mlp.py"
# A SUBSET of the official SARIF 2.1.0 schema (required fields, enums, types of the
# objects nndoctor writes), vendored so that no test needs the network.
SARIF_SCHEMA = json.loads((Path(__file__).parent / "sarif-2.1.0-subset.schema.json").read_text())

runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_version():
    result = cli("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"nndoctor {__version__}"
    proc = subprocess.run([sys.executable, "-m", "nndoctor", "--version"], capture_output=True, text=True,
                          cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.strip() == f"nndoctor {__version__}"


def test_shell_completion_is_offered():
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert "--install-completion" in result.stdout and "--show-completion" in result.stdout


def test_script_options_without_double_dash_get_a_hint():
    result = runner.invoke(app, ["check", str(HEALTHY), "--lr", "0.1"], env={"COLUMNS": "300"})
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "No such option: --lr" in text
    assert f"Script options go after --: nndoctor check {HEALTHY} -- --lr 0.1" in text
    assert "--logdir" not in text  # no misleading "possible options"


def _report():
    return Report(
        findings=[
            Finding("loss-input-format", "error", "Softmax fed to cross-entropy", "values in [0,1], 100%: yes",
                    "Remove the Softmax", where="loss", step=0, evidence={"line": 17}),
            Finding("dead-relu", "warning", "Dead ReLUs", "60% dead\nsecond line", "Use LeakyReLU",
                    where="net.1 (ReLU)"),
            Finding("label-distribution", "info", "Skewed labels", "90% class 0", "Rebalance"),
        ],
        checks_run=["loss-input-format", "dead-relu", "label-distribution"], steps_observed=4,
        model={"class": "Net", "parameters": 10, "trainable": 10}, script="examples/train,1.py",
        notes=["a note"],
    )


def test_github_annotations_format_and_escaping():
    lines = github_annotations(_report()).splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("::error title=nndoctor (loss-input-format),file=examples/train%2C1.py,line=17::")
    assert lines[1].startswith("::warning title=nndoctor (dead-relu),file=examples/train%2C1.py::")
    assert lines[2].startswith("::notice title=nndoctor (label-distribution),")
    assert "%0Asecond line" in lines[1] and "%0Afix: Use LeakyReLU" in lines[1]
    assert "at net.1 (ReLU)" in lines[1]
    assert github_annotations(Report()) == ""


def test_sarif_is_valid_and_has_one_rule_per_check():
    log = sarif_log(_report())
    jsonschema.validate(log, SARIF_SCHEMA)
    json.dumps(log, allow_nan=False)
    run = log["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    assert [r["id"] for r in rules] == list(REGISTRY)
    for r in rules:
        assert r["defaultConfiguration"]["level"] == {"error": "error", "warning": "warning",
                                                      "info": "note"}[REGISTRY[r["id"]].severity.value]
    results = run["results"]
    assert [r["ruleId"] for r in results] == ["loss-input-format", "dead-relu", "label-distribution"]
    assert [r["level"] for r in results] == ["error", "warning", "note"]
    for r in results:
        assert rules[r["ruleIndex"]]["id"] == r["ruleId"]
    loc = results[0]["locations"][0]
    assert loc["physicalLocation"]["artifactLocation"]["uri"] == "examples/train,1.py"
    assert loc["physicalLocation"]["region"]["startLine"] == 17
    assert results[1]["locations"][0]["logicalLocations"][0]["fullyQualifiedName"] == "net.1 (ReLU)"


def test_the_vendored_schema_rejects_bad_sarif():
    log = sarif_log(_report())
    bad = json.loads(json.dumps(log))
    bad["version"] = "2.0.0"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, SARIF_SCHEMA)
    bad = json.loads(json.dumps(log))
    bad["runs"][0]["results"][0]["level"] = "fatal"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, SARIF_SCHEMA)
    bad = json.loads(json.dumps(log))
    del bad["runs"][0]["tool"]["driver"]["name"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, SARIF_SCHEMA)


def _nndoctor(*args):
    env = {**os.environ, "COLUMNS": "120", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "nndoctor", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_format_github_on_a_real_run_and_exit_zero():
    rel = SOFTMAX.relative_to(ROOT)
    proc = _nndoctor("check", rel, "--steps", "6", "--no-experiments", "--format", "github")
    assert proc.returncode == ExitCode.FINDINGS, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines and all(line.startswith("::") for line in lines), proc.stdout  # nothing else on stdout
    assert any(line.startswith(f"::error title=nndoctor (loss-input-format),file={rel}") for line in lines)
    proc = _nndoctor("check", rel, "--steps", "6", "--no-experiments", "--format", "github", "--exit-zero")
    assert proc.returncode == ExitCode.OK, proc.stderr
    assert "loss-input-format" in proc.stdout


def test_format_sarif_on_a_real_run(tmp_path):
    proc = _nndoctor("check", SOFTMAX, "--steps", "6", "--no-experiments", "--format", "sarif", "--exit-zero")
    assert proc.returncode == 0, proc.stderr
    log = json.loads(proc.stdout)
    jsonschema.validate(log, SARIF_SCHEMA)
    assert "loss-input-format" in {r["ruleId"] for r in log["runs"][0]["results"]}


def test_exit_zero_keeps_failure_codes(tmp_path):
    script = tmp_path / "boom.py"
    script.write_text("raise RuntimeError('boom before training')\n")
    assert cli("check", script, "--exit-zero").exit_code == ExitCode.SCRIPT_RAISED
    assert cli("check", tmp_path / "missing.py", "--exit-zero").exit_code == ExitCode.USAGE_OR_INTERNAL


def test_json_into_a_missing_folder_is_refused(tmp_path):
    target = tmp_path / "no" / "such" / "r.json"
    result = cli("check", HEALTHY, "--json", target)
    assert result.exit_code == ExitCode.USAGE_OR_INTERNAL
    assert "does not exist" in " ".join(result.output.split())
    assert not (tmp_path / "no").exists()


def test_ctrl_c_during_the_experiments_reports_what_was_gathered(monkeypatch):
    from nndoctor import _experiments

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(_experiments, "run_checkup", interrupted)
    result = runner.invoke(app, ["check", str(SOFTMAX), "--steps", "6"], env={"COLUMNS": "200"})
    assert result.exit_code == ExitCode.USAGE_OR_INTERNAL
    assert "error[loss-input-format]" in result.stdout  # the watched findings are reported
    assert "interrupted during the experiments after 6 watched step(s)" in " ".join(result.output.split())


def test_to_json_creates_the_files_folder_only(tmp_path):
    Report().to_json(tmp_path / "new" / "r.json")
    assert (tmp_path / "new" / "r.json").is_file()
    with pytest.raises(FileNotFoundError):
        Report().to_json(tmp_path / "a" / "b" / "r.json")
    assert not (tmp_path / "a").exists()


def test_each_logdir_run_gets_its_own_folder(tmp_path):
    import datetime

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from nndoctor.cli import run_logdir

    logdir = tmp_path / "tb"
    for _ in range(2):
        r = cli("check", SOFTMAX, "--steps", "4", "--no-experiments", "--logdir", logdir)
        assert r.exit_code == ExitCode.FINDINGS, r.output
    runs = sorted(p for p in logdir.iterdir() if p.is_dir())
    assert len(runs) == 2 and all(p.name.startswith("run-") for p in runs)
    for run in runs:
        events = [p for p in run.iterdir() if p.name.startswith("events.out.tfevents")]
        assert len(events) == 1  # one run, one events file: nothing appended to another run
        acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
        acc.Reload()
        steps = [e.step for tag in acc.Tags()["scalars"] if "loss" in tag for e in acc.Scalars(tag)]
        assert steps and len(steps) == len(set(steps))  # no zig-zag: each step once per tag
    assert not [p for p in logdir.iterdir() if p.is_file()]  # nothing at the top level
    # same second: a numbered sibling, never the same folder
    now = datetime.datetime(2026, 1, 2, 3, 4, 5)
    first, second = run_logdir(tmp_path / "x", now=now), run_logdir(tmp_path / "x", now=now)
    assert first.name == "run-20260102-030405" and second.name == "run-20260102-030405_1"
    assert "TensorBoard: tensorboard --logdir" in r.stdout


def test_slow_first_step_says_so(tmp_path):
    script = tmp_path / "slow.py"
    script.write_text(
        "import time\nimport torch\nfrom torch import nn\n\n"
        "class Slow(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.fc = nn.Linear(4, 2)\n"
        "    def forward(self, x):\n        time.sleep(30)\n        return self.fc(x)\n\n"
        "model = Slow()\nopt = torch.optim.SGD(model.parameters(), lr=0.1)\n"
        "for _ in range(3):\n    loss = model(torch.randn(8, 4)).pow(2).mean()\n"
        "    opt.zero_grad(); loss.backward(); opt.step()\n")
    result = runner.invoke(app, ["check", str(script), "--timeout", "3"], env={"COLUMNS": "300"})
    assert result.exit_code == ExitCode.USAGE_OR_INTERNAL
    assert "did not finish within --timeout 3 s" in " ".join(result.output.split())
    assert "no module forward with gradients" not in result.output
