"""Findings and the Report that carries them (pure Python, no torch).

The JSON form is CONTRACT §3, extended by §6 (schema 2 only adds fields: ``explained_by``
on every finding, null unless another finding explains it, and a top-level ``diagnosis``).
Reporters (console, JSON, TensorBoard) read a ``Report``; they never see the model.

Order. ``Report.sort()`` runs the differential diagnosis (``nndoctor/_diagnosis.py``):
the findings are ordered most likely root cause first, then the findings it explains,
then the rest; ``Report.diagnosis`` names the cause. Every way a Report is finalised
(construction, ``merge``, ``extend``, ``sort``) goes through it, so watch + checkup merges
and the CLI get the diagnosis without code of their own. The exit status still follows
severity over all findings (an error explained by a warning-level cause is an error).
"""

from __future__ import annotations

import enum
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

__all__ = ["Severity", "Finding", "Report", "SCHEMA_VERSION"]

SCHEMA_VERSION = 2


class Severity(str, enum.Enum):
    """How bad a finding is. ``error``: training is broken and will not recover by itself;
    ``warning``: likely harmful, worth a look; ``info``: noteworthy but often intended."""

    ERROR = "error"
    WARNING = "warning"
    INFO = "info"

    @property
    def rank(self) -> int:
        return {"error": 2, "warning": 1, "info": 0}[self.value]

    @classmethod
    def parse(cls, value: "str | Severity") -> "Severity":
        if isinstance(value, Severity):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            raise ValueError(
                f"unknown severity {value!r}: use one of error, warning, info"
            ) from None


