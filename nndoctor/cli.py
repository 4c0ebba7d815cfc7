"""The ``nndoctor`` command line (CONTRACT §2).

    nndoctor check train.py [OPTIONS] [-- SCRIPT_ARGS...]
    nndoctor checks
    nndoctor explain ID

Only the CLI prints (this module, with the run's messages in ``_cli_messages`` and the
outputs in ``_cli_outputs``): the library returns data, the CLI shows it. The report goes to
stdout (``--format json``: the JSON report and nothing else; the script's own output is
sent to stderr then); progress, notes and error messages go to stderr.
"""

from __future__ import annotations

import contextlib
import enum
import sys
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.markup import escape

from ._cli_messages import RunProgress, no_training_message, print_script_error, steps_text
from ._cli_outputs import (
    OutputFormat,
    check_output_paths,
    emit_report,
    err_console,
    fail,
    json_without_report,
    out_console,
    run_logdir,
)
from ._exit import ExitCode, exit_code, failing_findings

__all__ = ["app", "main", "ExitCode"]
# run_logdir and OutputFormat stay importable from here (nndoctor.cli.run_logdir).


class FailOn(str, enum.Enum):
    error = "error"
    warning = "warning"
    info = "info"


class ExplainFormat(str, enum.Enum):
    text = "text"
    markdown = "markdown"


class ListFormat(str, enum.Enum):
    text = "text"
    json = "json"


app = typer.Typer(
    name="nndoctor",
    help="Diagnoses why a PyTorch network is not training.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool) -> None:
    if value:
        from . import __version__

        sys.stdout.write(f"nndoctor {__version__}\n")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                 help="Print nndoctor's version and exit."),
) -> None:
    """Diagnoses why a PyTorch network is not training."""


class _CheckCommand(typer.core.TyperCommand):
    """``nndoctor check``: an unknown option is most often the script's own option given
    without ``--``; say so."""

    def parse_args(self, ctx: Any, args: List[str]) -> List[str]:
        given = list(args)  # the parser consumes the list
        try:
            return super().parse_args(ctx, args)
        except Exception as exc:
            # click's NoSuchOption (typer >= 0.2x vendors its own copy of click: match by name)
            if type(exc).__name__ != "NoSuchOption" or not hasattr(exc, "option_name"):
                raise
            script = next((a for a in given if not a.startswith("-")), "train.py")
            i = given.index(exc.option_name) if exc.option_name in given else -1
            rest = " ".join(a for a in given[i:] if a != script) if i >= 0 else exc.option_name
            exc.message = (f"{exc.message.rstrip('.')}. Script options go after --: "
                           f"nndoctor check {script} -- {rest}")
            exc.possibilities = None  # "did you mean --logdir?" misleads here
            raise


