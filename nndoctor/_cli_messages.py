"""What ``nndoctor check`` tells the user on stderr about the run: progress while the
script and the experiments run, and the messages for a run that did not give a report
(no training found, the script raised). Used by :mod:`nndoctor.cli`, which alone prints."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape

__all__ = ["RunProgress", "steps_text", "no_training_message", "print_script_error"]


class RunProgress:
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

    def __enter__(self) -> "RunProgress":
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


def steps_text(run: Any) -> str:
    if run.model is None:
        return "before any model was found"
    if run.steps == 0:
        return "before the first training step"
    return f"at step {run.steps} (of {run.steps_requested} to watch)"


def no_training_message(run: Any, timeout: float) -> str:
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


def print_script_error(err: Console, run: Any, verbose: bool) -> None:
    e = run.error
    where = f"in `{e.location}`" + (f" ({e.function})" if e.function and e.function != "<module>" else "")
    after = ("findings so far are in the report above" if run.trained
             else "no training step was watched, so there are no findings")
    err.print(f"[bold red]nndoctor:[/] the script raised {escape(e.type)}: {escape(e.message)} "
              f"{steps_text(run)}, {escape(where)}; {after}.", soft_wrap=True)
    if e.source_line:
        err.print(f"    {escape(e.source_line)}", soft_wrap=True, highlight=False)
    if verbose:
        err.print(escape(e.traceback.rstrip()), soft_wrap=True, highlight=False)
        err.print("Fix the error and run again.")
    else:
        err.print("Fix the error and run again (--verbose shows the traceback; `python "
                  f"{escape(run.script)}` raises the same).", soft_wrap=True)
