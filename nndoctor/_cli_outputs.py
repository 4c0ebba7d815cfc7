"""Where ``nndoctor check`` writes: the consoles (the report on stdout, everything else
on stderr), the usage/internal-error exit, the output paths checked before the run, the
``--logdir`` run folder, the report in each ``--format``, and the ``--json`` file for an
exit without a report. Used by :mod:`nndoctor.cli`."""

from __future__ import annotations

import enum
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from ._exit import ExitCode

__all__ = ["OutputFormat", "out_console", "err_console", "fail", "check_output_paths", "run_logdir",
           "emit_report", "json_without_report"]


class OutputFormat(str, enum.Enum):
    text = "text"
    json = "json"
    github = "github"
    sarif = "sarif"


def out_console() -> Console:
    return Console(soft_wrap=False)


def err_console() -> Console:
    return Console(stderr=True, highlight=False)


def fail(message: str, code: ExitCode = ExitCode.USAGE_OR_INTERNAL) -> "typer.Exit":
    err_console().print(f"[bold red]nndoctor:[/] {escape(message)}", soft_wrap=True)
    return typer.Exit(int(code))


def run_logdir(base: "str | Path", *, now: Any = None) -> Path:
    """A fresh sub-directory of ``--logdir`` for this run (``run-20261203-110459``, then
    ``..._1``, ``_2`` if taken), so that a second run never appends to the first one's
    events or overwrites its PNG figures; TensorBoard pointed at ``base`` shows each run
    as its own line (as Lightning's ``version_N`` folders do)."""
    import datetime

    base = Path(base)
    stamp = (now or datetime.datetime.now()).strftime("run-%Y%m%d-%H%M%S")
    base.mkdir(exist_ok=True)  # its parent exists: checked before the run
    candidate, n = base / stamp, 0
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            n += 1
            candidate = base / f"{stamp}_{n}"


def check_output_paths(json_path: "Path | None", logdir: "Path | None") -> None:
    """Refuse, before running anything, to write into folders that do not exist: a typo in
    ``--json`` must not create a tree of folders somewhere."""
    if json_path is not None:
        parent = json_path.expanduser().parent
        if not parent.is_dir():
            raise fail(f"cannot write the JSON report to {json_path}: the folder {parent} does not exist. "
                        f"Create it first, or give a path in an existing folder.")
    if logdir is not None:
        parent = logdir.expanduser().parent
        if not logdir.expanduser().is_dir() and not parent.is_dir():
            raise fail(f"cannot write TensorBoard files to {logdir}: its parent folder {parent} does not "
                        f"exist. Create it first, or give a logdir in an existing folder.")


def emit_report(report: Any, output_format: "OutputFormat", verbose: bool) -> None:
    """The report on stdout, in the chosen format."""
    if output_format is OutputFormat.text:
        report.print(out_console(), verbose=verbose)
        return
    if output_format is OutputFormat.json:
        text = report.to_json() + "\n"
    elif output_format is OutputFormat.github:
        from .reporters.annotations import github_annotations

        text = github_annotations(report)
    else:
        from .reporters.annotations import sarif_text

        text = sarif_text(report)
    sys.stdout.write(text)
    sys.stdout.flush()


def json_without_report(json_path: "Path | None", script: str, message: str, run: Any,
                         ids: "list[str] | None" = None) -> None:
    """``--json`` on an exit without a report (2: nothing watched, an internal error; 3:
    the script raised before its first step): what is known, the reason among the notes,
    every check skipped with it. Best effort: the exit message matters more."""
    if json_path is None:
        return
    from ._report import Report

    try:
        report = run.report if run is not None and run.report is not None else Report()
        report.script = script
        report.notes = [message, *[n for n in report.notes if n != message]]
        if not report.checks_run and not report.checks_skipped:
            report.checks_skipped = [{"check": cid, "reason": message} for cid in ids or []]
        if run is not None and run.model is not None and not report.model:
            report.model = {"class": run.model}
        report.to_json(json_path)
    except Exception:
        pass
