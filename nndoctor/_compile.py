"""Compiled models (``torch.compile``): what nndoctor can watch, and saying so.

Measured on torch 2.13 CPU (tests/test_compile.py; the same with the default inductor
backend and with ``aot_eager``: hook handling is Dynamo's, before any backend runs):

* ``torch.compile(model)`` returns an ``OptimizedModule`` whose ``_orig_mod`` is the
  user's model; parameter and module names under the wrapper gain an ``_orig_mod.``
  prefix. Watching ``_orig_mod`` keeps the user's names.
* Forward hooks that exist on the model's modules when Dynamo first traces the forward
  fire on every later call, and the recorder's per-step hooks (added and removed
  around each sampled step) keep firing; Dynamo recompiles as they come and go
  (more graphs, a one-off cost per hook state, same steady state).
* Forward hooks registered AFTER the first compiled call fire 0 times, silently
  (Dynamo does not guard on module hook dicts by default; PyTorch docs
  "torch.compiler_nn_module"; pytorch/pytorch#98371). This covers the recorder's
  root hooks on ``_orig_mod`` too, so input statistics are lost as well; hooks on the
  ``OptimizedModule`` wrapper itself still fire (it is an ordinary eager module).
* The loss (our patch of ``torch.autograd.backward``), gradient norms (read from
  ``.grad`` at the optimizer's pre-step hook) and update norms (parameter snapshots)
  do not depend on forward hooks: they are observed in every case.
* ``model.compile()`` (in place, ``nn.Module.compile``) compiles ``_call_impl``,
  hook dispatch included: hooks added later are seen (Dynamo recompiles).

Hence two helpers: ``unwrap_compiled`` (watch the original module, and tell the user
why) and ``verify_hooks_fired`` (after a watch: if sampled steps ran a backward pass
but no per-layer forward hook recorded anything, say what that means instead of
letting the activation checks skip without explanation).
"""

from __future__ import annotations

import sys
from typing import Any

from torch import nn

__all__ = ["unwrap_compiled", "verify_hooks_fired", "is_compiled"]


def _optimized_module_type() -> type | None:
    # No import of torch._dynamo here (about a second): if it was never imported, no
    # model can be an OptimizedModule.
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    return getattr(eval_frame, "OptimizedModule", None) if eval_frame is not None else None


def is_compiled(model: Any) -> bool:
    """True for an ``OptimizedModule`` (``torch.compile(model)``) or a module compiled in
    place (``model.compile()``)."""
    optimized = _optimized_module_type()
    if optimized is not None and isinstance(model, optimized):
        return True
    return getattr(model, "_compiled_call_impl", None) is not None


def unwrap_compiled(model: nn.Module) -> tuple[nn.Module, str | None]:
    """``(module_to_hook, note_or_None)``. For ``torch.compile(model)``'s
    ``OptimizedModule`` (nested ones too), the original module, with a note for the
    report; any other module as it is, with no note."""
    optimized = _optimized_module_type()
    inner = model
    while optimized is not None and isinstance(inner, optimized):
        orig = getattr(inner, "_orig_mod", None)
        if not isinstance(orig, nn.Module):
            break
        inner = orig
    if inner is model:
        return model, None
    return inner, (
        f"the model is compiled (torch.compile): nndoctor watches the original module "
        f"({type(inner).__name__}, the OptimizedModule's `_orig_mod`). Its per-layer forward hooks fire only "
        f"when watch() starts before the first compiled call; if they do not, the activation checks "
        f"say so and the gradient, loss and update checks still run."
    )


def _dynamo_compiled_something() -> bool:
    utils = sys.modules.get("torch._dynamo.utils")
    counters = getattr(utils, "counters", None) if utils is not None else None
    try:
        return bool(counters and counters["stats"]["unique_graphs"])
    except Exception:
        return False


def verify_hooks_fired(obs: Any, compiled: bool | None = None) -> str | None:
    """After a watch: a note when sampled steps ran a backward pass but the per-layer
    forward hooks recorded nothing, else None. ``compiled``: whether the model is known
    to be compiled; None guesses from whether Dynamo compiled any graph in this process."""
    steps = [s for s in getattr(obs, "steps", []) if s.sampled and s.backward_calls > 0]
    if not steps:
        return None  # nothing was expected to fire
    inner = [p for p in getattr(obs, "modules", {}) if p]
    fired = {a.path for s in steps for a in s.activations} | set(getattr(obs, "called_modules", ()))
    root_fired = "" in fired or any(s.input is not None for s in steps)
    if any(p for p in fired if p) or (not inner and root_fired):
        return None
    if compiled is None:
        compiled = _dynamo_compiled_something()
    cause = ("the model is compiled (torch.compile) and nndoctor attached after its first compiled call"
             if compiled else
             "the forward ran outside the watched module: it is probably compiled (torch.compile) before "
             "nndoctor attached, or the loop trains another module object")
    what = "per-layer forward hooks" if root_fired else "forward hooks (the model's own included)"
    lost = ("activation, dead-ReLU, saturation and forward NaN-trace checks had no data" if root_fired else
            "activation, input, dead-ReLU, saturation and forward NaN-trace checks had no data")
    return (
        f"{what} did not fire on any of the {len(steps)} sampled steps that ran a backward pass: {cause}; "
        f"gradient, loss and update checks still ran, but {lost}. Enter doctor.watch() before the compiled "
        f"model's first call (or before torch.compile), or watch the uncompiled model."
    )
