"""The README's Lightning, Hugging Face, pytest and CI snippets run (each block is found
by its `# README: <name>` first line)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def block(name: str) -> str:
    found = [b for b in re.findall(r"```(?:python|yaml)\n(.*?)```", README, flags=re.S)
             if b.startswith(f"# README: {name}\n")]
    assert len(found) == 1, f"README block {name!r} not found"
    return found[0]


def test_lightning_snippet(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(block("lightning"), "README.md:lightning", "exec"), {})
    out = capsys.readouterr().out
    assert "loss-input-format" in out  # the softmax bug the snippet carries


def test_transformers_snippet(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(block("transformers"), "README.md:transformers", "exec"), scope)
    report = scope["doctor"].report
    assert report.steps_observed == 10
    assert "nndoctor" in capsys.readouterr().out


def test_pytest_snippet_in_a_subprocess(tmp_path):
    (tmp_path / "test_readme_snippet.py").write_text(block("pytest"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    from importlib import metadata

    plugin = [] if any(ep.value == "nndoctor.pytest_plugin" for ep in metadata.entry_points(group="pytest11")) \
        else ["-p", "nndoctor.pytest_plugin"]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plugin,
                           "test_readme_snippet.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 passed" in proc.stdout


def test_ci_snippet_commands(tmp_path):
    shutil.copy(ROOT / "examples" / "bug_softmax_cross_entropy.py", tmp_path / "train.py")
    commands = re.findall(r"^\s*run: (.*)$", block("ci"), flags=re.M)
    assert len(commands) == 2
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    outputs = []
    for command in commands:
        redirect = None
        if ">" in command:
            command, redirect = (part.strip() for part in command.split(">", 1))
        argv = shlex.split(command)
        assert argv[0] == "nndoctor"
        proc = subprocess.run([sys.executable, "-m", "nndoctor", *argv[1:]], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        if redirect:
            (tmp_path / redirect).write_text(proc.stdout)
        outputs.append(proc)
    github, sarif = outputs
    assert github.returncode == 1  # the error finding fails the CI step
    assert github.stdout.startswith("::error title=nndoctor (loss-input-format),file=train.py")
    assert sarif.returncode == 0  # --exit-zero: the upload step runs
    import json

    log = json.loads((tmp_path / "nndoctor.sarif").read_text())
    assert log["version"] == "2.1.0"
    assert "loss-input-format" in {r["ruleId"] for r in log["runs"][0]["results"]}
