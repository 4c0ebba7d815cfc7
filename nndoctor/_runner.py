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

import contextlib
import copy
import dataclasses
import enum
import gc
import io
import math
import os
import random
import runpy
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ._checkset import CheckSet
from ._doctor import Doctor, NNDoctorUsageError
from ._replay import (
    BackwardLink,
    _compiling,
    LossRecorder,
    call_kwargs_from_frame,
    link_backward,
    scalar_outputs,
)
from ._report import Report

__all__ = [
    "Outcome",
    "ScriptRun",
    "ScriptError",
    "ScriptNotFound",
    "ScriptSyntaxError",
    "run_script",
    "loss_from_graph",
]

_PACKAGE_DIR = Path(__file__).resolve().parent
# After the cooperative deadline (checked in the hooks) the alarm gives the script this
# long to reach a hook before it interrupts whatever Python code is running.
_ALARM_GRACE_S = 2.0
# The step-0 loss rebuilt from the loss graph must match the script's own within this.
_LOSS_MATCH_RTOL = 1e-3
# Extra seconds a compiled model's first step may take (its cold compile) beyond --timeout.
_COMPILE_ALLOWANCE_S = 300.0


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
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def trained(self) -> bool:
        return self.report is not None and self.steps > 0


def _clone_tree(obj: Any) -> Any:
    from ._tree import map_tensors

    return map_tensors(obj, lambda t: t.detach().clone())


def _display_path(path: str) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return rel if not rel.startswith("..") else path


# --------------------------------------------------------------------------------------
# Loss functions rebuilt from the loss graph
# --------------------------------------------------------------------------------------
def loss_from_graph(kind: str | None) -> Callable[..., torch.Tensor] | None:
    """The torch function for a loss kind recognised in the loss's autograd graph."""
    import torch.nn.functional as F

    return {
        "cross_entropy": F.cross_entropy,
        "nll": F.nll_loss,
        "bce_logits": F.binary_cross_entropy_with_logits,
        "bce": F.binary_cross_entropy,
        "mse": F.mse_loss,
        "smooth_l1": F.smooth_l1_loss,
        "huber": F.huber_loss,
    }.get(kind or "")


class _OutputAdapter(nn.Module):
    """The model with its output cut down to the tensor its loss is computed from:
    models that return ``(logits, hidden)`` or ``(logits, loss)``, or whose logits the
    script reshapes before the loss (``output.view(-1, ntokens)``). Parameters are the
    model's own, so the script's optimizer still maps onto them."""

    def __init__(self, model: nn.Module, index: tuple[Any, ...], tail: tuple[int, ...] | None) -> None:
        super().__init__()
        self.model = model
        self.index = index
        self.tail = tail

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.model(*args, **kwargs)
        for key in self.index:
            out = out[key]
        if self.tail is not None and tuple(out.shape[1:]) != self.tail:
            out = out.reshape(-1, *self.tail)
        return out


def _find_loss_input(output: Any, expected: tuple[int, ...]) -> tuple[tuple[Any, ...], tuple[int, ...] | None] | None:
    """Where in the model's output the loss input is, and the reshape it needs: the first
    floating-point tensor with as many elements as the tensor the loss was fed."""
    want = math.prod(expected)

    def walk(obj: Any, path: tuple[Any, ...], depth: int) -> Any:
        if isinstance(obj, torch.Tensor):
            if obj.is_floating_point() and obj.numel() == want:
                return path, (None if tuple(obj.shape) == tuple(expected) else tuple(expected[1:]))
            return None
        if depth > 3:
            return None
        items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (tuple, list)) else ()
        for key, value in items:
            found = walk(value, (*path, key), depth + 1)
            if found is not None:
                return found
        return None

    return walk(output, (), 0)


