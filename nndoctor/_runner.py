"""The script runner behind ``nndoctor check``: run an unmodified training script
in-process, find its model and optimizer, watch its first training steps, stop it, run
the experiments on what it fed the model, and return one ``Report``.

How the script is run (as ``python train.py ARGS`` would, with these differences):

* in this process, by :func:`runpy.run_path` with ``run_name="__main__"``, so
  ``if __name__ == "__main__":`` blocks run and classes defined in the script pickle as
  ``__main__.X`` (what DataLoader workers started with "spawn" need);
* ``sys.argv = [script, *args]``; the script's folder first on ``sys.path``; the current
  working directory is *not* changed (run nndoctor from where you would run the
  script: relative data paths resolve against it);
* ``sys.stdin`` is an empty stream: a script that asks for input reads end-of-file
  instead of waiting forever;
* all of these, torch's grad mode and default dtype, and modules the script imported
  from its own folder are put back afterwards.

Discovery uses torch's *global* module and optimizer hooks, which their docstrings
reserve for debugging and profiling: exactly this use, and only here. The model is the
first module called at depth 0 (not from inside another module's forward) with
gradients enabled and parameters that require grad. A ``Doctor`` is built and starts
watching at that moment, inside the model's first forward call.

Stopping: after ``steps`` completed steps a hook raises :class:`_StopScript`, a
``BaseException``, so ``except Exception`` in the user's code cannot swallow it. A
wall-clock budget (``timeout``) is enforced the same way from the hooks, and, for code
that never reaches torch (a blocking read, a long data preparation), by ``SIGALRM`` a
little later (main thread, POSIX only).

The library never prints: progress goes to the ``on_event`` callback, the outcome is a
:class:`ScriptRun`.
"""

from __future__ import annotations

import gc
import os
import runpy
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

from ._checkset import CheckSet
from ._doctor import NNDoctorUsageError
from ._runner_legacy import loss_from_graph  # noqa: F401 - re-exported
from ._runner_plan import (  # noqa: F401 - re-exported: the runner's public and tested names
    _find_loss_input,
    _OutputAdapter,
    _run_experiments,
    _skip,
    _state_for,
    _wanted_experiments,
    infer_sgd_lr,
)
from ._runner_session import (  # noqa: F401 - re-exported
    _PACKAGE_DIR,
    DEFAULT_SCRIPT_TIMEOUT_S,
    _Session,
)
from ._runner_types import (  # noqa: F401 - re-exported
    Outcome,
    ScriptError,
    ScriptNotFound,
    ScriptRun,
    ScriptSyntaxError,
    Seen,
    _display_path,
    _StopScript,
)

__all__ = [
    "Outcome",
    "ScriptRun",
    "ScriptError",
    "ScriptNotFound",
    "ScriptSyntaxError",
    "run_script",
    "loss_from_graph",
]

# --------------------------------------------------------------------------------------
# Locating the user's frame in a traceback
# --------------------------------------------------------------------------------------
def _is_internal(filename: str) -> bool:
    try:
        p = Path(filename).resolve()
    except (OSError, ValueError):
        return False
    if p.parent == _PACKAGE_DIR or _PACKAGE_DIR in p.parents:
        return True
    return p.name in ("runpy.py",) and "python" in str(p.parent).lower()


def _describe_error(exc: BaseException, script: Path) -> ScriptError:
    frames = traceback.extract_tb(exc.__traceback__)
    script_resolved = script.resolve()
    start = next((i for i, f in enumerate(frames) if Path(f.filename).resolve() == script_resolved), 0)
    shown = [f for f in frames[start:] if not _is_internal(f.filename)]
    folder = script_resolved.parent

    def is_user(f: traceback.FrameSummary) -> bool:
        p = Path(f.filename).resolve()
        return (p == script_resolved or folder in p.parents) and "site-packages" not in str(p)

    user = [f for f in shown if is_user(f)]
    frame = user[-1] if user else (shown[-1] if shown else None)
    lines = ["Traceback (most recent call last):\n", *traceback.format_list(shown),
             *traceback.format_exception_only(type(exc), exc)]
    return ScriptError(
        type=type(exc).__name__,
        message=str(exc),
        file=frame.filename if frame else None,
        line=frame.lineno if frame else None,
        function=frame.name if frame else None,
        source_line=(frame.line or None) if frame else None,
        traceback="".join(lines),
    )


