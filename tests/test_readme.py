"""The README stays true: its quickstart runs, and its set-up commands name things that
exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_quickstart_runs_and_finds_the_bug(capsys):
    quickstart = python_blocks()[0]  # the first Python block; later ones: test_readme_integrations.py
    assert len([ln for ln in quickstart.strip().splitlines()]) <= 16
    exec(compile(quickstart, "README.md:quickstart", "exec"), {})
    out = capsys.readouterr().out
    assert "loss-input-format" in out


def test_setup_commands_reference_real_files():
    block = re.search(r"## Set up\n\n```bash\n(.*?)```", README, flags=re.S).group(1)
    for path in re.findall(r"(examples/\S+\.py)", block):
        assert (ROOT / path).is_file(), path
    assert "python -m pytest" in block
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python -m pytest -q" in ci
