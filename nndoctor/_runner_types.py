"""The types that describe a script run under ``nndoctor check`` (its outcome, the
error it raised, what it did when no training was found) and the small helpers the
runner's session and plan share (:mod:`nndoctor._runner_session`)."""

from __future__ import annotations

import dataclasses
import enum
import os
import sys
from typing import Any

from ._doctor import NNDoctorUsageError
from ._report import Report


class ScriptNotFound(NNDoctorUsageError):
    """The script path does not name a readable Python file."""


class ScriptSyntaxError(NNDoctorUsageError):
    """The script does not compile; ``lineno``/``text`` say where."""

    def __init__(self, message: str, *, filename: str, lineno: int | None, offset: int | None,
                 text: str | None) -> None:
        super().__init__(message)
        self.filename, self.lineno, self.offset, self.text = filename, lineno, offset, text


class Outcome(str, enum.Enum):
    """How the script's run ended."""

    STEPS_REACHED = "steps-reached"  # we stopped it after the requested steps
    FINISHED = "finished"            # it ran to its end by itself
    EXITED = "exited"                # it called sys.exit()
    TIMEOUT = "timeout"              # the wall-clock budget ran out
    RAISED = "raised"                # it raised an exception
    INTERRUPTED = "interrupted"      # KeyboardInterrupt


class _StopScript(BaseException):
    """Raised from our hooks to end the script; a BaseException so that the user's
    ``except Exception`` blocks let it through."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.value)
        self.outcome = outcome


@dataclasses.dataclass
class ScriptError:
    """An exception the script raised, located in the user's code."""

    type: str
    message: str
    file: str | None
    line: int | None
    function: str | None
    source_line: str | None
    traceback: str  # the user's part of the traceback (nndoctor and runpy frames hidden)

    @property
    def location(self) -> str:
        if self.file is None:
            return "an unknown place"
        return f"{_display_path(self.file)}:{self.line}"


@dataclasses.dataclass
class Seen:
    """What the script did, for the message when no training was found."""

    root_calls: int = 0               # module calls at depth 0
    root_classes: list[str] = dataclasses.field(default_factory=list)
    calls_without_grad: int = 0       # depth-0 calls with grad disabled
    calls_frozen: int = 0             # depth-0 calls of modules with no trainable parameter
    optimizer_steps: int = 0
    optimizer_classes: list[str] = dataclasses.field(default_factory=list)
    model_calls: int = 0
    child_processes: int = 0          # processes the script started (mp.spawn, multiprocessing)

    def describe(self) -> str:
        if self.root_calls == 0:
            return "no torch.nn.Module was ever called"
        names = ", ".join(self.root_classes[:4]) + (", ..." if len(self.root_classes) > 4 else "")
        parts = [f"{self.root_calls} module call(s) at top level ({names})"]
        if self.calls_without_grad:
            parts.append(f"{self.calls_without_grad} with gradients disabled (torch.no_grad / inference_mode)")
        if self.calls_frozen:
            parts.append(f"{self.calls_frozen} of modules with no parameter that requires grad")
        return "; ".join(parts)


@dataclasses.dataclass
class ScriptRun:
    """The outcome of :func:`run_script`."""

    script: str
    outcome: Outcome
    report: Report | None              # None when no model was found
    steps: int                         # training steps watched
    steps_requested: int
    seconds: float                     # the script's wall time under watch
    seen: Seen
    error: ScriptError | None = None
    exit_code: Any = None              # the script's sys.exit() argument
    model: str | None = None
    optimizer: str | None = None
    experiments: str = "not run"       # "ran", "skipped: <why>", "not run"
    experiment_seconds: float = 0.0
    experiment_budget: float | None = None  # seconds the experiments were given (None: no limit)
    notes: list[str] = dataclasses.field(default_factory=list)
    step_seconds: float | None = None  # the script's own time for one watched training step

    @property
    def trained(self) -> bool:
        return self.report is not None and self.steps > 0


def _clone_tree(obj: Any) -> Any:
    from ._tree import map_tensors

    return map_tensors(obj, lambda t: t.detach().clone())


def _numpy_state() -> Any:
    np = sys.modules.get("numpy")
    return np.random.get_state() if np is not None else None


def _display_path(path: str) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return rel if not rel.startswith("..") else path
