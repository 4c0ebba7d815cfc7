"""The one owner of a watch's hooks and step boundaries.

Life of a watched step:

* always on, every step (cheap: no per-layer hooks, no host sync): the loss value, the
  gradient L2 norm of every parameter (one ``torch._foreach_norm``), and whether an
  update happened (an optimizer step, or parameter ``_version`` counters). The loss and
  the norms also feed a non-finite alarm read at the step's close without a device sync
  (``NonFiniteAlarm``): a NaN/Inf on an unsampled step arms tracing from the next step.
* sampled steps only (``dense_steps`` first steps, then every ``sample_every``-th, and
  every step for a while after a non-finite value shows up): the units' per-module
  forward hooks (registered when the step starts, *removed* when it ends, so unsampled
  steps pay no hook dispatch), inputs and labels, the loss graph, update norms.
* sync points (end of each sampled step, and the end of ``watch()``): everything pending
  is concatenated and moved to the host in one ``.tolist()`` per device.

A step closes at the optimizer's post-step hook (or at ``GradScaler.update`` when the
scaler skipped the step); without an optimizer, lazily at the next forward or backward
after a backward (updates by hand happen in between).

Invariants: hooks hold module *paths* and a weak reference to the model, never modules;
nothing raises into the user's forward/backward: a unit that fails is switched off alone
(``Observations.observer_failures``, a note) and the others keep measuring; nothing here
changes a tensor the user sees, consumes RNG, or calls ``.item()``.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .._derive import derive_all
from .._observations import Observations, StepRecord
from .._tree import tensors
from ._base import NonFiniteAlarm, Observer, Pending, Schedule, Units
from ._describe import adopt_optimizer, describe_data_loaders, describe_optimizer, describe_watch, stepping_optimizer
from ._ledger import StepLedger
from ._patches import backward_interceptor, dataloader_interceptor, scaler_interceptor
from .activations import ActivationObserver
from .custom_functions import CustomFunctionObserver
from .gradients import GradientObserver
from .inputs import InputObserver
from .loss import LossObserver
from .loss_graph import LossGraphObserver
from .pairs import PairObserver
from .probe import UnregisteredModuleProbe
from .updates import UpdateObserver

# The units, in the order they hear each event (the loss graph before the inputs: the
# inputs unit reads the labels from the loss node the graph unit found).
UNITS: tuple[type[Observer], ...] = (
    LossObserver, GradientObserver, UpdateObserver, LossGraphObserver, PairObserver, InputObserver,
    ActivationObserver, UnregisteredModuleProbe, CustomFunctionObserver,
)


class Recorder:
    """Owns every hook handle of one watch; produces ``Observations``."""

    # Long runs: every sampled record is kept; unsampled ones (a loss and a gradient
    # norm each) are thinned in the older half once there are too many.
    max_records = 20000

    def __init__(
        self,
        model: nn.Module,
        *,
        optimizers: Sequence[torch.optim.Optimizer] = (),
        loss_fn: Any = None,
        schedule: Schedule | None = None,
        discover_optimizers: bool = True,
        on_sync: Callable[[Observations, list[StepRecord]], None] | None = None,
    ) -> None:
        self._model_ref = weakref.ref(model)
        self._optimizers = [weakref.ref(o) for o in optimizers]
        self._others: list[weakref.ref] = []
        self._forward_pending = False  # a forward with grad ran since the last backward
        self._loaders: dict[int, dict[str, Any]] = {}
        self._loss_fn = loss_fn
        self.schedule = schedule or Schedule()
        self._discover = discover_optimizers and not optimizers
        self.obs = Observations()
        self.pending = Pending()
        # Unsampled steps: a non-finite loss or gradient arms tracing of the next steps
        # at once, not at the next sampled step's sync (by then the first bad step and
        # the layer that made it are long gone).
        self.alarm = NonFiniteAlarm()
        # The first training batch seen (inputs as passed to the model, and the class
        # targets when the loss exposes them), cloned once, for the experiments.
        self.captured: dict[str, Any] = {}
        # What the units read: parameters by name, ids of the model's modules/parameters.
        self.params: list[tuple[str, torch.Tensor]] = []
        self.param_ids: dict[int, str] = {}
        self.module_ids: dict[int, str] = {}
        # Steps are optimizer steps (an optimizer was given or has stepped); the optimizer's
        # step() is running now (closure evaluations happen inside it).
        self.optimizer_mode = bool(optimizers)
        self.in_optimizer_step = False
        self.ledger = StepLedger(self.obs, max_records=self.max_records, holding=not optimizers,
                                 trace_steps_after_nonfinite=self.schedule.trace_steps_after_nonfinite,
                                 on_sync=on_sync)
        self.backwards_in_step = 0
        self.scratch: dict[str, Any] = {}  # per-step notes passed between units
        self.current: StepRecord | None = None
        self.units = Units(UNITS, self)
        self._emit = self.units.emit
        self._stack: contextlib.ExitStack | None = None
        self._step_hooks: dict[str, list[Any]] = {}
        self._step = 0
        self._pending_close = False
        self._version_sum = 0
        self._stepped_since_backward = False
        self._opt_stepped = False

    # -- public surface -------------------------------------------------------------
    @property
    def model(self) -> nn.Module:
        model = self._model_ref()
        if model is None:  # pragma: no cover - the Doctor holds the model while watching
            raise RuntimeError("the watched model was garbage-collected")
        return model

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        """The optimizers given or discovered (stepping this model's parameters)."""
        return [o for o in (r() for r in self._optimizers) if o is not None]

    @property
    def steps_completed(self) -> int:
        return self._step

    def attach(self) -> None:
        model = self.model
        self._stack = stack = contextlib.ExitStack()
        try:
            self._describe(model)
            stack.callback(self._remove_step_hooks)
            stack.callback(self.units.remove_hooks)
            h = model.register_forward_pre_hook(self._root_pre, with_kwargs=True)
            stack.callback(h.remove)
            h = model.register_forward_hook(self._root_post, always_call=True)
            stack.callback(h.remove)
            backward_interceptor.add(self)
            stack.callback(backward_interceptor.remove, self)
            scaler_interceptor.add(self)
            stack.callback(scaler_interceptor.remove, self)
            dataloader_interceptor.add(self)
            stack.callback(dataloader_interceptor.remove, self)
            for opt in self.optimizers:
                for h in (opt.register_step_pre_hook(self._opt_pre), opt.register_step_post_hook(self._opt_post)):
                    stack.callback(h.remove)
            if self._discover:
                from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

                for h in (register_optimizer_step_pre_hook(self._global_opt_pre),
                          register_optimizer_step_post_hook(self._global_opt_post)):
                    stack.callback(h.remove)
            if isinstance(self._loss_fn, nn.Module):
                h = self._loss_fn.register_forward_pre_hook(self._loss_pre)
                stack.callback(h.remove)
            self._begin_step()
            opt = stepping_optimizer(self._owns)
            if opt is not None:  # the watch begins inside an optimizer step (a closure)
                self._adopt(opt)
                self.optimizer_mode = self.in_optimizer_step = True
                self.ledger.holding = False
        except BaseException:
            self.detach()
            raise

    def detach(self) -> None:
        """Remove every hook (idempotent; runs on exceptions too), in reverse order."""
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()
        self._remove_step_hooks()
        self.units.remove_hooks()

    def finish(self) -> Observations:
        """Close the open step, sync, and return the observations (after detach)."""
        try:
            self._remove_step_hooks()
            cur = self.current
            if cur is not None and (cur.backward_calls or self._pending_close):
                self._close_step(begin_next=False)
            self.current = None
            self.ledger.release()  # no optimizer ever stepped: each backward was a step
            self._sync()
            self._emit("finalize", True, self.obs)
            self.obs.data_loaders = describe_data_loaders(self._loaders)
            derive_all(self.obs)
        except Exception as exc:  # evaluating must never raise into the user's code
            self.obs.notes.append(f"observer failed while finishing: {exc!r}")
        # Drop every reference to the user's tensors (parameters, snapshots).
        self.params = []
        self.units.release()
        self.pending = Pending()
        self.alarm = NonFiniteAlarm()
        return self.obs

    # -- data loaders ----------------------------------------------------------------
    def on_dataloader_iter(self, loader: Any) -> None:
        """A DataLoader started an epoch while watching (never raises)."""
        try:
            seen = self._loaders.setdefault(id(loader), {"loader": weakref.ref(loader), "iterations": 0})
            seen["iterations"] += 1
        except Exception:  # pragma: no cover - a loader that refuses weak references
            pass

    def enter_forward(self, args: Any, kwargs: Any) -> None:
        """Attached from inside the model's forward pre-hook chain (the CLI runner
        discovers the model there): torch iterates over a snapshot of the hook dicts, so
        our own root pre-hook misses this call; run it by hand."""
        self._root_pre(self.model, args, kwargs or {})

    def log_loss(self, loss: Any) -> None:
        cur = self.current
        unit = self.units[LossObserver.name]
        if cur is not None and not unit.failed:
            self._guard(unit, "log_loss", unit.log, cur, loss)  # type: ignore[attr-defined]

    def on_scaled(self, scaled_loss: torch.Tensor, scaler: Any) -> None:
        unit = self.units[LossObserver.name]
        if not unit.failed:
            self._guard(unit, "GradScaler.scale", unit.on_scaled, scaled_loss, scaler)  # type: ignore[attr-defined]

    # -- units -----------------------------------------------------------------------
    def _guard(self, unit: Observer, where: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as exc:
            self.unit_failed(unit, where, exc)
            return None

    def unit_failed(self, unit: Observer | None, where: str, exc: BaseException) -> None:
        """Switch one unit off (its hooks removed, its pending values dropped) and
        record which checks lose their data; the other units keep measuring."""
        if unit is None:
            self.obs.notes.append(f"observer sync failed: {exc!r}")
            return
        if unit.failed:
            return
        unit.failed = repr(exc)
        self.obs.notes.append(f"observer '{unit.name}' failed in {where} and was switched off: {exc!r}")
        self.obs.observer_failures[unit.name] = {"error": repr(exc), "where": where, "checks": list(unit.feeds)}
        for h in reversed(self._step_hooks.pop(unit.name, [])):
            h.remove()
        self.units.switch_off(unit)

    # -- description of the model (host side, once) ---------------------------------
    def _describe(self, model: nn.Module) -> None:
        self.params, self.param_ids, self.module_ids = describe_watch(self.obs, model, self.optimizers,
                                                                      self.pending)
        self._version_sum = self._versions()

    def _versions(self) -> int:
        return sum(p._version for _, p in self.params)

    # -- step boundaries -------------------------------------------------------------
    def _open_step(self) -> StepRecord | None:
        """The step an event belongs to: closes the step a backward left open (updates
        by hand happen between a backward and the next forward/backward)."""
        if self._pending_close:
            self._close_step()
        return self.current

    def _begin_step(self) -> None:
        step = self._step
        sampled = self.schedule.sampled(step) or step <= self.ledger.trace_until
        cur = self.current = StepRecord(step=step, sampled=sampled)
        self.backwards_in_step = 0
        if sampled:
            self.scratch = {}
            self._emit("begin_step", True, cur)
            self._install_step_hooks()

    def _close_step(self, begin_next: bool = True) -> None:
        cur = self.current
        if cur is None:
            return
        self._pending_close = False
        try:
            model = self._model_ref()
            if model is not None:
                cur.training = model.training
            if cur.sampled:
                self._emit("close_step", True, cur)
            for o in self.optimizers:
                if o.param_groups:
                    lr = o.param_groups[0].get("lr")
                    if isinstance(lr, (int, float)):
                        cur.lr = float(lr)
                    break
        finally:
            if cur.sampled:
                self._remove_step_hooks()
                self.alarm.clear()  # synced below: the ledger scans the values
            elif self.alarm.poll():
                self.ledger.arm(cur.step)
            self.ledger.close(cur)
            if cur.sampled:
                self._sync()
            self._step += 1
            if begin_next and self._stack is not None:
                self._begin_step()
            else:
                self.current = None

    def _resolve(self) -> None:
        try:
            self.pending.resolve(lambda unit, exc: self.unit_failed(unit, "sync", exc))
        except Exception as exc:
            self.pending = Pending()
            self.obs.notes.append(f"observer sync failed: {exc!r}")

    def _sync(self) -> None:
        self._resolve()
        self.ledger.synced(self._step)

    def _optimizer_found(self, *, inside_step: bool) -> None:
        """The first optimizer step over the model: steps are optimizer steps from now on,
        and the backwards held since the watch began belong to the step now closing
        (micro-batches before it, or, ``inside_step``, closure evaluations inside it)."""
        self.optimizer_mode = True
        self._pending_close = False
        cur = self.current
        if cur is None or not self.ledger.held:
            self.ledger.holding = False
            return
        self._resolve()  # the held losses to the host (once per watch)
        self.ledger.absorb(cur, closure=inside_step)
        self._step = cur.step

    def _install_step_hooks(self) -> None:
        model = self._model_ref()
        if self._stack is None or model is None:
            return
        for unit, method in self.units.handlers[("step_hooks", True)]:
            try:
                self._step_hooks[unit.name] = method(model)
            except Exception as exc:
                self.unit_failed(unit, "registering hooks", exc)

    def _remove_step_hooks(self) -> None:
        hooks, self._step_hooks = self._step_hooks, {}
        for handles in reversed(list(hooks.values())):
            for h in reversed(handles):
                h.remove()

    # -- model and loss hooks --------------------------------------------------------
    def _root_pre(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        try:
            cur = self._open_step()
        except Exception as exc:
            self.obs.notes.append(f"observer failed at a step boundary: {exc!r}")
            return
        if cur is not None and cur.sampled and torch.is_grad_enabled():
            self._emit("model_pre", True, cur, args, kwargs)

    def _root_post(self, module: nn.Module, args: Any, output: Any) -> None:
        self._forward_pending = self._forward_pending or torch.is_grad_enabled()
        cur = self.current
        if cur is not None and cur.sampled and torch.is_grad_enabled():
            self._emit("model_post", True, cur, module, args, output)
            if cur.output_shape is None:
                first = next((t for t in tensors(output) if t.is_floating_point() and t.numel() > 0), None)
                if first is not None:
                    cur.output_shape = tuple(first.shape)

    def _loss_pre(self, module: nn.Module, args: Any) -> None:
        cur = self.current
        if cur is not None and cur.sampled and torch.is_grad_enabled():
            self._emit("loss_pre", True, cur, module, args)

    # -- backward (through the process-wide wrapper) ----------------------------------
    def before_backward(self, tensors: Any) -> None:
        self._forward_pending = False
        try:
            cur = self._open_step()
            if cur is None:
                return
            if self.optimizer_mode:
                # An optimizer step since the last backward is the update (no need to
                # walk every parameter's version counter on each step).
                updated, self._stepped_since_backward = self._stepped_since_backward, False
            else:
                versions = self._versions()
                updated = versions != self._version_sum
                self._version_sum = versions
                if updated:  # weights changed by hand: the held backwards were steps
                    self.ledger.release()
            first_after_update = self.backwards_in_step == 0 and updated
            if first_after_update:
                self.obs.updates_seen += 1
            self.backwards_in_step += 1
            cur.backward_calls += 1
        except Exception as exc:
            self.obs.notes.append(f"observer failed at a step boundary: {exc!r}")
            return
        if isinstance(tensors, (tuple, list)):
            tensors = tensors[0] if tensors else None
        loss = tensors if isinstance(tensors, torch.Tensor) else None
        self._emit("before_backward", cur.sampled, cur, loss, first_after_update)

    def after_backward(self, tensors: Any) -> None:
        cur = self.current
        if cur is None:
            return
        if self.optimizer_mode:
            if self.in_optimizer_step and cur.backward_calls == 1:
                # A closure optimizer's first evaluation: the gradients this step applies.
                self._emit("closure_backward", cur.sampled, cur)
            return
        # No optimizer seen (yet): the update, if any, happens by hand after this
        # backward, so the step closes lazily at the next forward/backward.
        self._emit("after_backward", cur.sampled, cur)
        self._pending_close = True

    # -- optimizer hooks -------------------------------------------------------------
    def _owns(self, opt: torch.optim.Optimizer) -> bool:
        ids = self.param_ids
        return any(id(p) in ids for g in opt.param_groups for p in g["params"])

    def _adopt(self, opt: torch.optim.Optimizer) -> None:
        """A discovered optimizer over the model's parameters joins the description."""
        if not any(r() is opt for r in self._optimizers):
            self._optimizers.append(weakref.ref(opt))
            adopt_optimizer(self.obs, self.params, opt)

    def _global_opt_pre(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if not self._owns(opt):
            self._other_optimizer(opt)
            return
        self._adopt(opt)
        if not self.optimizer_mode:
            try:
                # The backwards seen so far were micro-batches of this step.
                self._optimizer_found(inside_step=False)
            except Exception as exc:
                self.obs.notes.append(f"observer failed at a step boundary: {exc!r}")
        self._opt_pre(opt, args, kwargs)

    def _other_optimizer(self, opt: torch.optim.Optimizer) -> None:
        """An optimizer stepping over none of the model's parameters: remembered (once),
        so frozen-layer can tell an optimizer built over another instance from
        hand-written updates."""
        if any(r() is opt for r in self._others):
            return
        self._others.append(weakref.ref(opt))
        try:
            self.obs.other_optimizers.append(describe_optimizer(opt))
        except Exception as exc:
            self.obs.notes.append(f"could not describe an optimizer over another model: {exc!r}")

    def _global_opt_post(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if not self._owns(opt):
            return
        if not self.optimizer_mode:  # its pre-step hook ran before the watch began
            self._adopt(opt)
            try:
                self._optimizer_found(inside_step=True)
                self._emit("update_unseen", True, self.current)
            except Exception as exc:
                self.obs.notes.append(f"observer failed at a step boundary: {exc!r}")
        self._opt_post(opt, args, kwargs)

    def _opt_pre(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.in_optimizer_step = True
        try:
            cur = self._open_step()
        except Exception as exc:
            self.obs.notes.append(f"observer failed at a step boundary: {exc!r}")
            return
        if cur is not None:
            cur.step_before_backward = self._forward_pending
            self._emit("before_update", cur.sampled, cur)

    def _opt_post(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.in_optimizer_step = False
        self._opt_stepped = True
        self._stepped_since_backward = True
        cur = self.current
        if cur is not None and cur.backward_calls > 0:
            try:
                self._close_step()
            except Exception as exc:
                self.obs.notes.append(f"observer failed at a step boundary: {exc!r}")

    def on_scaler_update(self, scaler: Any) -> None:
        """End of an AMP step. If no optimizer step happened since the last update while a
        backward did, the scaler skipped the step (inf/NaN gradients): close it as skipped."""
        stepped, self._opt_stepped = self._opt_stepped, False
        cur = self.current
        if cur is not None and cur.backward_calls > 0 and not stepped:
            if not self.optimizer_mode:  # an AMP step is an optimizer step, skipped or not
                self._optimizer_found(inside_step=False)
            cur.skipped = True
            self._emit("step_skipped", cur.sampled, cur)
            try:
                self._close_step()
            except Exception as exc:
                self.obs.notes.append(f"observer failed at a step boundary: {exc!r}")