# --------------------------------------------------------------------------------------
# The session: owns every hook and every piece of process state it changes
# --------------------------------------------------------------------------------------
class _Session:
    def __init__(
        self,
        path: Path,
        display: str,
        *,
        steps: int,
        timeout: float,
        doctor_kwargs: dict[str, Any],
        on_event: Callable[..., None] | None,
    ) -> None:
        self.path = path
        self.display = display
        self.steps = steps
        self.timeout = timeout
        self.doctor_kwargs = doctor_kwargs
        self.on_event = on_event
        self.stack = contextlib.ExitStack()
        self.seen = Seen()
        self.depth = 0
        self.doctor: Doctor | None = None
        self.model: nn.Module | None = None
        self.optimizers: list[torch.optim.Optimizer] = []
        self.start = 0.0
        self.deadline = math.inf
        self.last_reported_step = -1
        self.stopping = False
        # For checking the rebuilt loss: the model's state and RNG at its first forward.
        self.initial_state: dict[str, torch.Tensor] | None = None
        self.initial_rng: torch.Tensor | None = None
        self.initial_modes: list[bool] | None = None
        self.initial_py_rng: Any = None
        self.initial_np_rng: Any = None
        self.notes: list[str] = []
        # The replay of the script's own step (nndoctor._replay): the first model call as
        # made, the loss calls of the first step, and what its first backward() ran on.
        self.losses = LossRecorder()
        self.first_call: tuple[tuple[Any, ...], dict[str, Any]] | None = None
        self.first_output_scalars: list[tuple[tuple[Any, ...], Any]] = []
        self.backward_link: BackwardLink | None = None
        self.backwards = 0
        self.root_module: nn.Module | None = None  # the module called at depth 0 now
        self.optimizer_steps_done = 0      # steps of the model's optimizer (post hook)
        self.optimizer_known = False       # an optimizer over the model existed at its first call
        self.compiled = False
        self.compile_allowance: tuple[float, float] | None = None  # (extra s, budget left)
        self.alarm_armed = False

    # -- events ------------------------------------------------------------------------
    def emit(self, kind: str, **info: Any) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(kind, **info)
        except Exception:  # a progress display must never break the user's run
            self.on_event = None

    # -- install -------------------------------------------------------------------------
    def install(self) -> None:
        from torch.nn.modules.module import (
            register_module_forward_hook,
            register_module_forward_pre_hook,
        )
        from torch.optim.optimizer import register_optimizer_step_pre_hook

        stack = self.stack
        # Process state, restored in reverse order.
        saved_argv, saved_path, saved_stdin = sys.argv, list(sys.path), sys.stdin
        saved_grad, saved_dtype = torch.is_grad_enabled(), torch.get_default_dtype()
        saved_modules = set(sys.modules)

        def restore() -> None:
            sys.argv = saved_argv
            sys.path[:] = saved_path
            sys.stdin = saved_stdin
            torch.set_grad_enabled(saved_grad)
            torch.set_default_dtype(saved_dtype)
            self._forget_script_modules(saved_modules)

        stack.callback(restore)
        sys.argv = [str(self.path), *self._args]
        sys.path.insert(0, str(self.path.parent))
        sys.stdin = io.StringIO("")

        stack.callback(self.losses.install())
        stack.callback(self._install_backward())
        stack.callback(self._install_process_counter())
        h = register_module_forward_pre_hook(self._forward_pre)
        stack.callback(h.remove)
        h = register_module_forward_hook(self._forward_post, always_call=True)
        stack.callback(h.remove)
        h = register_optimizer_step_pre_hook(self._optimizer_pre)
        stack.callback(h.remove)
        self.start = time.monotonic()
        self.deadline = self.start + self.timeout if self.timeout > 0 else math.inf

    _args: Sequence[str] = ()

    def _install_backward(self) -> Callable[[], None]:
        """Wrap ``torch.autograd.backward`` (which ``Tensor.backward`` calls through the
        module attribute) to see the first tensor the script backpropagates. Installed
        before the Doctor's own wrapper and removed after it (the ExitStack's order)."""
        original = torch.autograd.backward
        session = self

        def backward(tensors: Any, *args: Any, **kwargs: Any) -> Any:
            if session.model is not None and session.backwards == 0:
                try:
                    t = tensors[0] if isinstance(tensors, (tuple, list)) else tensors
                    if isinstance(t, torch.Tensor):
                        session.backward_link = link_backward(t, session.losses.calls, session.first_output_scalars)
                except Exception:
                    session.backward_link = None
                session.losses.active = False
            if session.model is not None:
                session.backwards += 1
            return original(tensors, *args, **kwargs)

        backward.__wrapped__ = original  # type: ignore[attr-defined]
        torch.autograd.backward = backward

        def restore() -> None:
            torch.autograd.backward = original

        return restore

    def _install_process_counter(self) -> Callable[[], None]:
        """Count child processes the script starts (``mp.spawn``, multiprocessing), for
        the message when no training happened in this process."""
        import multiprocessing.process as mpp

        original = mpp.BaseProcess.start
        session = self

        def start(proc: Any) -> Any:
            session.seen.child_processes += 1
            return original(proc)

        mpp.BaseProcess.start = start  # type: ignore[method-assign]

        def restore() -> None:
            mpp.BaseProcess.start = original  # type: ignore[method-assign]

        return restore

    def _forget_script_modules(self, before: set[str]) -> None:
        """Modules the script imported from its own folder are dropped, so a second run
        in this process imports them afresh (as a new interpreter would)."""
        folder = str(self.path.parent.resolve())
        for name in list(sys.modules):
            if name in before or name.startswith("nndoctor"):
                continue
            mod = sys.modules.get(name)
            file = getattr(mod, "__file__", None)
            if file and "site-packages" not in file and str(Path(file).resolve()).startswith(folder + os.sep):
                sys.modules.pop(name, None)

    # -- hooks ---------------------------------------------------------------------------
    def _check_deadline(self) -> None:
        if not self.stopping and time.monotonic() > self.deadline:
            self.stopping = True
            raise _StopScript(Outcome.TIMEOUT)

    def _maybe_stop(self) -> None:
        doctor = self.doctor
        if doctor is None or self.stopping:
            return
        # A step is an optimizer step when the script had built its optimizer before the
        # first forward: micro-batch backwards (gradient accumulation) and closure
        # evaluations inside one LBFGS step are not steps. Else (weights updated by hand,
        # or an optimizer built later) the Doctor's count.
        done = self.optimizer_steps_done if self.optimizer_known else doctor.steps_completed
        if done != self.last_reported_step:
            self.last_reported_step = done
            self.emit("step", step=done, total=self.steps)
        if done >= self.steps:
            self.stopping = True
            raise _StopScript(Outcome.STEPS_REACHED)
        self._check_deadline()

    def _forward_pre(self, module: nn.Module, args: Any) -> None:
        self.depth += 1
        if self.depth != 1 or self.stopping:
            # Inner calls: only the nn.Module losses (whose functional call we record), and
            # nothing while torch.compile traces this hook inside a compiled forward.
            if self.losses.active and not _compiling() and isinstance(module, nn.modules.loss._Loss):
                self.losses.loss_modules.append(module)
            return
        self.root_module = module
        if self.losses.active and isinstance(module, nn.modules.loss._Loss):
            self.losses.loss_modules.append(module)
        seen = self.seen
        seen.root_calls += 1
        name = type(module).__name__
        if name not in seen.root_classes:
            seen.root_classes.append(name)
        if self.doctor is not None:
            if module is self.model:
                seen.model_calls += 1
                self._maybe_stop()
            else:
                self._check_deadline()
            return
        self._check_deadline()
        if not torch.is_grad_enabled():
            seen.calls_without_grad += 1
            return
        if not any(p.requires_grad for p in module.parameters()):
            seen.calls_frozen += 1
            return
        seen.model_calls += 1
        self._start_watching(module, args)

    def _forward_post(self, module: nn.Module, args: Any, output: Any) -> None:
        self.depth = max(0, self.depth - 1)
        if self.losses.loss_modules and self.losses.loss_modules[-1] is module:
            self.losses.loss_modules.pop()
        if self.depth == 0 and module is self.model and self.backwards == 0 and not self.first_output_scalars:
            try:
                self.first_output_scalars = scalar_outputs(output)
            except Exception:
                self.first_output_scalars = []
        if self.depth == 0 and module is self.model:
            # Steps closed lazily (weights updated by hand) close in the model's forward
            # pre-hook, which runs after ours: look again once the call is over.
            self._maybe_stop()

    def _optimizer_pre(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.seen.optimizer_steps += 1
        if not any(o is optimizer for o in self.optimizers):
            self.optimizers.append(optimizer)
            name = type(optimizer).__name__
            if name not in self.seen.optimizer_classes:
                self.seen.optimizer_classes.append(name)
            if self._owns(optimizer):
                self.emit("optimizer", name=name)
        self._check_deadline()

    def _optimizer_post(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        # Registered after the Doctor's own post-step hook, so the step is closed here.
        if self._owns(optimizer):
            self.optimizer_steps_done += 1
            if self.optimizer_steps_done == 1 and self.compile_allowance:
                # The first step of a compiled model is over (its cold compile with it): the
                # remaining budget starts again from now.
                self._set_deadline(time.monotonic() + self.compile_allowance[1])
                self.compile_allowance = None
            self._maybe_stop()

    def _owns(self, optimizer: torch.optim.Optimizer) -> bool:
        model = self.model
        if model is None:
            return False
        ids = {id(p) for p in model.parameters()}
        return any(id(p) in ids for g in optimizer.param_groups for p in g["params"])

    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        return next((o for o in self.optimizers if self._owns(o)), None)

    def _start_watching(self, model: nn.Module, args: Any) -> None:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self.model = model
        from ._compile import is_compiled

        self.compiled = is_compiled(model)
        if self.compiled and math.isfinite(self.deadline):
            # A cold torch.compile (forward, then backward) can take longer than a small
            # script's whole budget: it does not count. The first step gets up to
            # _COMPILE_ALLOWANCE_S more; after it, the budget left now starts again.
            left = max(0.0, self.deadline - time.monotonic())
            self.compile_allowance = (_COMPILE_ALLOWANCE_S, left)
            self._set_deadline(self.deadline + _COMPILE_ALLOWANCE_S)
        try:
            kwargs = call_kwargs_from_frame(model)
            self.first_call = (_clone_tree(tuple(args)), _clone_tree(kwargs))
        except Exception:
            self.first_call = None
        self.losses.inside_model = lambda: self.depth >= 1 and self.root_module is self.model
        self.losses.active = True
        self.optimizer_known = self._optimizer_exists(model)
        try:
            self.initial_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            self.initial_rng = torch.get_rng_state()
            # Python's and numpy's too: a forward may draw from them (a random depth).
            self.initial_py_rng = random.getstate()
            self.initial_np_rng = _numpy_state()
            self.initial_modes = [m.training for m in model.modules()]
        except Exception:  # the loss check is optional; watching is not
            self.initial_state = None
        doctor = Doctor(model, **self.doctor_kwargs)
        doctor.script = self.display
        self.doctor = doctor
        self.stack.enter_context(doctor.watch())
        # We are inside the model's first forward call (a global pre-hook saw it): let the
        # Doctor record it as step 0's forward. Global hooks get no keyword arguments.
        if doctor.model is model:  # (a DDP/compile wrapper: its inner module's hooks fire anyway)
            doctor.enter_forward(args, {})
        h = register_optimizer_step_post_hook(self._optimizer_post)
        self.stack.callback(h.remove)
        n_params = sum(p.numel() for p in model.parameters())
        self.emit("model", name=type(model).__name__, parameters=n_params)

    @staticmethod
    def _optimizer_exists(model: nn.Module) -> bool:
        """Whether a torch.optim optimizer over the model's parameters already exists (the
        script built it before its first forward): then a step is an optimizer step, and
        micro-batch backwards before the first one (gradient accumulation) or closure
        evaluations inside one (LBFGS) are not steps."""
        import warnings

        ids = {id(p) for p in model.parameters()}
        try:
            with warnings.catch_warnings():  # isinstance() on torch's deprecated module proxies warns
                warnings.simplefilter("ignore")
                objects = [o for o in gc.get_objects() if isinstance(o, torch.optim.Optimizer)]
            for obj in objects:
                if isinstance(obj, torch.optim.Optimizer):
                    if any(id(p) in ids for g in obj.param_groups for p in g["params"]):
                        return True
        except Exception:
            return False
        return False

    # -- the hard deadline ---------------------------------------------------------------
    def _set_deadline(self, deadline: float) -> None:
        self.deadline = deadline
        if self.alarm_armed:
            signal.setitimer(signal.ITIMER_REAL, max(0.01, deadline - time.monotonic() + _ALARM_GRACE_S))

    @contextlib.contextmanager
    def alarm(self) -> Any:
        """SIGALRM shortly after the deadline, for scripts stuck outside torch. Only in
        the main thread of a POSIX process; elsewhere the hooks' checks are all we have."""
        if (
            not math.isfinite(self.deadline)
            or threading.current_thread() is not threading.main_thread()
            or not hasattr(signal, "setitimer")
        ):
            yield
            return

        def on_alarm(signum: int, frame: Any) -> None:
            if not self.stopping:
                self.stopping = True
                raise _StopScript(Outcome.TIMEOUT)

        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, max(0.01, self.deadline - time.monotonic() + _ALARM_GRACE_S))
        self.alarm_armed = True
        try:
            yield
        finally:
            self.alarm_armed = False
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


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
    timeout: float = 120.0,
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
    defaults stand in for the one not given)."""
    if steps < 1:
        raise NNDoctorUsageError(f"--steps must be at least 1 (got {steps}).")
    if timeout < 0:
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
        path, display, steps=steps, timeout=timeout,
        doctor_kwargs={"checks": checks, "sample_every": 20 if sample_every is None else sample_every,
                       "dense_steps": 4 if dense_steps is None else dense_steps},
        on_event=on_event,
    )
    session._args = [str(a) for a in args]

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
        notes=session.notes,
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
        session.emit("experiments-done", seconds=run.experiment_seconds)
    report.script = display
    run.report = report
    return run


def _wanted_experiments(checks: CheckSet) -> list[str]:
    # chance-level-loss is judged in watch mode from the script's real first loss; the
    # checkup's "loss at init" would measure the model after the watched steps.
    return [c.id for c in checks.experiment]


def _skip(report: Report, ids: Sequence[str], reason: str) -> Report:
    extra = Report(checks_skipped=[{"check": c, "reason": reason} for c in ids])
    return report.merge(extra)


@dataclasses.dataclass
class _Plan:
    """What the experiments replay: the batch, the loss callable, the module to train."""

    batch: Any
    loss_fn: Callable[..., Any]
    model: nn.Module
    notes: list[str] = dataclasses.field(default_factory=list)


def _run_experiments(
    session: _Session,
    report: Report,
    wanted: list[str],
    *,
    select: Any,
    ignore: Any,
    thresholds: dict[str, dict[str, float]] | None,
) -> tuple[Report, str]:
    doctor = session.doctor
    assert doctor is not None

    def skipped(reason: str) -> tuple[Report, str]:
        return _skip(report, wanted, reason), f"skipped: {reason}"

    plan = _replay_plan(session, doctor)
    if isinstance(plan, str):
        legacy = _legacy_plan(session, doctor)
        if isinstance(legacy, str):
            return skipped(plan if session.backward_link is not None else legacy)
        plan = legacy
    session.notes.extend(plan.notes)
    ignore_ids = ["chance-level-loss"]  # the Doctor's check set already holds the user's
    optimizer = session.optimizer
    stand_in = False
    if optimizer is None and doctor.model is not None:
        optimizer = _stand_in_sgd(doctor, session)
        stand_in = optimizer is None  # a hand-written rule that is not plain SGD
    if stand_in:
        # The LR sweep judges *your* learning rate; with an update rule nndoctor could not
        # identify it would judge a stand-in optimizer instead.
        ignore_ids.append("lr-sweep")
    with torch.enable_grad(), _weights_at_start(doctor.model, session):
        checkup = doctor.checkup(
            plan.batch, loss_fn=plan.loss_fn, optimizer=optimizer, model=plan.model,
            ignore=ignore_ids, time_budget=session.timeout if math.isfinite(session.timeout) else None,
        )
    if stand_in:
        checkup = _as_stand_in(checkup)
    merged = report.merge(checkup)
    merged.experiments = {**report.experiments, **checkup.experiments}
    return merged, "ran"


_WHO_NEEDS = ("every experiment (loss at init, overfit-tiny-batch, random-input-loss, lr-sweep, "
              "gradient-check) trains or evaluates the model with this loss")


def _replay_plan(session: _Session, doctor: Doctor) -> "_Plan | str":
    """The script's own step, replayed: its model call (all inputs), its loss call (same
    function or loss module, same arguments) or the loss its model returns; checked
    against the script's first loss. A string says why it cannot be replayed."""
    from ._replay import OutputLoss, ReplayLoss, infer_batch_dims, target_layout
    from ._tree import tensors
    from .probes.context import ModelCall, ReplayBatch

    link = session.backward_link
    if session.first_call is None:
        return ("the model's inputs could not be captured at its first call; use "
                "doctor.checkup((inputs, targets), loss_fn=...) in Python")
    if link is None:
        return "no backward() was seen on a tensor with a graph"
    args, kwargs = session.first_call
    inputs = ModelCall(tuple(args), dict(kwargs))
    dims = infer_batch_dims(inputs)
    notes: list[str] = []
    scale_ops = [op for op in link.ops if op in ("mul", "div")]
    reduce_ops = [op for op in reversed(link.ops) if op in ("mean", "sum")]  # applied first -> last
    model = doctor.model
    if link.output_path is not None:
        loss_fn: Any = OutputLoss(link.output_path)
        targets: Any = None
        target_dims: list[int | None] | None = []
        experiment_model: nn.Module = model
        unscaled = _replay_value(session, experiment_model, inputs, targets, loss_fn)
        source = f"the loss the model returns (output{''.join(f'[{k!r}]' for k in link.output_path)})"
    elif link.call is not None:
        call = link.call
        if call.inside_model:
            return (f"the backpropagated loss is computed inside the model's forward ({call.describe()}) but "
                    f"is not returned as a scalar of the model's output, so it cannot be replayed; "
                    f"{_WHO_NEEDS}: use doctor.checkup((inputs, targets), loss_fn=...) in Python")
        located = _locate_loss_input(session, inputs, call.input_shape)
        if located is None:
            return (f"the tensor fed to {call.describe()} (shape {tuple(call.input_shape)}) is not in the model's "
                    f"output (the script transforms the output before the loss); {_WHO_NEEDS}: use "
                    f"doctor.checkup((inputs, targets), loss_fn=...) in Python")
        index, tail = located
        target = call.target
        flatten = False
        target_dims = None
        if isinstance(target, torch.Tensor) and dims is not None:
            batch, in_dims = dims
            first = next((t for t in tensors(inputs) if t.dim() > 0), None)
            d = next((x for x in in_dims if x is not None), 0)
            laid = target_layout(target, batch, first, d)
            if laid is not None:
                flatten = laid[0].shape != target.shape
                target, target_dims = laid[0], [laid[1]]
        elif target is not None and dims is not None:
            target_dims = [None] * len(tensors(target))
        loss_fn = ReplayLoss(call, flatten_target=flatten, post=reduce_ops)
        targets = target
        experiment_model = _OutputAdapter(model, index, tail) if (index or tail is not None) else model
        if experiment_model is not model:
            notes.append("the experiments train the model with its output reduced to the loss's input"
                         + (f" (output{''.join(f'[{k!r}]' for k in index)})" if index else "")
                         + (f", reshaped to (-1, {', '.join(map(str, tail))})" if tail is not None else ""))
        unscaled = _replay_value(session, experiment_model, inputs, targets, loss_fn)
        source = call.describe() + (f" then .{'().'.join(reduce_ops)}()" if reduce_ops else "")
    else:
        chain = " <- ".join(link.chain)
        return (f"the script backpropagates a tensor built by {chain}, which is neither a torch loss "
                f"function it called nor a scalar its model returned (a hand-written loss, or several "
                f"losses combined); {_WHO_NEEDS}: use doctor.checkup((inputs, targets), loss_fn=...) in Python")
    if isinstance(unscaled, str):
        if unscaled.startswith("a copy of the model"):
            return f"{unscaled}; the experiments are not run"
        return f"replaying {source} failed ({unscaled}); {_WHO_NEEDS}: use doctor.checkup(..., loss_fn=...) in Python"
    if not math.isfinite(link.value) or not math.isfinite(unscaled):
        return f"the script's first loss is not finite ({link.value:g}); the experiments need a finite loss"
    if scale_ops:
        factor = link.value / unscaled if unscaled != 0 else math.nan
        if not math.isfinite(factor):
            return (f"the script backpropagates {source} scaled ({' then '.join(scale_ops)}), but the "
                    f"replayed loss is 0: the scale cannot be checked; {_WHO_NEEDS}")
        if not math.isclose(factor, 1.0, rel_tol=1e-6):  # nanoGPT divides by accumulation steps = 1
            notes.append(f"the script backpropagates {source} × {factor:.4g} (e.g. gradient accumulation); "
                         f"the experiments train on {source} itself (replayed: {unscaled:.6g})")
    elif not math.isclose(unscaled, link.value, rel_tol=_LOSS_MATCH_RTOL, abs_tol=1e-6):
        return (f"replaying {source} on the first batch gives {unscaled:.6g}, but the script's first "
                f"loss was {link.value:.6g}: the model's forward is not reproducible from its inputs "
                f"(randomness outside torch's RNG, or state that changes between calls); {_WHO_NEEDS}: "
                f"use doctor.checkup((inputs, targets), loss_fn=...) in Python")
    if dims is None:
        batch_size, in_dims = None, None
    else:
        batch_size, in_dims = dims
        if target_dims is None:
            batch_size = None
            notes.append("the loss targets could not be matched to the inputs' batch dimension: the "
                         "experiments use the whole first batch, never sub-batches")
    batch = ReplayBatch(inputs, targets, input_dims=in_dims, target_dims=target_dims, batch_size=batch_size)
    return _Plan(batch=batch, loss_fn=loss_fn, model=experiment_model, notes=notes)


