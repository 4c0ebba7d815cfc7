from __future__ import annotations

import pytest

from nndoctor._config import ConfigError, load_config
from nndoctor._doctor import build_checks


def test_reads_tool_nndoctor(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        '[tool.nndoctor]\nignore = ["repeated-batch"]\nsample_every = 5\n'
        '[tool.nndoctor.thresholds.dead-relu]\nmax_dead_fraction = 0.7\n'
    )
    (tmp_path / "sub").mkdir()
    cfg = load_config(tmp_path / "sub")
    assert cfg["sample_every"] == 5
    checks = build_checks("passive", ignore=cfg["ignore"], thresholds=cfg["thresholds"])
    ids = {c.id: c for c in checks}
    assert "repeated-batch" not in ids and ids["dead-relu"].max_dead_fraction == 0.7


def test_unknown_key_is_a_clear_error(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[tool.nndoctor]\nselcet = ['x']\n")
    with pytest.raises(ConfigError, match="unknown key.*selcet.*valid keys"):
        load_config(tmp_path)


def test_no_pyproject_means_no_config(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[project]\nname='x'\n")
    assert load_config(tmp_path) == {}


def _check(tmp_path, pyproject: str):
    import json
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    shutil.copy(Path(__file__).parents[1] / "examples" / "bug_missing_zero_grad.py", tmp_path / "train.py")
    (tmp_path / "pyproject.toml").write_text(pyproject)
    proc = subprocess.run([sys.executable, "-m", "nndoctor", "check", "train.py", "--no-experiments",
                           "--steps", "12", "--json", "r.json"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=180)
    report = json.loads((tmp_path / "r.json").read_text()) if (tmp_path / "r.json").exists() else None
    return proc, report


def test_cli_applies_the_scripts_project_config(tmp_path):
    proc, report = _check(tmp_path, '[tool.nndoctor]\nignore = ["grad-not-zeroed"]\n')
    assert report is not None, proc.stderr
    assert "grad-not-zeroed" not in report["checks_run"]
    assert "grad-not-zeroed" not in {f["check"] for f in report["findings"]}


def test_cli_rejects_a_bad_project_config_clearly(tmp_path):
    proc, report = _check(tmp_path, '[tool.nndoctor]\nignor = ["x"]\n')
    assert proc.returncode == 2 and report is None
    assert "unknown key" in proc.stderr and "ignor" in proc.stderr
