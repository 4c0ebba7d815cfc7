"""Project configuration: ``[tool.nndoctor]`` in the nearest ``pyproject.toml``.

    [tool.nndoctor]
    select = ["nan-trace", "dead-relu"]     # or ignore = [...]
    sample_every = 20
    [tool.nndoctor.thresholds.dead-relu]
    max_dead_fraction = 0.7

Read with ``tomllib`` (never executed). Keyword arguments and CLI options override it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

__all__ = ["load_config", "find_pyproject", "ConfigError"]

_KEYS = {"select", "ignore", "thresholds", "sample_every", "dense_steps", "steps", "fail_on"}


class ConfigError(ValueError):
    pass


def find_pyproject(start: "str | Path") -> Path | None:
    path = Path(start).resolve()
    if path.is_file():
        path = path.parent
    for folder in (path, *path.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def load_config(start: "str | Path" = ".") -> dict[str, Any]:
    """The ``[tool.nndoctor]`` table of the nearest pyproject.toml above ``start`` (a file
    or folder), validated; ``{}`` when there is none."""
    pyproject = find_pyproject(start)
    if pyproject is None:
        return {}
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ImportError:
            return {}
    try:
        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"could not read {pyproject}: {exc}. Fix the TOML or remove [tool.nndoctor].") from None
    table = data.get("tool", {}).get("nndoctor", {})
    unknown = set(table) - _KEYS
    if unknown:
        raise ConfigError(
            f"{pyproject}: unknown key(s) {sorted(unknown)} in [tool.nndoctor]; valid keys: {sorted(_KEYS)}"
        )
    thresholds = table.get("thresholds", {})
    if not isinstance(thresholds, dict) or not all(isinstance(v, dict) for v in thresholds.values()):
        raise ConfigError(f"{pyproject}: [tool.nndoctor.thresholds] must map check ids to tables of numbers")
    return dict(table)