# --------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------
def prepare_script(script: "str | os.PathLike[str]") -> Path:
    """Check that ``script`` is a readable Python file that compiles; raise
    :class:`ScriptNotFound` / :class:`ScriptSyntaxError` otherwise (nothing is run)."""
    path = Path(script)
    if not path.exists():
        raise ScriptNotFound(
            f"no such file: {script} (looked from {os.getcwd()}). Pass the path of the "
            f"training script, e.g. `nndoctor check path/to/train.py`."
        )
    if path.is_dir():
        raise ScriptNotFound(
            f"{script} is a folder; pass the training script itself, e.g. "
            f"`nndoctor check {Path(script) / 'train.py'}`."
        )
    try:
        source = path.read_bytes()
    except OSError as exc:
        raise ScriptNotFound(f"cannot read {script}: {exc.strerror or exc}.") from None
    try:
        compile(source, str(path), "exec", dont_inherit=True)
    except SyntaxError as exc:
        where = f"{script}:{exc.lineno}" + (f":{exc.offset}" if exc.offset else "")
        text = (exc.text or "").rstrip("\n")
        detail = f"\n    {text.strip()}" if text.strip() else ""
        raise ScriptSyntaxError(
            f"{where}: syntax error: {exc.msg}{detail}\nnndoctor did not run the script: "
            f"fix that line (`python {script}` shows the same error) and try again.",
            filename=str(script), lineno=exc.lineno, offset=exc.offset, text=exc.text,
        ) from None
    except ValueError as exc:  # e.g. null bytes
        raise ScriptSyntaxError(
            f"{script} is not Python source: {exc}.", filename=str(script), lineno=None,
            offset=None, text=None,
        ) from None
    return path


