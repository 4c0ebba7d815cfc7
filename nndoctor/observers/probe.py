"""The unregistered-module probe: a global forward hook that lives only during the
first sampled forward of the model. Modules called inside the model's forward that are
not its sub-modules (kept in a plain list, created on the fly) are recorded."""

from __future__ import annotations

from typing import Any

from torch import nn

from .._observations import Observations, StepRecord
from ._base import Observer


class UnregisteredModuleProbe(Observer):
    name = "unregistered-module probe"
    feeds = ("unused-parameter",)

    def __init__(self, recorder: Any) -> None:
        super().__init__(recorder)
        self._handles: list[Any] = []
        self._depth = 0  # nesting inside an unknown module
        self._root_depth = 0  # nesting of the model's own forward (recursive calls)
        self._done = False
        self._found: dict[int, dict[str, Any]] = {}

    def model_pre(self, cur: StepRecord, args: Any, kwargs: Any) -> None:
        self._root_depth += 1
        if self._root_depth == 1 and not self._done:
            from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

            self._handles = [register_module_forward_pre_hook(self._pre),
                             register_module_forward_hook(self._post, always_call=True)]

    def model_post(self, cur: StepRecord, module: nn.Module, args: Any, output: Any) -> None:
        if self._root_depth > 0:
            self._root_depth -= 1
        if self._root_depth == 0 and self._handles:
            self.remove_hooks()
            self._done = True

    def remove_hooks(self) -> None:
        handles, self._handles = self._handles, []
        for h in reversed(handles):
            h.remove()
        self._depth = 0

    def _pre(self, module: nn.Module, args: Any) -> None:
        rec = self.rec
        if id(module) in rec.module_ids:
            return
        try:
            if self._depth == 0 and id(module) not in self._found:
                params = list(module.parameters())
                if params and all(id(p) in rec.param_ids for p in params):
                    # A wrapper around our own parameters (DDP, a compile wrapper): not a
                    # module whose parameters are lost.
                    self._depth += 1
                    return
                known = {id(p) for o in rec.optimizers for g in o.param_groups for p in g["params"]}
                self._found[id(module)] = {
                    "class": type(module).__name__,
                    "parameters": int(sum(p.numel() for p in params)),
                    "in_optimizer": (any(id(p) in known for p in params) if known else None),
                }
        except Exception as exc:  # never raise into the user's forward
            rec.unit_failed(self, "global forward pre-hook", exc)
            return
        self._depth += 1

    def _post(self, module: nn.Module, args: Any, output: Any) -> None:
        if id(module) in self.rec.module_ids:
            return
        self._depth = max(0, self._depth - 1)

    def finalize(self, obs: Observations) -> None:
        obs.unregistered_modules = list(self._found.values())
