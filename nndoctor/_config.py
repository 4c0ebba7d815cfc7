"""Project configuration: ``[tool.nndoctor]`` in the nearest ``pyproject.toml``.

    [tool.nndoctor]
    select = ["nan-trace", "dead-relu"]     # or ignore = [...]
    steps = 20                              # nndoctor check --steps
    fail_on = "warning"                     # nndoctor check --fail-on
    sample_every = 20                       # per-layer statistics every 20th step...
    dense_steps = 4                         # ...after the first 4
    [tool.nndoctor.thresholds.dead-relu]
    max_dead_fraction = 0.7

Read with ``tomllib`` (``tomli`` on Python 3.10; never executed). Every key is honoured
or rejected: an unknown key, a bad value, an unknown check id or threshold name is a
``ConfigError`` naming the file and the key (``nndoctor check`` exits 2). Keyword
arguments and CLI options override it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

__all__ = ["load_config", "find_pyproject", "ConfigError"]

# key -> (what it must be, validator). Every key is honoured by ``nndoctor check``:
# select/ignore/thresholds build its check set, steps/fail_on/sample_every/dense_steps
# stand in for the options not given on the command line.
_FAIL_ON = ("error", "warning", "info")


def _whole(least: int) -> tuple[str, Any]:
    return (f"a whole number >= {least}",
            lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= least)


def _ids(v: Any) -> bool:
    return isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v))


_KEYS: dict[str, tuple[str, Any]] = {
    "select": ("a list of check ids (or one comma-separated string)", _ids),
    "ignore": ("a list of check ids (or one comma-separated string)", _ids),
    "thresholds": ("a table of tables: [tool.nndoctor.thresholds.CHECK-ID] NAME = number",
                   lambda v: isinstance(v, dict) and all(isinstance(t, dict) for t in v.values())),
    "steps": _whole(1),
    "sample_every": _whole(1),
    "dense_steps": _whole(0),
    "fail_on": (f"one of {', '.join(repr(x) for x in _FAIL_ON)}", lambda v: v in _FAIL_ON),
}


class ConfigError(ValueError):
    """``[tool.nndoctor]`` is unreadable or holds an unknown key or a bad value; the
    message names the file and the key."""


def find_pyproject(start: "str | Path") -> Path | None:
    path = Path(start).resolve()
    if path.is_file():
        path = path.parent
    for folder in (path, *path.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def _tomllib() -> Any:
    if sys.version_info >= (3, 11):
        import tomllib

        return tomllib
    try:  # Python 3.10: the backport, a declared dependency there
        import tomli
    except ImportError:  # pragma: no cover - a broken install
        raise ConfigError(
            "reading [tool.nndoctor] on Python 3.10 needs the `tomli` package (a dependency of "
            "nndoctor there): pip install 'tomli>=1.1'"
        ) from None
    return tomli


def load_config(start: "str | Path" = ".") -> dict[str, Any]:
    """The ``[tool.nndoctor]`` table of the nearest pyproject.toml above ``start`` (a file
    or folder), validated (keys, value types, check ids and threshold names); ``{}``
    when there is none. Raises ``ConfigError`` naming the file and the key."""
    pyproject = find_pyproject(start)
    if pyproject is None:
        return {}
    tomllib = _tomllib()
    try:
        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"could not read {pyproject}: {exc}. Fix the TOML or remove [tool.nndoctor].") from None
    table = data.get("tool", {}).get("nndoctor", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{pyproject}: tool.nndoctor must be a table ([tool.nndoctor]), got {table!r}")
    unknown = set(table) - set(_KEYS)
    if unknown:
        raise ConfigError(
            f"{pyproject}: unknown key(s) {sorted(unknown)} in [tool.nndoctor]; valid keys: {sorted(_KEYS)}"
        )
    for key, value in table.items():
        what, ok = _KEYS[key]
        if not ok(value):
            raise ConfigError(f"{pyproject}: [tool.nndoctor] {key} must be {what}, got {value!r}")
    from ._checkset import CheckSet
    from ._doctor import NNDoctorUsageError

    try:  # unknown check ids and threshold names fail here, naming the file
        CheckSet.resolve(table.get("select"), table.get("ignore"), table.get("thresholds"),
                         where=f"[tool.nndoctor] of {pyproject}")
    except NNDoctorUsageError as exc:
        raise ConfigError(f"{pyproject}: {exc}") from None
    return dict(table)