def run_script(
    script: "str | os.PathLike[str]",
    args: Sequence[str] = (),
    *,
    steps: int = 30,
    timeout: float | None = None,
    select: "str | Sequence[str] | None" = None,
    ignore: "str | Sequence[str] | None" = None,
    thresholds: dict[str, dict[str, float]] | None = None,
    experiments: bool = True,
    on_event: Callable[..., None] | None = None,
    checks: CheckSet | None = None,
    sample_every: int | None = None,
    dense_steps: int | None = None,
) -> ScriptRun:
    """Run ``script`` with ``args`` as ``__main__``, watch ``steps`` training steps, stop
    it, run the experiments on its first batch (unless ``experiments=False``) and
    return a :class:`ScriptRun` (its ``report`` is None when no model was found).

    Raises :class:`NNDoctorUsageError` (before running anything) for a missing file, a
    syntax error, unknown check ids or bad options. ``on_event(kind, **info)`` is
    called with ``"model"``, ``"optimizer"``, ``"step"``, ``"stopped"``,
    ``"experiments"`` and ``"experiments-done"`` as things happen.

    ``checks``: the resolved check set (the CLI's: config, then options); else one is
    resolved from ``select``/``ignore``/``thresholds``. Every watched step gets the
    per-layer statistics unless ``sample_every``/``dense_steps`` are given (the Doctor's
    defaults stand in for the one not given).

    ``timeout``: seconds for the script to produce the steps, and again for the
    experiments (0: no limit). None (the default): 120 s for the script, and for the
    experiments a budget derived from the measured time of one of its training steps
    (:func:`nndoctor._experiment_budget.derived_budget`), so a big model's experiments
    are not starved and a small one's do not wait."""
    if steps < 1:
        raise NNDoctorUsageError(f"--steps must be at least 1 (got {steps}).")
    if timeout is not None and timeout < 0:
        raise NNDoctorUsageError(f"--timeout must be positive (got {timeout}).")
    if checks is None:  # unknown ids or threshold names: fail now
        checks = CheckSet.resolve(select, ignore, thresholds)
    elif select is not None or ignore is not None or thresholds is not None:
        checks = CheckSet.resolve(select, ignore, thresholds, base=checks)
    if sample_every is None and dense_steps is None:
        sample_every, dense_steps = 1, steps + 1  # short runs: every step in full
    path = prepare_script(script)
    display = str(script)
    session = _Session(
        path, display, steps=steps, timeout=DEFAULT_SCRIPT_TIMEOUT_S if timeout is None else timeout,
        doctor_kwargs={"checks": checks, "sample_every": 20 if sample_every is None else sample_every,
                       "dense_steps": 4 if dense_steps is None else dense_steps},
        on_event=on_event,
    )
    session._args = [str(a) for a in args]
    session.experiment_timeout = timeout

    outcome = Outcome.FINISHED
    error: ScriptError | None = None
    exit_code: Any = None
    try:
        try:
            session.install()
            with session.alarm():
                runpy.run_path(str(path), run_name="__main__")
        finally:
            # Hooks off, Doctor's watch closed, process state back (reverse order).
            session.stopping = True
            session.stack.close()
    except _StopScript as stop:
        outcome = stop.outcome
        stop.__traceback__ = None
    except SystemExit as exc:
        outcome, exit_code = Outcome.EXITED, exc.code
        exc.__traceback__ = None
    except KeyboardInterrupt as exc:
        outcome = Outcome.INTERRUPTED
        exc.__traceback__ = None
    except BaseException as exc:  # noqa: BLE001 - the script's own error, reported
        outcome = Outcome.RAISED
        error = _describe_error(exc, path)
        exc.__traceback__ = None
    # The frames of the stopped script (and the DataLoader iterators they hold, with
    # their worker processes) go now, not at some later collection.
    gc.collect()
    seconds = time.monotonic() - session.start if session.start else 0.0
    session.emit("stopped", outcome=outcome.value, seconds=seconds)

    doctor = session.doctor
    optimizer = session.optimizer
    run = ScriptRun(
        script=display, outcome=outcome, report=None, steps=0, steps_requested=steps,
        seconds=seconds, seen=session.seen, error=error, exit_code=exit_code,
        model=type(session.model).__name__ if session.model is not None else None,
        optimizer=type(optimizer).__name__ if optimizer is not None else None,
        notes=session.notes, step_seconds=session.step_seconds,
    )
    if doctor is None:
        return run
    report = doctor.report()
    # Optimizer steps when the optimizer existed from the start (accumulation, LBFGS).
    run.steps = (session.optimizer_steps_done if session.optimizer_known and session.optimizer_steps_done
                 else doctor.steps_completed)
    report.script = display
    wanted_experiments = _wanted_experiments(checks)
    if not wanted_experiments:
        run.experiments = "not selected"
    elif not experiments:
        run.experiments = "skipped: --no-experiments"
        report = _skip(report, wanted_experiments, "experiments switched off (--no-experiments)")
    elif run.steps == 0:
        run.experiments = "skipped: no training step was watched"
        report = _skip(report, wanted_experiments, "no training step was watched")
    else:
        t0 = time.monotonic()
        session.emit("experiments", checks=wanted_experiments)
        try:
            report, run.experiments = _run_experiments(
                session, report, wanted_experiments, select=select, ignore=ignore, thresholds=thresholds,
            )
        except KeyboardInterrupt:  # Ctrl-C: keep what the watched steps showed
            run.experiments = "interrupted"
            report = _skip(report, wanted_experiments, "interrupted (Ctrl-C) during the experiments")
        run.experiment_seconds = time.monotonic() - t0
        run.experiment_budget = session.experiment_budget
        session.emit("experiments-done", seconds=run.experiment_seconds)
    report.script = display
    run.report = report
    return run


