"""The ``nndoctor`` command line (CONTRACT §2).

    nndoctor check train.py [OPTIONS] [-- SCRIPT_ARGS...]
    nndoctor checks
    nndoctor explain ID

Only this module prints: the library returns data, the CLI shows it. The report goes to
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
from rich.console import Console
from rich.markup import escape

from ._exit import ExitCode, exit_code, failing_findings

__all__ = ["app", "main", "ExitCode"]


class FailOn(str, enum.Enum):
    error = "error"
    warning = "warning"
    info = "info"


class OutputFormat(str, enum.Enum):
    text = "text"
    json = "json"
    github = "github"
    sarif = "sarif"


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


def _out() -> Console:
    return Console(soft_wrap=False)


def _err() -> Console:
    return Console(stderr=True, highlight=False)


def _fail(message: str, code: ExitCode = ExitCode.USAGE_OR_INTERNAL) -> "typer.Exit":
    _err().print(f"[bold red]nndoctor:[/] {escape(message)}", soft_wrap=True)
    return typer.Exit(int(code))


# ======================================================================================
# check
# ======================================================================================
class _Progress:
    """Progress on stderr while the script runs and while the experiments run (only on
    a terminal: logs and pipes get the final messages, not a redrawn bar)."""

    def __init__(self, console: Console, script: str, steps: int, verbose: bool) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = console
        self.verbose = verbose
        self.progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=console, transient=True,
            disable=not console.is_terminal,
        )
        self.task = self.progress.add_task(f"running {escape(script)}: looking for the model", total=steps)
        self.steps = steps
        self.model = ""

    def __enter__(self) -> "_Progress":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def log(self, text: str) -> None:
        if self.verbose:
            self.console.print(f"[dim]nndoctor: {escape(text)}[/]", soft_wrap=True)

    def __call__(self, kind: str, **info: Any) -> None:
        if kind == "model":
            self.model = f"{info['name']} ({info['parameters']:,} parameters)"
            self.progress.update(self.task, description=f"watching {escape(self.model)}")
            self.log(f"model found: {self.model}; watching its training steps")
        elif kind == "optimizer":
            self.log(f"optimizer found: {info['name']}")
        elif kind == "step":
            self.progress.update(self.task, completed=min(info["step"], self.steps))
        elif kind == "stopped":
            self.progress.update(self.task, visible=False)
            self.log(f"script stopped ({info['outcome']}) after {info['seconds']:.1f} s")
        elif kind == "experiments":
            self.exp_task = self.progress.add_task(
                "experiments: " + ", ".join(info["checks"]), total=None)
            self.log("running the experiments: " + ", ".join(info["checks"]))
        elif kind == "experiments-done":
            if hasattr(self, "exp_task"):
                self.progress.update(self.exp_task, visible=False)
            # no "done in 0.0 s" here: the final line says whether they ran or were skipped


def _steps_text(run: Any) -> str:
    if run.model is None:
        return "before any model was found"
    if run.steps == 0:
        return "before the first training step"
    return f"at step {run.steps} (of {run.steps_requested} to watch)"


def _json_without_report(json_path: "Path | None", script: str, message: str, run: Any,
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


def _no_training_message(run: Any, timeout: float) -> str:
    from ._runner import Outcome

    seen = run.seen
    script = run.script
    if not seen.root_calls and getattr(seen, "child_processes", 0):
        return (f"no training in this process: {script} started {seen.child_processes} child process(es) "
                f"(torch.multiprocessing.spawn / mp.spawn, multiprocessing) and no torch.nn.Module was "
                f"called here. nndoctor watches training in the process it runs; it cannot follow "
                f"children. Run each worker under torchrun instead (`torchrun --nproc-per-node 2 -m "
                f"nndoctor check {script}`), or use the Python API inside the worker function: "
                f"`with Doctor(model, optimizer=opt).watch(): ...` then `doctor.report()`.")
    if run.outcome is Outcome.TIMEOUT:
        head = f"no training step within --timeout {timeout:g} s in {script}"
    elif run.outcome is Outcome.EXITED:
        head = f"{script} exited (sys.exit({run.exit_code!r})) before any training step"
    elif run.outcome is Outcome.INTERRUPTED:
        head = f"interrupted before any training step of {script}"
    else:
        head = f"no training found to watch: {script} ran to its end in {run.seconds:.1f} s"
    if run.outcome is Outcome.TIMEOUT and (run.model is not None or seen.root_calls):
        head = f"the first training step of {script} did not finish within --timeout {timeout:g} s"
        what = (f"the model {run.model} was found" if run.model is not None
                else f"seen so far: {seen.describe()}")
    elif run.model is not None:
        what = (f"the model {run.model} was called {seen.model_calls} time(s) with gradients enabled, "
                f"but backward() was never called on a loss (forward seen but no backward)")
    elif seen.root_calls:
        what = f"no module forward with gradients: {seen.describe()}"
    else:
        what = "no torch.nn.Module was ever called"
    if seen.optimizer_steps:
        what += f"; {seen.optimizer_steps} optimizer step(s) ({', '.join(seen.optimizer_classes)})"
    advice = ("nndoctor watches a training loop: a model forward with gradients, loss.backward() and "
              "an update. If training sits behind a command-line flag or a sub-command, pass the "
              "script's arguments after `--`: nndoctor check train.py -- --train.")
    if run.outcome is Outcome.TIMEOUT:
        advice = ("If the script takes long to start (loading or preparing data), raise --timeout; "
                  + advice)
    if run.outcome is Outcome.EXITED and run.exit_code not in (0, None):
        advice = ("If argparse rejected the arguments (its message is above), pass the script's "
                  "arguments after `--`. " + advice)
    return f"{head}; {what}.\n{advice}"


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

    err = _err()
    script_timeout = 120.0 if timeout is None else timeout  # run_script's default for the script
    # [tool.nndoctor] first, then the options given on the command line (which win); the
    # check set is resolved once, here, and used by the watch, the checkup and the merge.
    try:
        config = _project_config(script)
        checkset = CheckSet.from_layers((config, f"[tool.nndoctor] of {config.get('_path')}"),
                                        ({"select": select, "ignore": ignore}, "the command line"))
    except NNDoctorUsageError as exc:
        raise _fail(str(exc)) from None
    steps = steps if steps is not None else config.get("steps", 30)
    fail_on_value = fail_on.value if fail_on is not None else config.get("fail_on", "error")
    _check_output_paths(json_path, logdir)
    json_mode = output_format is not OutputFormat.text  # stdout carries the report only
    progress = _Progress(err, script, steps, verbose)
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
        _json_without_report(json_path, script, str(exc), None, [c.id for c in checkset])
        raise _fail(str(exc)) from None
    except Exception as exc:  # an internal failure: say so, and how to report it
        if verbose:
            err.print_exception()
        message = (f"internal error while checking {script}: {type(exc).__name__}: {exc}. This is a bug "
                   f"in nndoctor; rerun with --verbose for the traceback and report it.")
        _json_without_report(json_path, script, message, None, [c.id for c in checkset])
        raise _fail(message) from None

    report = run.report
    ids = [c.id for c in checkset]
    if report is None or run.steps == 0:
        if run.outcome is Outcome.RAISED and run.error is not None:
            _print_error(err, run, verbose)
            _json_without_report(json_path, script, f"the script raised {run.error.type} at "
                                 f"{run.error.location} {_steps_text(run)}: {run.error.message}", run, ids)
            raise typer.Exit(int(exit_code(None, script_raised=True)))
        message = _no_training_message(run, script_timeout)
        _json_without_report(json_path, script, message, run, ids)
        raise _fail(message, exit_code(None, could_not_run=True))

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
            raise _fail(f"cannot write the JSON report to {json_path}: {exc.strerror or exc}.") from None
    _emit_report(report, output_format, verbose)

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
        _print_error(err, run, verbose)
        raise typer.Exit(int(exit_code(report, fail_on_value, script_raised=True)))
    if run.outcome is Outcome.INTERRUPTED:
        raise _fail(f"interrupted {_steps_text(run)}; the report covers the steps watched so far.",
                    exit_code(report, fail_on_value, could_not_run=True))
    if run.experiments == "interrupted":
        raise _fail(f"interrupted during the experiments after {run.steps} watched step(s); the report "
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


def _check_output_paths(json_path: "Path | None", logdir: "Path | None") -> None:
    """Refuse, before running anything, to write into folders that do not exist: a typo in
    ``--json`` must not create a tree of folders somewhere."""
    if json_path is not None:
        parent = json_path.expanduser().parent
        if not parent.is_dir():
            raise _fail(f"cannot write the JSON report to {json_path}: the folder {parent} does not exist. "
                        f"Create it first, or give a path in an existing folder.")
    if logdir is not None:
        parent = logdir.expanduser().parent
        if not logdir.expanduser().is_dir() and not parent.is_dir():
            raise _fail(f"cannot write TensorBoard files to {logdir}: its parent folder {parent} does not "
                        f"exist. Create it first, or give a logdir in an existing folder.")


def _emit_report(report: Any, output_format: "OutputFormat", verbose: bool) -> None:
    """The report on stdout, in the chosen format."""
    if output_format is OutputFormat.text:
        report.print(_out(), verbose=verbose)
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


def _print_error(err: Console, run: Any, verbose: bool) -> None:
    e = run.error
    where = f"in `{e.location}`" + (f" ({e.function})" if e.function and e.function != "<module>" else "")
    after = ("findings so far are in the report above" if run.trained
             else "no training step was watched, so there are no findings")
    err.print(f"[bold red]nndoctor:[/] the script raised {escape(e.type)}: {escape(e.message)} "
              f"{_steps_text(run)}, {escape(where)}; {after}.", soft_wrap=True)
    if e.source_line:
        err.print(f"    {escape(e.source_line)}", soft_wrap=True, highlight=False)
    if verbose:
        err.print(escape(e.traceback.rstrip()), soft_wrap=True, highlight=False)
        err.print("Fix the error and run again.")
    else:
        err.print("Fix the error and run again (--verbose shows the traceback; `python "
                  f"{escape(run.script)}` raises the same).", soft_wrap=True)


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

    console = _out()
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
        raise _fail(f"unknown check id {check_id!r}.{hint} `nndoctor checks` lists them all.")
    page = render_explain(cls)
    if output_format is ExplainFormat.markdown:
        sys.stdout.write(page)
        return
    from rich.markdown import Markdown

    _out().print(Markdown(page))


def main() -> None:
    """Console-script entry point (``nndoctor``)."""
    app(prog_name="nndoctor")


if __name__ == "__main__":
    main()