def _replay_value(session: _Session, model: nn.Module, inputs: Any, targets: Any, loss_fn: Any) -> "float | str":
    """The replayed loss on a copy of ``model`` with the step-0 weights, RNG and modes."""
    from .probes.context import call as call_model
    from .probes.isolation import ProbeSkip, copy_model, leaked_parameters

    try:
        clone = copy_model(model)
        inner = clone.model if isinstance(clone, _OutputAdapter) else clone
        state = _state_for(session.initial_state, inner)
        if state is not None:
            inner.load_state_dict(state)
        for m, flag in zip(inner.modules(), session.initial_modes or []):
            m.training = flag
        with torch.random.fork_rng(devices=[]), torch.enable_grad(), _python_rng(session):
            if session.initial_rng is not None:
                torch.set_rng_state(session.initial_rng)
            output = call_model(clone, inputs)
            leaked = leaked_parameters(model, output)
            if leaked:
                raise ProbeSkip(
                    f"a copy of the model still computes with the original's parameters ({', '.join(leaked[:3])}"
                    f"{', ...' if len(leaked) > 3 else ''}: a function stored in a container or a global reaches "
                    f"the original, which nndoctor cannot re-bind), so training a copy would train your weights")
            value = loss_fn(output, targets)
            value = float(value.detach().reshape(-1)[0]) if value.numel() == 1 else math.nan
        del clone
        return value
    except ProbeSkip as skip:
        return skip.reason
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