def _jsonable(value: Any) -> Any:
    """Evidence may hold numpy scalars, tuples or non-finite floats; JSON wants plain
    values, and non-finite floats become strings ("nan", "inf") so the file stays valid."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=str) if isinstance(value, (set, frozenset)) else value
        return [_jsonable(v) for v in items]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if hasattr(value, "item"):  # numpy / torch scalar
        return _jsonable(value.item())
    if isinstance(value, enum.Enum):
        return value.value
    return str(value)


@dataclass
class Finding:
    """One verdict of one check, with the numbers behind it and what to do."""

    check: str
    severity: Severity
    title: str
    message: str
    fix: str
    where: str | None = None
    step: int | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    # The check id of the root cause that explains this finding (set by the diagnosis).
    explained_by: str | None = None

    def __post_init__(self) -> None:
        self.severity = Severity.parse(self.severity)

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "severity": self.severity.value,
            "title": self.title,
            "message": self.message,
            "where": self.where,
            "step": self.step,
            "evidence": _jsonable(self.evidence),
            "fix": self.fix,
            "explained_by": self.explained_by,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Finding":
        return cls(
            check=data["check"],
            severity=Severity.parse(data["severity"]),
            title=data["title"],
            message=data["message"],
            fix=data["fix"],
            where=data.get("where"),
            step=data.get("step"),
            evidence=dict(data.get("evidence") or {}),
            explained_by=data.get("explained_by"),
        )


def _unit_subject(f: Finding) -> tuple[str, str, str] | None:
    """(check, unit kind, unit name) of a finding about one unit, else None."""
    unit = f.evidence.get("unit") if isinstance(f.evidence, dict) else None
    return (f.check, str(f.evidence.get("unit_kind")), str(unit)) if unit else None


@dataclass
class Report:
    """What nndoctor found. ``findings`` lead with the most likely root cause, then the
    findings it explains, then the rest by severity; ``diagnosis`` names the cause (None
    when no finding is a warning or an error)."""

    findings: list[Finding] = field(default_factory=list)
    checks_run: list[str] = field(default_factory=list)
    checks_skipped: list[dict[str, str]] = field(default_factory=list)
    steps_observed: int = 0
    model: dict[str, Any] = field(default_factory=dict)
    script: str | None = None
    # Plain-data observations behind the findings (series for plots and TensorBoard).
    # Not part of the JSON contract; reporters may use them.
    observations: Any = None
    # Curves and tables produced by experiments (overfit curve, LR sweep...).
    experiments: dict[str, Any] = field(default_factory=dict)
    logdir: str | None = None
    # What nndoctor could not observe or had to switch off (compiled model, a failing
    # observer...): shown in the console report and in the JSON (an extension of schema 1).
    notes: list[str] = field(default_factory=list)
    # The differential diagnosis (recomputed by sort(); see nndoctor/_diagnosis.py).
    diagnosis: Any = None

    def __post_init__(self) -> None:
        self.sort()

    def sort(self) -> None:
        """Order the findings by diagnosis (root cause, its symptoms, the rest by severity)
        and recompute ``diagnosis``. A confirmation already recorded for the same cause is
        kept."""
        from ._diagnosis import diagnose

        before = self.diagnosis
        self.diagnosis = diagnose(self.findings)
        if (before is not None and self.diagnosis is not None and before.cause == self.diagnosis.cause
                and self.diagnosis.confirmed is None):
            self.diagnosis.confirmed = before.confirmed

    # -- queries ---------------------------------------------------------------------
    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity is Severity.ERROR]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity is Severity.WARNING]

    def ids(self, min_severity: "str | Severity" = Severity.INFO) -> set[str]:
        """The check ids with a finding at or above ``min_severity``."""
        bar = Severity.parse(min_severity).rank
        return {f.check for f in self.findings if f.severity.rank >= bar}

    def by_check(self, check: str) -> list[Finding]:
        return [f for f in self.findings if f.check == check]

    def worst(self) -> Severity | None:
        if not self.findings:
            return None
        return max((f.severity for f in self.findings), key=lambda s: s.rank)

    def merge(self, other: "Report") -> "Report":
        """A new report holding both reports' findings; used to join watch mode and
        checkup results. Later skips of a check that ran elsewhere are dropped."""
        run = list(dict.fromkeys([*self.checks_run, *other.checks_run]))
        skipped = [
            s for s in [*self.checks_skipped, *other.checks_skipped] if s["check"] not in run
        ]
        seen_skips: dict[str, dict[str, str]] = {}
        for s in skipped:
            first = seen_skips.get(s["check"])
            if first is None:
                seen_skips[s["check"]] = dict(s)
            elif s.get("reason") and s["reason"] not in (first.get("reason") or ""):
                # skipped on both sides for different reasons (gradient-check: no custom
                # Function in the watch, and the experiments disabled): both are shown
                first["reason"] = f"{first['reason']}; {s['reason']}" if first.get("reason") else s["reason"]
        observations = self.observations if self.observations is not None else other.observations
        kept = getattr(observations, "check_thresholds", None)
        if isinstance(kept, dict) and other.observations is not observations:
            # the thresholds the other side's checks judged with (the figures draw them)
            for cid, values in (getattr(other.observations, "check_thresholds", None) or {}).items():
                kept.setdefault(cid, dict(values))
        # A unit both sides judged (a custom autograd.Function that watch() verified and the
        # checkup's gradient check verified again) is reported once, as the first side did.
        subjects = {_unit_subject(f) for f in self.findings} - {None}
        later = [f for f in other.findings if _unit_subject(f) not in subjects]
        return Report(
            findings=[*self.findings, *later],
            checks_run=run,
            checks_skipped=list(seen_skips.values()),
            steps_observed=max(self.steps_observed, other.steps_observed),
            model=self.model or other.model,
            script=self.script or other.script,
            observations=observations,
            experiments={**self.experiments, **other.experiments},
            logdir=self.logdir or other.logdir,
            notes=list(dict.fromkeys([*self.notes, *other.notes])),
            # a confirmation recorded on either side survives when the cause stays the same
            diagnosis=next((d for d in (other.diagnosis, self.diagnosis) if d is not None and d.confirmed),
                           self.diagnosis),
        )

    # -- outputs ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        from . import __version__

        return {
            "schema": SCHEMA_VERSION,
            "nndoctor": __version__,
            "script": self.script,
            "steps_observed": int(self.steps_observed),
            "model": _jsonable(self.model),
            "findings": [f.to_dict() for f in self.findings],
            "checks_run": list(self.checks_run),
            "checks_skipped": [dict(s) for s in self.checks_skipped],
            "notes": list(self.notes),
            "diagnosis": _jsonable(self.diagnosis.to_dict()) if self.diagnosis is not None else None,
        }

    def to_json(self, path: "str | os.PathLike[str] | None" = None, *, indent: int = 2) -> str:
        """The JSON report (CONTRACT §3). Written to ``path`` when given; returned always."""
        text = json.dumps(self.to_dict(), indent=indent, allow_nan=False)
        if path is not None:
            target = Path(path)
            # The file's own folder may be created, not a tree above it (a typo must not
            # scatter folders): a missing grandparent raises FileNotFoundError.
            if target.parent and not target.parent.exists():
                target.parent.mkdir(exist_ok=True)
            target.write_text(text + "\n", encoding="utf-8")
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Report":
        """A Report from its JSON form (schema 1 or 2); the diagnosis is recomputed from the
        findings, keeping a recorded confirmation of the same cause."""
        from ._diagnosis import Diagnosis

        return cls(
            diagnosis=Diagnosis.from_dict(data.get("diagnosis")),
            findings=[Finding.from_dict(f) for f in data.get("findings", [])],
            checks_run=list(data.get("checks_run", [])),
            checks_skipped=list(data.get("checks_skipped", [])),
            steps_observed=int(data.get("steps_observed", 0)),
            model=dict(data.get("model") or {}),
            script=data.get("script"),
            notes=list(data.get("notes", [])),
        )

    def print(self, console: Any = None, *, verbose: bool = False) -> None:
        """Render the report on a rich console (stdout by default)."""
        from .reporters.console import print_report

        print_report(self, console=console, verbose=verbose)

    def _repr_html_(self) -> str:
        """The report in a notebook: a compact table, the diagnosis first."""
        from .reporters.html import render_html

        return render_html(self)

    def __rich__(self) -> Any:
        """The console report as rich renderables (``rich.print(report)``)."""
        from .reporters.console import render_report

        return render_report(self)

    def to_tensorboard(self, logdir_or_writer: Any) -> Any:
        """Write the findings (and observed series, when present) as TensorBoard events."""
        from .reporters.tensorboard import write_report

        return write_report(self, logdir_or_writer)

    def extend(self, findings: Iterable[Finding]) -> None:
        self.findings.extend(findings)
        self.sort()
