"""The catalogue agrees with the code: severities the code reports, one word for the kind,
citations that resolve (public URLs or files in this repository), the pyproject override."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from nndoctor._catalogue import render_check_page, render_explain, render_index, severities
from nndoctor.checks._registry import REGISTRY

ROOT = Path(__file__).resolve().parents[1]


def test_severities_come_from_the_code():
    # dead-relu reports warning past max_dead_fraction and error past all_dead_fraction
    assert severities(REGISTRY["dead-relu"]) == ["warning", "error"]
    assert severities(REGISTRY["grad-not-zeroed"]) == ["error"]
    for cls in REGISTRY.values():
        assert severities(cls)[-1] == cls.severity.value  # the class severity is the worst


@pytest.mark.parametrize("check_id", list(REGISTRY))
def test_page_states_every_severity_and_one_kind_word(check_id):
    cls = REGISTRY[check_id]
    page = render_check_page(cls)
    header = next(line for line in page.splitlines() if line.startswith("Family:"))
    for sev in severities(cls):
        assert f"**{sev}**" in header
    assert "Default severity" not in page
    assert "passive" not in page.lower()
    assert ("Kind: **watch**" in header) == (cls.kind == "passive")


@pytest.mark.parametrize("check_id", list(REGISTRY))
def test_citations_are_public_or_in_the_repository(check_id):
    page = render_check_page(REGISTRY[check_id])
    for bad in ("SEED-NOTES", "thresholds.md", "CONTRACT"):
        assert bad not in page
    for target in re.findall(r"\]\(([^)]+)\)", page):
        if target.startswith(("http://", "https://")):
            continue
        assert (ROOT / "checks" / target).resolve().exists(), target


@pytest.mark.parametrize("check_id", [c for c, cls in REGISTRY.items() if cls.thresholds])
def test_explain_shows_the_pyproject_override_and_it_parses(check_id):
    if sys.version_info < (3, 11):
        pytest.skip("tomllib is Python 3.11+")
    import tomllib

    text = render_explain(REGISTRY[check_id])
    assert not text.startswith("<!--")
    block = re.search(r"```toml\n(.*?)```", text, re.S).group(1)
    data = tomllib.loads(block)
    assert list(data["tool"]["nndoctor"]["thresholds"]) == [check_id]
    (name, value), = data["tool"]["nndoctor"]["thresholds"][check_id].items()
    assert name == REGISTRY[check_id].thresholds[0].name
    assert value == REGISTRY[check_id].thresholds[0].default


def test_the_override_snippet_is_accepted_by_the_config_loader(tmp_path):
    from nndoctor._config import load_config

    text = render_explain(REGISTRY["dead-relu"])
    block = re.search(r"```toml\n(.*?)```", text, re.S).group(1)
    (tmp_path / "pyproject.toml").write_text(block)
    config = load_config(tmp_path)
    assert config["thresholds"] == {"dead-relu": {"max_dead_fraction": 0.5}}


def test_index_uses_one_kind_word():
    index = render_index()
    assert "passive" not in index
    assert "| watch |" in index and "| experiment |" in index
