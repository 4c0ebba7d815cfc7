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
