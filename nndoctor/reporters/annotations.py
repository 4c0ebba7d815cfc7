"""Reports for CI: GitHub Actions workflow annotations and SARIF 2.1.0.

    nndoctor check train.py --format github     # ::error title=nndoctor (dead-relu),file=train.py::...
    nndoctor check train.py --format sarif > nndoctor.sarif   # upload with github/codeql-action/upload-sarif

Pure Python, no torch. Each annotation / SARIF result names the check id; the location is
the script the report is about (and its line when a finding's evidence carries one).
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["github_annotations", "sarif_log", "SARIF_SCHEMA", "SARIF_VERSION"]

SARIF_VERSION = "2.1.0"
SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"

_GITHUB_LEVEL = {"error": "error", "warning": "warning", "info": "notice"}
_SARIF_LEVEL = {"error": "error", "warning": "warning", "info": "note"}


def _escape_data(text: str) -> str:
    # https://github.com/actions/toolkit/blob/main/packages/core/src/command.ts (escapeData)
    return str(text).replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    # ... (escapeProperty): also ':' and ','
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _line_of(finding: Any) -> int | None:
    ev = getattr(finding, "evidence", None) or {}
    line = ev.get("line") if isinstance(ev, dict) else None
    return int(line) if isinstance(line, int) and line > 0 else None


def _script_path(report: Any) -> str | None:
    script = getattr(report, "script", None)
    if not script:
        return None
    return str(script).replace("\\", "/")


def github_annotations(report: Any) -> str:
    """One ``::error``/``::warning``/``::notice`` workflow command per finding (GitHub
    shows them on the run's summary and, with a file and line, on the diff)."""
    path = _script_path(report)
    lines = []
    for f in report.findings:
        props = [f"title={_escape_property(f'nndoctor ({f.check})')}"]
        if path:
            props.append(f"file={_escape_property(path)}")
            line = _line_of(f)
            if line:
                props.append(f"line={line}")
        where = f" at {f.where}" if f.where else ""
        step = f" (step {f.step})" if f.step is not None else ""
        message = f"{f.title}{where}{step}: {f.message}\nfix: {f.fix}"
        lines.append(f"::{_GITHUB_LEVEL[f.severity.value]} {','.join(props)}::{_escape_data(message)}")
    return "\n".join(lines) + ("\n" if lines else "")


def _rules() -> list[dict[str, Any]]:
    from ..checks._registry import REGISTRY

    rules = []
    for cls in REGISTRY.values():
        sections = cls.sections()
        rule: dict[str, Any] = {
            "id": cls.id,
            "name": "".join(part.capitalize() for part in cls.id.split("-")),
            "shortDescription": {"text": cls.title},
            "defaultConfiguration": {"level": _SARIF_LEVEL[cls.severity.value]},
            "properties": {"family": cls.family, "kind": "watch" if cls.kind == "passive" else cls.kind},
        }
        what = " ".join(sections.get("What it measures", "").split())
        if what:
            rule["fullDescription"] = {"text": what}
        fix = " ".join(sections.get("How to fix", "").split())
        if fix:
            rule["help"] = {"text": fix}
        rules.append(rule)
    return rules


def sarif_log(report: Any) -> dict[str, Any]:
    """The report as a SARIF 2.1.0 log: one rule per check id (from the catalogue), one
    result per finding with ``ruleId`` = the check id."""
    from .. import __version__

    rules = _rules()
    index = {r["id"]: i for i, r in enumerate(rules)}
    path = _script_path(report)
    results = []
    for f in report.findings:
        result: dict[str, Any] = {
            "ruleId": f.check,
            "level": _SARIF_LEVEL[f.severity.value],
            "message": {"text": f"{f.title}: {f.message} Fix: {f.fix}"},
        }
        if f.check in index:
            result["ruleIndex"] = index[f.check]
        location: dict[str, Any] = {}
        if path:
            physical: dict[str, Any] = {"artifactLocation": {"uri": path}}
            line = _line_of(f)
            if line:
                physical["region"] = {"startLine": line}
            location["physicalLocation"] = physical
        if f.where:
            location["logicalLocations"] = [{"fullyQualifiedName": str(f.where), "kind": "module"}]
        if location:
            result["locations"] = [location]
        props: dict[str, Any] = {}
        if f.step is not None:
            props["step"] = f.step
        if props:
            result["properties"] = props
        results.append(result)
    run: dict[str, Any] = {
        "tool": {"driver": {"name": "nndoctor", "version": __version__, "semanticVersion": __version__,
                            "rules": rules}},
        "results": results,
    }
    notes = list(getattr(report, "notes", []) or [])
    skipped = list(getattr(report, "checks_skipped", []) or [])
    run["invocations"] = [{
        "executionSuccessful": True,
        "toolExecutionNotifications": [{"level": "note", "message": {"text": n}} for n in notes],
    }]
    run["properties"] = {"checks_run": list(report.checks_run), "checks_skipped": skipped,
                         "steps_observed": int(report.steps_observed)}
    return {"$schema": SARIF_SCHEMA, "version": SARIF_VERSION, "runs": [run]}


def sarif_text(report: Any) -> str:
    return json.dumps(sarif_log(report), indent=2, allow_nan=False) + "\n"
