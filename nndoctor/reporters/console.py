"""The console report (rich): grouped by severity, worst first, each finding with the
layer it concerns and its fix."""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from .._report import Report, Severity

__all__ = ["print_report", "render_report", "SEVERITY_STYLE"]

SEVERITY_STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}
_HEADINGS = {Severity.ERROR: "Errors", Severity.WARNING: "Warnings", Severity.INFO: "Notes"}


def render_report(report: Report, *, verbose: bool = False) -> Group:
    parts: list[Any] = []
    model = report.model or {}
    head = Text("nndoctor", style="bold")
    if report.script:
        head.append(f" · {report.script}")
    if model:
        head.append(f" · {model.get('class', '?')} ({model.get('parameters', 0):,} parameters, "
                    f"{model.get('trainable', 0):,} trainable)")
    head.append(f" · {report.steps_observed} step(s) watched")
    parts.append(head)
    if not report.findings:
        parts.append(Text(f"No problem found by the {len(report.checks_run)} checks that ran.", style="green"))
    for sev in (Severity.ERROR, Severity.WARNING, Severity.INFO):
        group = [f for f in report.findings if f.severity is sev]
        if not group:
            continue
        parts.append(Text(f"\n{_HEADINGS[sev]} ({len(group)})", style=SEVERITY_STYLE[sev]))
        for f in group:
            line = Text()
            line.append(f"{sev.value}", style=SEVERITY_STYLE[sev])
            line.append(f"[{f.check}] ", style="bold")
            line.append(f.title)
            if f.where:
                line.append(f"  at {f.where}", style="magenta")
            if f.step is not None:
                line.append(f"  step {f.step}", style="dim")
            body = Text("  ")
            body.append(f.message)
            fix = Text("  fix: ", style="green")
            fix.append(f.fix)
            parts.extend([line, body, fix])
    summary = Text(
        f"\n{len(report.errors)} error(s), {len(report.warnings)} warning(s), "
        f"{len(report.findings) - len(report.errors) - len(report.warnings)} note(s); "
        f"{len(report.checks_run)} check(s) ran, {len(report.checks_skipped)} skipped.",
        style="bold",
    )
    parts.append(summary)
    if report.checks_skipped and verbose:
        table = Table("skipped check", "why", show_header=True, header_style="dim", box=None)
        for s in report.checks_skipped:
            table.add_row(s["check"], s["reason"])
        parts.append(table)
    elif [s for s in report.checks_skipped if s["reason"] != "not a distributed run"]:
        shown = [s["check"] for s in report.checks_skipped if s["reason"] != "not a distributed run"]
        parts.append(Text("Skipped: " + ", ".join(shown)
                          + " (details in the JSON report, or with --verbose)", style="dim"))
    for note in report.notes:
        parts.append(Text(f"note: {note}", style="dim yellow"))
    if report.logdir:
        parts.append(Text(f"TensorBoard: tensorboard --logdir {report.logdir}", style="dim"))
    return Group(*parts)


def _diagnosis_block(report: Report) -> Group | None:
    """The report's first block: "Diagnosis: <cause> — <why> — explains: a, b, c", then
    one line per explained check, "<id> (explained by <cause>): <because>"."""
    d = report.diagnosis
    if d is None:
        return None
    head = Text("Diagnosis: ", style="bold")
    head.append(d.cause, style="bold red" if report.by_check(d.cause) and report.by_check(d.cause)[0].severity
                is Severity.ERROR else "bold yellow")
    head.append(f" ({d.confidence} confidence) — {d.summary}")
    if d.explains:
        head.append(" — explains: " + ", ".join(d.explains))
    if d.confirmed:
        head.append(f" — confirmed: with {d.confirmed.get('intervention')}, {d.confirmed.get('probe')} "
                    f"{d.confirmed.get('after')} (was: {d.confirmed.get('before')})", style="green")
    lines: list[Any] = [head]
    for check in d.explains:
        line = Text(f"  {check} (explained by {d.cause})", style="dim")
        if d.because.get(check):
            line.append(f": {d.because[check]}", style="dim")
        lines.append(line)
    return Group(*lines, Text(""))


def print_report(report: Report, console: Console | None = None, *, verbose: bool = False) -> None:
    console = console or Console()
    block = _diagnosis_block(report)
    if block is not None:
        console.print(block)
    console.print(render_report(report, verbose=verbose))
