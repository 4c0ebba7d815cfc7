"""The runner's session: every hook and every piece of process state it changes while
the script runs (see :mod:`nndoctor._runner` for how a script is run), and what it
records for the replay of the script's step (:mod:`nndoctor._replay`) and for the
experiments' budget (the time of its steps). The types that describe a run are in
:mod:`nndoctor._runner_types`."""

from __future__ import annotations

import contextlib
import gc
import io
import math
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ._doctor import Doctor
from ._replay import (
    BackwardLink,
    LossRecorder,
    _compiling,
    call_kwargs_from_frame,
    link_backward,
    scalar_outputs,
)
from ._runner_types import Outcome, Seen, _clone_tree, _numpy_state, _StopScript

_PACKAGE_DIR = Path(__file__).resolve().parent
# After the cooperative deadline (checked in the hooks) the alarm gives the script this
# long to reach a hook before it interrupts whatever Python code is running.
_ALARM_GRACE_S = 2.0
# The step-0 loss rebuilt from the loss graph must match the script's own within this.
_LOSS_MATCH_RTOL = 1e-3
# The script's wall-clock budget when the caller gives none (``run_script(timeout=None)``).
DEFAULT_SCRIPT_TIMEOUT_S = 120.0
# Extra seconds a compiled model's first step may take (its cold compile) beyond --timeout.
_COMPILE_ALLOWANCE_S = 300.0


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
        # When (time.monotonic()) the model's first forward began and each watched step
        # ended: the script's own cost of one training step, which sizes the experiments.
        self.first_forward_at: float | None = None
        self.step_marks: list[float] = []
        self.step_mark_calls: list[int] = []  # the model's calls so far at each mark
        self.last_call_at: float | None = None  # when the model's latest call began

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
            if done > max(0, self.last_reported_step):
                self.step_marks.append(time.monotonic())
                self.step_mark_calls.append(self.seen.model_calls)
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
                self.last_call_at = time.monotonic()
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
        self.first_forward_at = time.monotonic()
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

    # The caller's timeout (None: not given; then the experiments' budget is derived
    # from the measured step time).
    experiment_timeout: float | None = None

    @property
    def experiment_budget(self) -> float | None:
        """Seconds for the experiments: the caller's timeout (0: no limit), else derived
        from the script's measured step time (nndoctor._experiment_budget)."""
        from ._experiment_budget import derived_budget

        if self.experiment_timeout is not None:
            return float(self.experiment_timeout) if self.experiment_timeout > 0 else None
        return derived_budget(self.evaluation_seconds)

    @property
    def step_seconds(self) -> float | None:
        """The script's own wall time for one training step (the Doctor watching): the
        median interval between watched steps after the first (whose time holds a cold
        compile, lazy initialisation, the first batch's loading); the first step's time
        when it is the only one; None before any step."""
        marks = self.step_marks
        if len(marks) >= 2:
            gaps = sorted(b - a for a, b in zip(marks, marks[1:]))
            return max(0.0, gaps[len(gaps) // 2])
        if marks and self.first_forward_at is not None:
            return max(0.0, marks[0] - self.first_forward_at)
        return None

    @property
    def evaluation_seconds(self) -> float | None:
        """The script's wall time for one evaluation of the model (forward + backward), the
        unit a probe step costs: the step time, divided, for a closure optimizer (LBFGS),
        by the closure evaluations inside one step (the model's calls between two marks;
        up to ``max_iter`` = 20). A probe's copy of LBFGS does one evaluation per step
        (``probes.context``), so sizing it by the script's whole LBFGS step would give the
        experiments 20 times the budget and the probes 20 times too few steps."""
        step = self.step_seconds
        if step is None:
            # No step finished (an LBFGS step that outlasted --timeout): the time between
            # the model's first and latest calls, per call, is still one evaluation's cost.
            calls, first, last = self.seen.model_calls, self.first_forward_at, self.last_call_at
            if calls >= 2 and first is not None and last is not None and last > first:
                return (last - first) / (calls - 1)
            return None
        from .probes.context import needs_closure

        optimizer = self.optimizer
        calls = self.step_mark_calls
        if optimizer is None or not needs_closure(optimizer) or not calls:
            return step
        # The calls in the steps step_seconds was measured on: after the first, or the
        # first alone (its calls since the model's first one) when it is the only step.
        per_step = sorted(b - a for a, b in zip(calls, calls[1:])) if len(calls) >= 2 else [calls[0]]
        return step / max(1, per_step[len(per_step) // 2])

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