def _numpy_state() -> Any:
    np = sys.modules.get("numpy")
    return np.random.get_state() if np is not None else None


@contextlib.contextmanager
def _python_rng(session: _Session) -> Any:
    """Python's and numpy's global RNGs at the first step's state for the block, then
    put back as they were."""
    np = sys.modules.get("numpy")
    saved_py, saved_np = random.getstate(), _numpy_state()
    try:
        if session.initial_py_rng is not None:
            random.setstate(session.initial_py_rng)
        if np is not None and session.initial_np_rng is not None:
            np.random.set_state(session.initial_np_rng)
        yield
    finally:
        random.setstate(saved_py)
        if np is not None and saved_np is not None:
            np.random.set_state(saved_np)


def _state_for(state: dict[str, torch.Tensor] | None, module: nn.Module) -> dict[str, torch.Tensor] | None:
    """``state`` with the wrapper prefixes a compiled (``_orig_mod.``) or DDP/DataParallel
    (``module.``) model adds stripped, so it loads into the unwrapped ``module``."""
    if not state:
        return state
    own = set(module.state_dict())
    for prefix in ("_orig_mod.", "module.", "_orig_mod.module.", "module._orig_mod."):
        if set(state) == own:
            break
        if all(k.startswith(prefix) for k in state):
            stripped = {k[len(prefix):]: v for k, v in state.items()}
            if set(stripped) == own or not set(state) & own:
                state = stripped
    return state


