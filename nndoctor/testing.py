"""Assertions for users' own test suites: "this model trains".

    from nndoctor.testing import assert_trains

    def test_my_model_trains():
        assert_trains(MyNet(), (inputs, targets))

``assert_trains`` runs the experiments of ``Doctor(...).checkup(batch)`` (overfit the
batch, random inputs, LR sweep, gradient check, loss at init) on copies of the model and
raises ``AssertionError`` carrying the readable report when a finding at or above
``fail_on`` exists. The model, optimizer and RNG streams are left as they were.

The pytest plugin (``nndoctor.pytest_plugin``, registered through the ``pytest11``
entry point) offers the same as the ``nndoctor_assert_trains`` fixture and the
``@pytest.mark.nndoctor(fail_on=..., select=..., ignore=...)`` marker.
"""

from __future__ import annotations

from typing import Any, Iterable

from ._report import Report, Severity

__all__ = ["assert_trains", "render_text"]


def render_text(report: Report, *, width: int = 100) -> str:
    """The console report as plain text (no colours): what an AssertionError carries."""
    from io import StringIO

    from rich.console import Console

    buf = StringIO()
    console = Console(file=buf, width=width, color_system=None, force_terminal=False,
                      legacy_windows=False, highlight=False)
    report.print(console)
    return buf.getvalue().rstrip() + "\n"


def assert_trains(
    model: Any,
    batch: Any,
    loss_fn: Any = None,
    optimizer: Any = None,
    *,
    fail_on: "str | Severity" = "error",
    select: "str | Iterable[str] | None" = None,
    ignore: "str | Iterable[str] | None" = None,
    **options: Any,
) -> Report:
    """Run nndoctor's experiments on ``model`` with ``batch`` and fail when they find a
    problem at or above ``fail_on`` ("error", "warning" or "info").

    ``batch`` is ``(inputs, targets)`` as for ``Doctor.checkup``; ``loss_fn`` defaults to
    cross-entropy for integer class targets; ``optimizer``: the copies are trained with
    its type and hyper-parameters (Adam(lr=1e-3) when None). ``select`` / ``ignore``:
    check ids. Other keyword options are the probe knobs of ``Doctor.checkup``.

    Returns the Report when nothing reaches ``fail_on``; otherwise raises
    ``AssertionError`` whose message is the plain-text report.
    """
    from ._doctor import Doctor

    bar = Severity.parse(fail_on).rank
    doctor = Doctor(model, optimizer=optimizer, loss_fn=loss_fn, select=select, ignore=ignore)
    report = doctor.checkup(batch, **options)
    # A model none of whose experiments could run (no trainable parameters, a batch that
    # cannot be split...) is not shown to train: passing would be a false reassurance.
    from ._doctor import build_checks

    wanted = [c.id for c in build_checks("experiment", select=select, ignore=ignore)]
    if wanted and not set(wanted) & set(report.checks_run):
        reasons = "; ".join(dict.fromkeys(s["reason"] for s in report.checks_skipped if s["check"] in wanted))
        raise AssertionError(
            f"nndoctor: could not check that {type(doctor.model).__name__} trains: none of the "
            f"experiments ({', '.join(wanted)}) could run: {reasons}.\n" + render_text(report)
        )
    failing = [f for f in report.findings if f.severity.rank >= bar]
    if failing:
        ids = ", ".join(dict.fromkeys(f.check for f in failing))
        raise AssertionError(
            f"nndoctor: {type(doctor.model).__name__} does not train as expected: "
            f"{len(failing)} finding(s) at or above {Severity.parse(fail_on).value!r} ({ids}).\n"
            + render_text(report)
        )
    return report
