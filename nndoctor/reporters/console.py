"""The console report (rich): grouped by severity, worst first, each finding with the
layer it concerns and its fix. Readable at 80 columns: wrapped lines hang under their
first line, the location stays on the title line, the header wraps between its parts.

The report is a sequence of sections (header, findings, summary, skipped checks, notes);
``render_report`` joins them.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

from .._report import Report, Severity
from ._words import intervention_lines

__all__ = ["print_report", "render_report", "SEVERITY_STYLE", "display_where", "checks_table"]

SEVERITY_STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}
_HEADINGS = {Severity.ERROR: "Errors", Severity.WARNING: "Warnings", Severity.INFO: "Notes"}
NOT_DISTRIBUTED = "not a distributed run"


class Hanging:
    """A text whose wrapped lines hang ``rest`` columns in (its first line at ``first``):
    the continuation of a message never starts at column 0."""

    def __init__(self, text: Text, *, first: int = 0, rest: int = 2, tail: Text | None = None) -> None:
        self.text, self.first, self.rest, self.tail = text, first, rest, tail

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = max(10, options.max_width - self.rest)
        lines = list(self.text.wrap(console, width, overflow="fold"))
        if self.tail is not None:
            # ``tail`` (a location) is kept in one piece at the end of the last line when
            # it fits there, else on a line of its own: never broken in two.
            last = lines[-1] if lines else Text()
            last.rstrip()
            indent = self.first if len(lines) <= 1 else self.rest
            if indent + last.cell_len + self.tail.cell_len <= options.max_width:
                last.append_text(self.tail)
                if not lines:
                    lines.append(last)
            else:
                tail = self.tail.copy()
                tail.plain = tail.plain.lstrip(" ·")
                lines.extend(tail.wrap(console, width, overflow="fold"))
        for i, line in enumerate(lines):
            line.rstrip()
            yield Segment(" " * (self.first if i == 0 else self.rest))
            yield from line.render(console)
            yield Segment.line()

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Any:
        from rich.measure import Measurement

        return Measurement(self.rest + 1, options.max_width)


class Parts:
    """Pieces joined by a separator on one line when they fit; otherwise broken between
    pieces (never inside one that fits), continuation lines indented."""

    def __init__(self, parts: Iterable[Text], *, sep: str = " · ", indent: int = 2) -> None:
        self.parts, self.sep, self.indent = list(parts), sep, indent

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = options.max_width
        lines: list[Text] = []
        current: Text | None = None
        for part in self.parts:
            if current is None:
                current = part.copy()
                continue
            if current.cell_len + len(self.sep) + part.cell_len <= width:
                current.append(self.sep)
                current.append_text(part)
            else:
                lines.append(current)
                current = Text(" " * self.indent) + part
        if current is not None:
            lines.append(current)
        for i, line in enumerate(lines):
            yield Hanging(line, first=0, rest=self.indent) if i == 0 else Hanging(
                line[self.indent:], first=self.indent, rest=self.indent * 2)


def _modules(report: Report) -> dict[str, Any]:
    obs = report.observations
    return dict(getattr(obs, "modules", None) or {})


def display_where(where: str | None, modules: dict[str, Any]) -> str | None:
    """``0`` -> ``0 (Conv2d)``: a module path with the class of its module when known (inside
    ``nn.Sequential`` a path alone reads as a stray number)."""
    if not where:
        return where
    meta = modules.get(where)
    name = getattr(meta, "class_name", None)
    if name and f"({name})" not in where:
        return f"{where} ({name})"
    if where == "":
        return "the model"
    return where


_BACKTICKED = re.compile(r"`([A-Za-z0-9_.]+)`(?! \()")


def _name_layers(message: str, modules: dict[str, Any]) -> str:
    """In a message, a backticked numeric module path (`0`, `features.3`) gets its class."""
    if not modules:
        return message

    def sub(m: re.Match) -> str:
        path = m.group(1)
        meta = modules.get(path)
        if meta is None or not path.split(".")[-1].isdigit():
            return m.group(0)
        return f"`{path}` ({getattr(meta, 'class_name', '?')})"

    return _BACKTICKED.sub(sub, message)


# -- sections ------------------------------------------------------------------------------
def header_section(report: Report) -> list[Any]:
    model = report.model or {}
    parts = [Text("nndoctor", style="bold")]
    if report.script:
        parts.append(Text(str(report.script)))
    if model:
        parts.append(Text(f"{model.get('class', '?')} ({int(model.get('parameters', 0) or 0):,} parameters, "
                          f"{int(model.get('trainable', 0) or 0):,} trainable)"))
    parts.append(Text(f"{report.steps_observed} step(s) watched"))
    return [Parts(parts)]


def findings_section(report: Report) -> list[Any]:
    if not report.findings:
        return [Text(f"No problem found by the {len(report.checks_run)} checks that ran.", style="green")]
    modules = _modules(report)
    out: list[Any] = []
    for sev in (Severity.ERROR, Severity.WARNING, Severity.INFO):
        group = [f for f in report.findings if f.severity is sev]
        if not group:
            continue
        out.append(Text(f"\n{_HEADINGS[sev]} ({len(group)})", style=SEVERITY_STYLE[sev]))
        for f in group:
            title = Text()
            title.append(sev.value, style=SEVERITY_STYLE[sev])
            title.append(f"[{f.check}] ", style="bold")
            title.append(f.title)
            if getattr(f, "explained_by", None):
                title.append(f" (explained by {f.explained_by})", style="dim")
            where = display_where(f.where, modules)
            place = []
            if where:
                place.append(f"at {where}")
            if f.step is not None:
                place.append(f"step {f.step}")
            tail = Text(" · " + ", ".join(place), style="magenta") if place else None
            body = Text(_name_layers(f.message, modules))
            fix = Text("fix: ", style="green")
            fix.append(_name_layers(f.fix, modules))
            out.extend([Hanging(title, first=0, rest=4, tail=tail), Hanging(body, first=2, rest=2),
                        Hanging(fix, first=2, rest=7)])
    return out


def _skipped_counts(report: Report) -> tuple[int, int]:
    total = len(report.checks_skipped)
    single = sum(1 for s in report.checks_skipped if s.get("reason") == NOT_DISTRIBUTED)
    return total, single


def summary_section(report: Report) -> list[Any]:
    total, single = _skipped_counts(report)
    skipped = f"{total} skipped"
    if single:
        skipped += f" ({single} not applicable: single process)"
    n_notes = len(report.findings) - len(report.errors) - len(report.warnings)
    text = Text(
        f"{len(report.errors)} error(s), {len(report.warnings)} warning(s), {n_notes} note(s); "
        f"{len(report.checks_run)} check(s) ran, {skipped}.",
        style="bold",
    )
    return [Text(""), Hanging(text, first=0, rest=2)]


def skipped_section(report: Report, *, verbose: bool = False) -> list[Any]:
    if not report.checks_skipped:
        return []
    if verbose:
        # One line per reason: the same reason for five checks is printed once.
        by_reason: dict[str, list[str]] = {}
        for s in report.checks_skipped:
            by_reason.setdefault(s["reason"], []).append(s["check"])
        out: list[Any] = [Text("Skipped checks:", style="dim")]
        for reason, ids in by_reason.items():
            line = Text("- " + ", ".join(ids), style="bold dim")
            line.append(f": {reason}", style="dim")
            out.append(Hanging(line, first=2, rest=4))
        return out
    shown = [s["check"] for s in report.checks_skipped if s.get("reason") != NOT_DISTRIBUTED]
    if not shown:
        return []
    return [Hanging(Text("Skipped: " + ", ".join(shown) + " (reasons in the JSON report, or with --verbose)",
                         style="dim"), first=0, rest=2)]


def notes_section(report: Report) -> list[Any]:
    out: list[Any] = [Hanging(Text(f"note: {note}", style="dim yellow"), first=0, rest=6) for note in report.notes]
    if report.logdir:
        out.append(Hanging(Text(f"TensorBoard: tensorboard --logdir {report.logdir}", style="dim"), first=0, rest=2))
    return out


def render_report(report: Report, *, verbose: bool = False) -> Group:
    sections = [
        header_section(report),
        diagnosis_section(report),
        findings_section(report),
        summary_section(report),
        skipped_section(report, verbose=verbose),
        notes_section(report),
    ]
    return Group(*[part for section in sections for part in section])


def diagnosis_section(report: Report) -> list[Any]:
    """The report's lead, right under the header: "Diagnosis: <cause> — <why>", what it
    explains, and whether an intervention confirmed it; then one line per explained
    check, "<id> (explained by <cause>): <because>". Wrapped lines hang under their first."""
    d = getattr(report, "diagnosis", None)
    if d is None:
        return []
    lead = report.by_check(d.cause)
    head = Text("Diagnosis: ", style="bold")
    head.append(d.cause, style="bold red" if lead and lead[0].severity is Severity.ERROR else "bold yellow")
    head.append(f" ({d.confidence} confidence) — {d.summary}")
    out: list[Any] = [Text(""), Hanging(head, first=0, rest=2)]
    for outcome, sentence in intervention_lines(d.confirmed):
        text = Text(sentence, style="green" if outcome == "confirmed" else "yellow")
        out.append(Hanging(text, first=2, rest=4))
    if d.explains:
        out.append(Hanging(Text("explains: " + ", ".join(d.explains)), first=2, rest=4))
    for check in d.explains:
        line = Text(f"{check} (explained by {d.cause})", style="dim")
        if d.because.get(check):
            line.append(f": {d.because[check]}", style="dim")
        out.append(Hanging(line, first=4, rest=6))
    return out


def print_report(report: Report, console: Console | None = None, *, verbose: bool = False) -> None:
    console = console or Console()
    console.print(render_report(report, verbose=verbose))


# -- the check list (``nndoctor checks``) ----------------------------------------------------
def checks_table(registry: dict[str, Any], width: int) -> Any:
    """The catalogue as a table grouped by family; titles wrap (never shrunk to a few
    characters), so it reads at 80 columns and through a pipe."""
    table = Table(title=f"nndoctor checks ({len(registry)})", title_justify="left", box=None,
                  show_edge=False, pad_edge=False, header_style="bold")
    table.add_column("id", style="bold", no_wrap=True)
    table.add_column("severity", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("fires when", ratio=1, min_width=20, overflow="fold")
    family = None
    for cls in registry.values():
        if cls.family != family:
            family = cls.family
            table.add_row(Text(family, style="dim italic"), "", "", "")
        table.add_row(cls.id, Text(cls.severity.value, style=SEVERITY_STYLE[cls.severity]),
                      "watch" if cls.kind == "passive" else cls.kind, cls.title)
    return table