def _legacy_plan(session: _Session, doctor: Doctor) -> "_Plan | str":
    """The loss rebuilt from its autograd graph (a hand-written loss whose kind the graph
    shows), with the first positional inputs: the fallback when the script's loss call
    was not seen."""
    captured = doctor.captured_batch
    args, kwargs = captured.get("args"), captured.get("kwargs") or {}
    graph = captured.get("loss_graph")
    target = captured.get("target")
    first_loss = next((s.loss for s in (doctor.observations.steps if doctor.observations else [])
                       if s.loss is not None), None)
    if not args and not kwargs:
        return ("the model's inputs could not be captured (the model was called with keyword "
                "arguments only?); use doctor.checkup((inputs, targets), loss_fn=...) in Python")
    if kwargs:
        return ("the model takes keyword arguments, which the runner cannot replay; use "
                "doctor.checkup((inputs, targets), loss_fn=...) in Python")
    notes: list[str] = []
    kind = getattr(graph, "kind", None)
    nodes = ", ".join(getattr(graph, "nodes", None) or []) if graph is not None else ""
    if graph is None or kind is None:
        fallback = _graph_of_first_step(doctor)
        names = list(getattr(fallback, "nodes", None) or [])
        nodes = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
        return (
            "the loss is custom code that nndoctor cannot rebuild"
            + (f" (autograd nodes {nodes})" if nodes else "")
            + "; run the experiments from Python with doctor.checkup((inputs, targets), loss_fn=...)"
        )
    loss_fn = loss_from_graph(kind)
    if loss_fn is None:
        return (f"the loss ({kind}) is not one the runner rebuilds (cross-entropy, NLL, BCE, MSE); "
                       f"use doctor.checkup((inputs, targets), loss_fn=...) in Python")
    if getattr(graph, "multi_term", False):
        return (
            f"the loss combines several terms (autograd nodes {nodes}), which the runner cannot "
            f"rebuild; use doctor.checkup((inputs, targets), loss_fn=...) in Python"
        )
    if target is None:
        return ("the loss target could not be captured from the loss graph")
    inputs = args[0] if len(args) == 1 else tuple(args)
    # A model whose output is a tuple/dict, or whose logits the script reshapes before the
    # loss: the experiments train an adapter that yields exactly what the loss was fed.
    experiment_model: nn.Module = doctor.model
    expected = getattr(graph, "input_shape", None)
    if expected:
        located = _locate_loss_input(session, inputs, expected)
        if located is None:
            return (f"the tensor the loss was fed (shape {tuple(expected)}) was not found in the "
                           f"model's output; use doctor.checkup((inputs, targets), loss_fn=...) in Python")
        index, tail = located
        lead = inputs.shape[0] if isinstance(inputs, torch.Tensor) and inputs.dim() > 0 else None
        if (tail is not None and isinstance(target, torch.Tensor) and target.dim() == 1 and lead
                and target.numel() != lead and target.numel() % lead == 0):
            # The script flattened (batch, positions) targets along with the logits: keep the
            # leading dimension so the experiments can take sub-batches of inputs and
            # targets alike; the loss flattens them again.
            target = target.reshape(lead, -1)
            flat_loss = loss_fn

            def loss_fn(output: Any, t: Any, _loss: Any = flat_loss) -> torch.Tensor:
                return _loss(output, t.reshape(-1))

        if index or tail is not None:
            experiment_model = _OutputAdapter(doctor.model, index, tail)
            notes.append(
                "the experiments train the model with its output reduced to the loss's input"
                + (f" (output{''.join(f'[{k!r}]' for k in index)})" if index else "")
                + (f", reshaped to (-1, {', '.join(map(str, tail))})" if tail is not None else ""))
            loss_fn = _adapted_loss(loss_fn, index, tail)
    # The rebuilt loss must give the script's own step-0 loss on the step-0 weights and
    # inputs; anything between the model's output and the loss (a log, a scale, a mask)
    # would make the experiments judge a different objective.
    check = _verify_loss(session, inputs, target, loss_fn, first_loss)
    if check is not None:
        return check
    if experiment_model is not doctor.model:
        loss_fn = getattr(loss_fn, "plain", loss_fn)  # the adapter model already selects/reshapes
    return _Plan(batch=(inputs, target), loss_fn=loss_fn, model=experiment_model, notes=notes)