# ======================================================================================
# check
# ======================================================================================
@app.command(no_args_is_help=True, cls=_CheckCommand)
def check(
    script: str = typer.Argument(..., help="The training script to run (unmodified).", metavar="SCRIPT"),
    script_args: Optional[List[str]] = typer.Argument(
        None, help="Arguments for the script, after `--`.", metavar="[-- SCRIPT_ARGS...]", show_default=False),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, show_default=False,
                                        help="Training steps to watch (an optimizer step, or a backward "
                                             "where weights are updated by hand).  (default: 30, or steps in "
                                             "the tool.nndoctor table of pyproject.toml)"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the JSON report (schema 1) here.",
                                             dir_okay=False),
    logdir: Optional[Path] = typer.Option(None, "--logdir", help="Write TensorBoard events and PNG figures in "
                                          "a new run-<date>-<time> folder inside this one.",
                                          file_okay=False),
    select: Optional[str] = typer.Option(None, "--select", help="Run only these checks: ID,ID,..."),
    ignore: Optional[str] = typer.Option(None, "--ignore", help="Skip these checks: ID,ID,..."),
    no_experiments: bool = typer.Option(False, "--no-experiments", help="Passive watching only: no experiments."),
    fail_on: Optional[FailOn] = typer.Option(None, "--fail-on", case_sensitive=False, show_default=False,
                                             help="Exit 1 when a finding is at least this severe.  "
                                                  "(default: error, or fail_on in the tool.nndoctor table)"),
    output_format: OutputFormat = typer.Option(OutputFormat.text, "--format", case_sensitive=False,
                                               help="text: the console report; json: the JSON report; "
                                                    "github: GitHub Actions annotations; sarif: SARIF 2.1.0. "
                                                    "Other than text, stdout carries the report only."),
    exit_zero: bool = typer.Option(False, "--exit-zero", help="Exit 0 whatever the findings (still 2 when "
                                   "nndoctor could not run, 3 when the script raised)."),
    timeout: Optional[float] = typer.Option(None, "--timeout", min=0.0, show_default=False,
                                  help="Wall-clock budget in seconds for the script to produce the steps, "
                                       "and again for the experiments (0: none).  (default: 120 s for the "
                                       "script; for the experiments, derived from the time of one of its "
                                       "training steps)"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show what happens, skipped checks' "
                                 "reasons and full tracebacks."),
) -> None:
    """Run a training script, watch its first steps, run the experiments and report.

    \b
    Example:  nndoctor check train.py --steps 20 -- --lr 0.1 --epochs 1
    Exit status: 0 ok, 1 findings at or above --fail-on, 2 nndoctor could not do its job,
    3 the script raised (findings so far are reported).
    """
    from ._checkset import CheckSet
    from ._doctor import NNDoctorUsageError
    from ._runner import Outcome, run_script

    err = err_console()
    script_timeout = 120.0 if timeout is None else timeout  # run_script's default for the script
    # [tool.nndoctor] first, then the options given on the command line (which win); the
    # check set is resolved once, here, and used by the watch, the checkup and the merge.
    try:
        config = _project_config(script)
        checkset = CheckSet.from_layers((config, f"[tool.nndoctor] of {config.get('_path')}"),
                                        ({"select": select, "ignore": ignore}, "the command line"))
    except NNDoctorUsageError as exc:
        raise fail(str(exc)) from None
    steps = steps if steps is not None else config.get("steps", 30)
    fail_on_value = fail_on.value if fail_on is not None else config.get("fail_on", "error")
    check_output_paths(json_path, logdir)
    json_mode = output_format is not OutputFormat.text  # stdout carries the report only
    progress = RunProgress(err, script, steps, verbose)
    # In JSON mode stdout carries the report only: the script's prints go to stderr.
    redirect = contextlib.redirect_stdout(sys.stderr) if json_mode else contextlib.nullcontext()
    try:
        with redirect, progress:
            run = run_script(
                script, list(script_args or []), steps=steps, timeout=timeout, checks=checkset,
                sample_every=config.get("sample_every"), dense_steps=config.get("dense_steps"),
                experiments=not no_experiments, on_event=progress,
            )
    except NNDoctorUsageError as exc:
        json_without_report(json_path, script, str(exc), None, [c.id for c in checkset])
        raise fail(str(exc)) from None
    except Exception as exc:  # an internal failure: say so, and how to report it
        if verbose:
            err.print_exception()
        message = (f"internal error while checking {script}: {type(exc).__name__}: {exc}. This is a bug "
                   f"in nndoctor; rerun with --verbose for the traceback and report it.")
        json_without_report(json_path, script, message, None, [c.id for c in checkset])
        raise fail(message) from None

    report = run.report
    ids = [c.id for c in checkset]
    if report is None or run.steps == 0:
        if run.outcome is Outcome.RAISED and run.error is not None:
            print_script_error(err, run, verbose)
            json_without_report(json_path, script, f"the script raised {run.error.type} at "
                                 f"{run.error.location} {steps_text(run)}: {run.error.message}", run, ids)
            raise typer.Exit(int(exit_code(None, script_raised=True)))
        message = no_training_message(run, script_timeout)
        json_without_report(json_path, script, message, run, ids)
        raise fail(message, exit_code(None, could_not_run=True))

    # Under torchrun: every rank watched its own copy of the script; rank 0 reports once
    # for all of them (findings name their ranks; the DDP checks judge all ranks' facts).
    from . import _distributed

    if _distributed.is_distributed():
        try:
            merged = _distributed.gather_reports(report, checks=checkset)
        except Exception as exc:
            err.print(f"[yellow]nndoctor: could not gather the other ranks' findings: {escape(repr(exc))}; "
                      f"reporting this rank only[/]", soft_wrap=True)
        else:
            if merged is None:  # not rank 0: rank 0 reports for every rank
                _release_process_group()
                raise typer.Exit(int(ExitCode.OK))
            report = merged
        finally_release = True
    else:
        finally_release = False

    # Outputs: TensorBoard first (the console report then names the logdir), JSON, console.
    if logdir is not None:
        try:
            run_dir = run_logdir(logdir)
            report.to_tensorboard(str(run_dir))
            report.logdir = str(run_dir)
        except ImportError as exc:
            err.print(f"[yellow]nndoctor: --logdir needs TensorBoard support: {escape(str(exc))}[/]")
        except Exception as exc:
            err.print(f"[yellow]nndoctor: writing TensorBoard files to {escape(str(logdir))} failed: "
                      f"{escape(repr(exc))}[/]")
    if json_path is not None:
        try:
            report.to_json(json_path)
        except OSError as exc:
            raise fail(f"cannot write the JSON report to {json_path}: {exc.strerror or exc}.") from None
    emit_report(report, output_format, verbose)

    for note in run.notes:
        err.print(f"[dim]nndoctor: note: {escape(note)}[/]", soft_wrap=True)
    if verbose:
        err.print(f"[dim]nndoctor: watched {run.steps} step(s) of {escape(str(run.model))} "
                  f"({escape(str(run.optimizer or 'hand-written updates'))}) in {run.seconds:.1f} s; "
                  f"experiments: {escape(run.experiments)}"
                  + (f" ({run.experiment_seconds:.1f} s)" if run.experiments == "ran" else "") + "[/]",
                  soft_wrap=True)
    elif run.experiments.startswith("skipped: ") and not no_experiments:
        err.print(f"[dim]nndoctor: experiments {escape(run.experiments)}[/]", soft_wrap=True)
    elif run.experiments == "ran":
        # An experiment skipped on its own (the time budget ran out, the model cannot be
        # copied...) changes what the diagnosis rests on: one visible line each, with why.
        experiment_ids = {c.id for c in checkset.experiment}
        for s in report.checks_skipped:
            if s.get("check") in experiment_ids:
                err.print(f"[yellow]nndoctor: experiment {escape(s['check'])} skipped: {escape(str(s.get('reason')))}[/]",
                          soft_wrap=True)

    if run.outcome is Outcome.RAISED:
        print_script_error(err, run, verbose)
        raise typer.Exit(int(exit_code(report, fail_on_value, script_raised=True)))
    if run.outcome is Outcome.INTERRUPTED:
        raise fail(f"interrupted {steps_text(run)}; the report covers the steps watched so far.",
                    exit_code(report, fail_on_value, could_not_run=True))
    if run.experiments == "interrupted":
        raise fail(f"interrupted during the experiments after {run.steps} watched step(s); the report "
                    f"above covers the watched steps and the experiments that had finished.",
                    exit_code(report, fail_on_value, could_not_run=True))
    if run.outcome is Outcome.TIMEOUT:
        err.print(f"[yellow]nndoctor: stopped {escape(script)} at the --timeout of {script_timeout:g} s with "
                  f"{run.steps} of {steps} step(s) watched; the report covers those. Raise --timeout "
                  f"to watch more.[/]", soft_wrap=True)
    elif run.outcome in (Outcome.FINISHED, Outcome.EXITED) and run.steps < steps:
        how = "ran to its end" if run.outcome is Outcome.FINISHED else f"called sys.exit({run.exit_code!r})"
        err.print(f"[dim]nndoctor: the script {how} after {run.steps} step(s) (fewer than --steps "
                  f"{steps}); the report covers those.[/]", soft_wrap=True)
    if finally_release:  # rank 0, after reporting: the other ranks wait at the barrier
        _release_process_group()
    code = exit_code(report, fail_on_value)
    if code is ExitCode.FINDINGS:
        failing = failing_findings(report, fail_on_value)
        ids = ", ".join(dict.fromkeys(f.check for f in failing))
        err.print(f"nndoctor: {len(failing)} finding(s) at or above '{fail_on_value}' ({escape(ids)}); "
                  f"`nndoctor explain ID` tells more.", soft_wrap=True, highlight=False)
    raise typer.Exit(int(exit_code(report, fail_on_value, exit_zero=exit_zero)))


