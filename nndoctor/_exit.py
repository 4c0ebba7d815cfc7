"""Exit statuses, and the one function that computes them from a report.

The CLI uses it for ``nndoctor check``; anything else that turns a report into a
pass/fail (a test helper, a CI integration) should call ``exit_code`` (or
``failing_findings``) too, so every face agrees on what "failing" means.
"""

from __future__ import annotations

import enum
from typing import Any

from ._report import Finding, Severity

__all__ = ["ExitCode", "exit_code", "failing_findings"]


class ExitCode(enum.IntEnum):
    """``nndoctor`` exit statuses (CONTRACT §2)."""

    #: No finding at or above ``--fail-on`` (healthy, or only milder findings).
    OK = 0
    #: At least one finding at or above ``--fail-on`` (``error`` by default).
    FINDINGS = 1
    #: nndoctor could not do its job: bad usage (unknown option or check id, missing
    #: file, syntax error in the script, a bad ``[tool.nndoctor]``), no training found
    #: to watch, or an internal failure. Nothing (or too little) was watched to judge.
    USAGE_OR_INTERNAL = 2
    #: The target script raised an exception; the findings gathered up to then are
    #: still reported.
    SCRIPT_RAISED = 3


def failing_findings(report: Any, fail_on: "str | Severity" = "error") -> list[Finding]:
    """The findings of ``report`` at or above ``fail_on`` (error, warning or info)."""
    bar = Severity.parse(getattr(fail_on, "value", fail_on)).rank
    return [f for f in report.findings if f.severity.rank >= bar]


def exit_code(
    report: Any,
    fail_on: "str | Severity" = "error",
    *,
    script_raised: bool = False,
    could_not_run: bool = False,
    exit_zero: bool = False,
) -> ExitCode:
    """The exit status for ``report``: 3 when the script raised, 2 when nndoctor could
    not do its job (or there is no report), else 1 when a finding is at or above
    ``fail_on`` (0 with ``exit_zero``), else 0."""
    if script_raised:
        return ExitCode.SCRIPT_RAISED
    if could_not_run or report is None:
        return ExitCode.USAGE_OR_INTERNAL
    if not exit_zero and failing_findings(report, fail_on):
        return ExitCode.FINDINGS
    return ExitCode.OK