@contextlib.contextmanager
def _weights_at_start(model: nn.Module, session: _Session) -> Any:
    """The model with the weights it had at the first watched step, for the duration of
    the experiments (then put back): after a few steps at a too-high learning rate the
    weights may be wrecked, and the experiments (the LR sweep first of all) must judge
    the training setup, not the wreckage. The model itself is used, not a copy, so that
    the script's optimizer still maps onto its parameters (the experiments copy both)."""
    # Captured on a compile or DDP/DataParallel wrapper: its `_orig_mod.`/`module.` prefix goes.
    state = _state_for(session.initial_state, model)
    if not state:
        yield
        return
    now = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        model.load_state_dict(state)
    except Exception as exc:  # an unusual model: judge it as it is now, and say so
        session.notes.append(f"the experiments use the weights after the watched steps "
                             f"(restoring the first step's weights failed: {exc!r})")
        model.load_state_dict(now)
        yield
        return
    try:
        yield
    finally:
        model.load_state_dict(now)


def infer_sgd_lr(obs: Any) -> float | None:
    """The learning rate of hand-written plain SGD (``p -= lr * p.grad``), read off the
    watched steps as |update| / |gradient|, when that ratio is the same (within 5%) for
    every parameter and step; None otherwise (momentum, Adam-like or mixed rules)."""
    ratios = []
    for rec in getattr(obs, "steps", []):
        for name, upd in rec.update_norms.items():
            g = rec.grad_norms.get(name)
            if g and upd and math.isfinite(g) and math.isfinite(upd) and g > 0 and upd > 0:
                ratios.append(upd / g)
    if len(ratios) < 2:
        return None
    lo, hi = min(ratios), max(ratios)
    return float(sorted(ratios)[len(ratios) // 2]) if hi <= lo * 1.05 else None


def _stand_in_sgd(doctor: Doctor, session: _Session) -> torch.optim.Optimizer | None:
    """No torch.optim optimizer: an SGD with the learning rate the hand-written updates
    used, so the experiments train the copies the way the script does."""
    lr = infer_sgd_lr(doctor.observations)
    model = doctor.model
    if lr is None:
        session.notes.append("no torch.optim optimizer was seen and the hand-written update is not "
                             "plain SGD: the experiments train the copies with Adam(lr=1e-3)")
        return None
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        return None
    session.notes.append(f"no torch.optim optimizer was seen: the hand-written updates are plain SGD "
                         f"with lr={lr:.3g}, which the experiments use")
    return torch.optim.SGD(params, lr=lr)


def _graph_of_first_step(doctor: Doctor) -> Any:
    obs = doctor.observations
    if obs is None:
        return None
    return next((s.loss_graph for s in obs.steps if s.loss_graph is not None), None)


def _as_stand_in(checkup: Report) -> Report:
    """Experiments trained with a stand-in optimizer (the script's hand-written update
    rule is not plain SGD): their verdicts are at most warnings, and say so."""
    from ._report import Severity

    for f in checkup.findings:
        if f.severity is Severity.ERROR:
            f.severity = Severity.WARNING
        f.message = ("(trained with a stand-in optimizer, Adam lr=1e-3: the script's own update rule "
                     "is hand-written and not plain SGD) " + f.message)
    if not any(s["check"] == "lr-sweep" for s in checkup.checks_skipped) and "lr-sweep" not in checkup.checks_run:
        checkup.checks_skipped.append({
            "check": "lr-sweep",
            "reason": "the script updates weights by hand with a rule that is not plain SGD (momentum, "
                      "clipping...), so there is no learning rate of yours to sweep; use torch.optim, or "
                      "doctor.checkup(..., optimizer=...) in Python"})
    checkup.sort()
    return checkup


def _adapted_loss(loss_fn: Callable[..., Any], index: tuple[Any, ...], tail: tuple[int, ...] | None) -> Callable[..., Any]:
    """``loss_fn`` applied to the loss input found in a full model output (for checking
    the rebuilt loss against the script's own); ``.plain`` is the loss itself."""

    def adapted(output: Any, target: Any) -> torch.Tensor:
        for key in index:
            output = output[key]
        if tail is not None and tuple(output.shape[1:]) != tail:
            output = output.reshape(-1, *tail)
        return loss_fn(output, target)

    adapted.plain = loss_fn  # type: ignore[attr-defined]
    return adapted


def _locate_loss_input(session: _Session, inputs: Any, expected: tuple[int, ...]) -> Any:
    """Run the model once (on a copy with its step-0 weights) and find the loss input."""
    from .probes.context import ModelCall
    from .probes.context import call as call_model

    from .probes.isolation import copy_model

    model = _unwrapped(session)
    if model is None:
        return None
    try:
        clone = copy_model(model)
        state = _state_for(session.initial_state, clone)
        if state is not None:
            clone.load_state_dict(state)
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            if isinstance(inputs, ModelCall):
                out = call_model(clone, inputs)
            else:
                out = clone(*inputs) if isinstance(inputs, tuple) else clone(inputs)
        del clone
    except Exception:
        return None
    return _find_loss_input(out, tuple(expected))


def _unwrapped(session: _Session) -> nn.Module | None:
    doctor = session.doctor
    return doctor.model if doctor is not None else session.model


def _verify_loss(session: _Session, inputs: Any, target: Any, loss_fn: Callable[..., Any],
                 first_loss: float | None) -> str | None:
    """None when ``loss_fn(model0(inputs), target)`` reproduces the script's first loss
    (on a copy of the model with its step-0 weights, RNG and modes), else why not."""
    model = _unwrapped(session)
    if model is None or session.initial_state is None or first_loss is None:
        return None  # nothing to compare with: trust the loss graph
    if not math.isfinite(first_loss):
        return None
    try:
        clone = copy.deepcopy(model)
        clone.load_state_dict(_state_for(session.initial_state, clone))
        for m, flag in zip(clone.modules(), session.initial_modes or []):
            m.training = flag
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            if session.initial_rng is not None:
                torch.set_rng_state(session.initial_rng)
            out = clone(*inputs) if isinstance(inputs, tuple) else clone(inputs)
            value = float(loss_fn(out, target).detach())
        del clone
    except Exception as exc:
        return (f"the loss rebuilt from its graph could not be evaluated ({type(exc).__name__}: {exc}); "
                f"use doctor.checkup((inputs, targets), loss_fn=...) in Python")
    if not math.isclose(value, first_loss, rel_tol=_LOSS_MATCH_RTOL, abs_tol=1e-6):
        return (f"the loss rebuilt from the autograd graph ({getattr(getattr(loss_fn, 'plain', loss_fn), '__name__', 'loss')} with default "
                f"arguments) gives {value:.6g} on the first batch, the script's loss was {first_loss:.6g}: "
                f"the script's loss call was not seen, so its arguments (ignore_index, reduction, weight, a "
                f"scale) are unknown; {_WHO_NEEDS}: use doctor.checkup((inputs, targets), loss_fn=...) in Python")
    return None