def _project_config(script: str) -> dict:
    """``[tool.nndoctor]`` from the pyproject.toml nearest to the script, validated
    (every key is honoured; the command-line options win over it), with its path under
    ``"_path"``. A bad table is a usage error naming the file and the key."""
    from ._config import ConfigError, find_pyproject, load_config
    from ._doctor import NNDoctorUsageError

    start = Path(script).parent if Path(script).parent.is_dir() else Path(".")
    try:
        config = load_config(start)
    except ConfigError as exc:
        raise NNDoctorUsageError(str(exc)) from None
    return {**config, "_path": str(find_pyproject(start))} if config else {}


def _release_process_group() -> None:
    """The stopped script's process group (under torchrun) is ours to close: close it
    after a barrier, so no rank tears gloo down while another still talks to it."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            import datetime

            try:  # bounded: a rank that left early must not hang the others
                dist.monitored_barrier(timeout=datetime.timedelta(seconds=60))
            except Exception:
                pass
            dist.destroy_process_group()
    except Exception:  # closing is best effort; the report is already out
        pass


# ======================================================================================
# checks / explain
# ======================================================================================
@app.command("checks")
def checks_command(
    output_format: ListFormat = typer.Option(ListFormat.text, "--format", case_sensitive=False,
                                             help="text: a table; json: a list of objects."),
) -> None:
    """List every check: id, severity, family, title."""
    from .checks._registry import REGISTRY

    if output_format is ListFormat.json:
        import json

        rows = [{"id": c.id, "severity": c.severity.value, "family": c.family,
                 "kind": "watch" if c.kind == "passive" else c.kind,
                 "title": c.title} for c in REGISTRY.values()]
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    from .reporters.console import checks_table

    console = out_console()
    console.print(checks_table(REGISTRY, console.width))
    console.print("[dim]`nndoctor explain ID` describes a check.[/]")


@app.command()
def explain(
    check_id: str = typer.Argument(..., metavar="ID", help="A check id, e.g. dead-relu."),
    output_format: ExplainFormat = typer.Option(ExplainFormat.text, "--format", case_sensitive=False,
                                                help="text: rendered; markdown: the raw catalogue page."),
) -> None:
    """What a check measures, why, its thresholds, how to fix, the sources."""
    import difflib

    from ._catalogue import render_explain
    from .checks._registry import REGISTRY

    cls = REGISTRY.get(check_id.strip().lower())
    if cls is None:
        close = difflib.get_close_matches(check_id.lower(), list(REGISTRY), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise fail(f"unknown check id {check_id!r}.{hint} `nndoctor checks` lists them all.")
    page = render_explain(cls)
    if output_format is ExplainFormat.markdown:
        sys.stdout.write(page)
        return
    from rich.markdown import Markdown

    out_console().print(Markdown(page))


def main() -> None:
    """Console-script entry point (``nndoctor``)."""
    app(prog_name="nndoctor")


if __name__ == "__main__":
    main()
