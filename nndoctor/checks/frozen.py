"""Parameters that never train: frozen (and why), or registered but never used."""

from __future__ import annotations

from typing import Iterable

from .._report import Finding, Severity
from ._base import CHECKLIST, Check, Citation, Skip, Threshold
from ._util import count, fmt, listing

__all__ = ["FrozenLayer", "UnusedParameter"]


def _have(items) -> str:
    return "has" if len(items) == 1 else "have"


def _be(items) -> str:
    return "is" if len(items) == 1 else "are"


def _they(items) -> str:
    return "it" if len(items) == 1 else "they"


def _s1(items) -> str:
    """The verb's third-person "s" when the subject is one thing ("it runs", "they run")."""
    return "s" if len(items) == 1 else ""


def _modules_of(obs, names: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(obs.module_of(n) or "(root)" for n in names))


class FrozenLayer(Check):
    """## What it measures
    Parameters that cannot train, and the mechanism that stops them (evidence key
    `mechanism`): `requires_grad_false`; `not_in_optimizer` (trainable but in no
    optimizer's param groups); `optimizer_over_other_model` (the optimizer holds
    parameters, none of them this model's: built over a copy or an earlier instance);
    `graph_cut` (a module runs in the forward pass but never receives a gradient:
    `.detach()`, `.data`, `torch.no_grad()`, a numpy round-trip, an integer cast);
    `loss_detached` (no parameter gets a gradient: the loss was re-wrapped, e.g.
    `torch.tensor(loss.item(), requires_grad=True)`); `grads_zeroed_before_step` (the
    gradients exist when `backward()` ends but are gone or zero when the optimizer steps:
    `zero_grad()` between `backward()` and `step()`); `zero_gradient` (gradients exactly
    zero at every step); `lr_zero` / `lr_decayed_to_zero` (gradients present, values never
    change, the learning rate is or was driven to ~0 by a scheduler); `never_changed`.
    Sub-modules kept in a plain Python list are reported by `unused-parameter`.

    ## Why it matters
    The checklist: look for frozen layers whose weights never update. A layer cut from
    the graph silently trains nothing while the rest of the model adapts around it.
    Naming the mechanism names the line to fix.

    ## How to fix
    - Pass `model.parameters()` (all of them) to the optimizer, after building every layer, and over the model you train.
    - Remove `.detach()`, `.data`, numpy round-trips and `torch.no_grad()` from the forward pass of layers that must train.
    - Call `optimizer.zero_grad()` before `loss.backward()` (or after `optimizer.step()`), never between them.
    - Set `requires_grad=True` on layers you meant to fine-tune.

    ## Known false positives
    - A frozen embedding table (`nn.Embedding.from_pretrained(..., freeze=True)`: fixed
      sinusoidal positions, pretrained word vectors) stays `info` wherever it sits in the
      forward pass: a lookup table feeding the layers, frozen by design.
    - A deliberately frozen backbone or a linear probe (a frozen prefix of the forward
      pass) is reported as `info` only; a layer frozen *between* trainable ones, or frozen
      parameters the optimizer holds after a trainable part, is a warning.
    - Parameters used only on some steps (e.g. an auxiliary head every N steps).
    - A schedule that anneals the LR to ~0 at the end of training is intended: the LR must
      sit below `min_lr_decay` of its start for a quarter of the watched steps.

    ## Example
    `x = self.encoder(x).detach()` inside `forward`: the encoder runs but never gets a
    gradient; the classifier on top trains on fixed random features.

    ## References
    - The training checklist ("look for frozen layers whose weights never update").
    - Amazon SageMaker Debugger UnchangedTensor rule.
    """

    id = "frozen-layer"
    title = "Layers whose weights never update"
    family = "parameters"
    severity = Severity.ERROR
    needs = ("params", "steps", "called_modules")
    thresholds = (
        Threshold("max_missing_share", 0.5, "share of the trainable parameters (by count) missing from every optimizer at which it is an error rather than a warning", "fraction"),
        Threshold("min_lr_decay", 1e-6, "learning rate at the last watched step, relative to the first, below which a scheduler drove it to ~0", "fraction"),
    )
    citations = (CHECKLIST, Citation("SageMaker Debugger UnchangedTensor rule"))

    def evaluate(self, obs) -> Iterable[Finding]:
        if not obs.params:
            raise Skip("the model has no parameters")
        params = obs.params
        frozen = [n for n, m in params.items() if not m.requires_grad]
        if frozen and len(frozen) == len(params):
            yield self.finding(
                f"All {count(len(params), 'parameter tensor')} have requires_grad=False: nothing in the model can train.",
                severity=Severity.ERROR, where=None, parameters=len(params), kind="all_frozen",
                mechanism="requires_grad_false",
                fix="Set requires_grad=True on the parameters that must train (e.g. model.requires_grad_(True) then freeze selectively).",
            )
            return
        trainable = [n for n, m in params.items() if m.requires_grad]
        if frozen:
            yield self._frozen_finding(obs, frozen, trainable)
        if obs.has_optimizer:
            missing = [n for n in trainable if params[n].in_optimizer is False]
            if missing:
                yield self._missing_finding(obs, missing, trainable)
        steps = [r for r in obs.steps if r.sampled and r.backward_calls > 0 and (r.grad_norms or r.grads_missing)]
        if not steps:
            return
        called = obs.called_modules
        never_grad = [n for n in trainable if all(n in r.grads_missing for r in steps)]
        # Gradients that existed when backward() ended but were gone or zero when the
        # optimizer stepped: wiped in between, not a cut graph.
        wiped = [n for n in trainable if self._wiped(n, steps)]
        if wiped:
            mods = _modules_of(obs, wiped)
            flags = [r.step_before_backward for r in obs.steps if r.step_before_backward is not None]
            if flags and sum(flags) > len(flags) / 2:
                mechanism = "step_before_backward"
                how = (f"optimizer.step() runs before loss.backward(): at each step the model has run its "
                       f"forward but not yet its backward, so the step applies gradients that zero_grad() "
                       f"already cleared and {listing(mods)} never update")
            else:
                mechanism = "grads_zeroed_before_step"
                how = (f"The gradients of {listing(mods)} exist when backward() ends but are "
                       f"{'gone' if any(n in never_grad for n in wiped) else 'zero'} when the optimizer steps: "
                       f"they are zeroed between loss.backward() and optimizer.step() (a zero_grad() placed "
                       f"there, or optimizer.step() called before the forward and backward of its iteration), "
                       f"so nothing ever updates")
            yield self.finding(
                f"{how} ({count(len(wiped), 'parameter tensor')}).",
                severity=Severity.ERROR, where=mods[0], modules=mods, parameter_names=wiped[:50],
                kind="grads_wiped", mechanism=mechanism,
                fix="Order each iteration as optimizer.zero_grad(); loss = ...; loss.backward(); "
                    "optimizer.step(): nothing may clear the gradients between backward() and step().",
            )
        # Modules never called are unused-parameter's business; here: called but cut.
        cut = [n for n in never_grad if n not in wiped and (not called or obs.module_of(n) in called)]
        if cut:
            mods = _modules_of(obs, cut)
            graph = obs.first_loss_graph()
            with_grad = [n for n in trainable if n not in never_grad]
            if not with_grad or (graph is not None and getattr(graph, "leaf", False)):
                yield self.finding(
                    f"No parameter of the model ever receives a gradient ({count(len(cut), 'tensor')} in "
                    f"{listing(mods)}), although the model runs: the loss is not connected to the model's "
                    f"outputs (re-wrapped with torch.tensor(loss) / requires_grad_(), computed through "
                    f".item(), .numpy() or .detach()).",
                    severity=Severity.ERROR, where=mods[0], modules=mods, parameter_names=cut[:50],
                    kind="no_gradient", mechanism="loss_detached",
                    loss_is_leaf=bool(graph is not None and getattr(graph, "leaf", False)),
                    fix="Compute the loss from the model's output tensors with torch operations only; do not "
                        "rebuild it with torch.tensor(...), .item() or numpy.",
                )
            else:
                yield self.finding(
                    f"{listing(mods)} run in the forward pass but never receive a gradient "
                    f"({count(len(cut), 'parameter tensor')}) while later layers do: the graph is cut between them "
                    f"and the loss (.detach(), .data, torch.no_grad(), a numpy round-trip, or an integer cast).",
                    severity=Severity.ERROR, where=mods[0], modules=mods, parameter_names=cut[:50],
                    kind="no_gradient", mechanism="graph_cut",
                    fix="Remove the .detach()/.data/torch.no_grad()/numpy round-trip between these layers and "
                        "the loss (keep the computation in torch tensors).",
                )
        have_grad = [n for n in trainable if n not in never_grad and n not in wiped]
        if not obs.has_optimizer and obs.other_optimizers and have_grad and not obs.updates_seen:
            # An optimizer stepped, the model's parameters got gradients, none changed, and
            # the optimizer holds none of them: built over another instance.
            yield self._missing_finding(obs, trainable, trainable, optimizers=obs.other_optimizers)
            return
        zero = [n for n in have_grad
                if all(r.grad_norms.get(n, 0.0) == 0.0 for r in steps if n in r.grad_norms)
                and any(n in r.grad_norms for r in steps)]
        if zero and len(steps) >= 2:
            mods = _modules_of(obs, zero)
            yield self.finding(
                f"The gradients of {listing(mods)} were exactly zero at all {count(len(steps), 'watched step')} "
                f"(a dead ReLU upstream, a multiplication by zero, or a mask).",
                severity=Severity.WARNING, where=mods[0], modules=mods, parameter_names=zero[:50],
                kind="zero_gradient", mechanism="zero_gradient",
            )
        updated = [r for r in obs.steps if r.update_norms]
        decayed = self._lr_decayed(obs, updated)
        if decayed is not None:
            yield decayed
        elif updated and obs.updates_seen:
            unchanged = [n for n in have_grad if n not in zero and n in obs.params_changed
                         and not obs.params_changed[n] and params[n].in_optimizer is not False]
            if unchanged:
                yield self._unchanged_finding(obs, unchanged, updated)

    @staticmethod
    def _wiped(name: str, steps) -> bool:
        """Had a non-zero gradient at the end of backward, and None or zero at the
        optimizer's pre-step, on every sampled step that saw both."""
        both = [r for r in steps if name in r.grad_norms_at_backward]
        if not both:
            return False
        return all(r.grad_norms_at_backward[name] > 0.0
                   and (name in r.grads_missing or r.grad_norms.get(name, 0.0) == 0.0) for r in both)

    def _frozen_finding(self, obs, frozen: list[str], trainable: list[str]) -> Finding:
        params = obs.params
        mods = _modules_of(obs, frozen)
        order = {p: i for i, p in enumerate(obs.forward_order)}
        if not order:  # no forward seen: registration order
            order = {m: i for i, m in enumerate(dict.fromkeys(params[n].module for n in params))}
        # modules partly frozen (a frozen weight, a trainable bias) do not count as trainable here
        t_pos = [order[m] for m in _modules_of(obs, trainable) if m in order and m not in mods]
        # A frozen lookup table (nn.Embedding.from_pretrained(..., freeze=True): fixed
        # sinusoidal positions, pretrained word vectors) is a deliberate design wherever it
        # sits: it feeds the first layers, it is not one of them.
        tables = {params[n].module for n in frozen if params[n].category == "embedding"}
        between = [m for m in mods if m in order and t_pos and min(t_pos) < order[m] < max(t_pos)
                   and m not in tables]
        held = [n for n in frozen if params[n].in_optimizer and params[n].module not in tables]
        prefix = not t_pos or all(order.get(m, -1) < min(t_pos) for m in mods)
        held_after = bool(held) and not prefix
        n_params = sum(params[n].numel for n in frozen)
        if between or held_after:
            where = (between or _modules_of(obs, held))[0]
            why = (f"frozen between trainable layers ({listing(between)})" if between else
                   "held by the optimizer while the rest of the model trains")
            return self.finding(
                f"{count(len(frozen), 'parameter tensor')} in {count(len(mods), 'module')} {_have(frozen)} requires_grad=False, "
                f"{why}: a layer frozen by mistake (e.g. a leftover requires_grad_(False) or a loop that "
                f"froze too much) stops learning while the layers around it adapt.",
                severity=Severity.WARNING, where=where, modules=mods, kind="requires_grad_false",
                mechanism="requires_grad_false", placement="between" if between else "held_by_optimizer",
                parameters=n_params, in_optimizer=len(held),
                fix="Set requires_grad=True on these layers (or freeze a whole prefix/backbone on purpose and "
                    "leave its parameters out of the optimizer).",
            )
        return self.finding(
            f"{count(len(frozen), 'parameter tensor')} in {count(len(mods), 'module')} {_have(frozen)} requires_grad=False "
            f"({listing(mods)}); fine if you froze them on purpose"
            + (" (a frozen embedding table, such as fixed sinusoidal positions or pretrained "
               "vectors, is a common deliberate choice)." if tables and set(mods) <= tables else "."),
            severity=Severity.INFO, where=mods[0], modules=mods, kind="requires_grad_false",
            mechanism="requires_grad_false", placement="prefix" if prefix else "other",
            parameters=n_params,
        )

    def _missing_finding(self, obs, missing: list[str], trainable: list[str], optimizers=None) -> Finding:
        params = obs.params
        mods = _modules_of(obs, missing)
        share = sum(params[n].numel for n in missing) / max(sum(params[n].numel for n in trainable), 1)
        sev = Severity.ERROR if share >= self.max_missing_share else Severity.WARNING
        held = sum(g.get("n_params", 0) for o in (optimizers or obs.optimizers) for g in o.get("groups", []))
        if len(missing) == len(trainable) and held:
            return self.finding(
                f"The optimizer holds {count(held, 'parameter tensor')}, none of them this model's: it was built over "
                f"another instance (a deepcopy, or a model re-created after the optimizer), so the model you "
                f"train never updates ({listing(mods)}).",
                severity=Severity.ERROR, where=mods[0], modules=mods, parameter_names=missing[:50],
                kind="not_in_optimizer", mechanism="optimizer_over_other_model", optimizer_params=held,
                fix="Build the optimizer over the parameters of the model you train, after creating (and moving) "
                    "it: optimizer = SGD(model.parameters(), ...).",
            )
        return self.finding(
            f"{count(len(missing), 'trainable parameter tensor')} {_be(missing)} in no optimizer, so {_they(missing)} never update{_s1(missing)}: "
            f"{listing(mods)}.",
            severity=sev, where=mods[0], modules=mods, parameter_names=missing[:50], kind="not_in_optimizer",
            mechanism="not_in_optimizer",
            fix="Build the optimizer after the whole model exists and pass model.parameters() "
                "(or add the missing ones with optimizer.add_param_group).",
        )

    def _lr_decayed(self, obs, updated) -> Finding | None:
        """A scheduler drove the learning rate to ~0: the later updates are (almost) nil."""
        lrs = [(r.step, r.lr) for r in obs.steps if r.lr is not None]
        if len(lrs) < 2 or not lrs[0][1] or lrs[0][1] <= 0:
            return None
        first, floor = lrs[0][1], self.min_lr_decay * lrs[0][1]
        if abs(lrs[-1][1]) > floor:
            return None
        low_since = next((s for s, v in lrs if abs(v) <= floor), None)
        # A schedule that anneals to ~0 on its very last steps (cosine to eta_min=0) is
        # intended: the LR must sit at ~0 for a quarter of the watched steps.
        if sum(1 for _, v in lrs if abs(v) <= floor) < max(2, 0.25 * len(lrs)):
            return None
        later = [r for r in updated if low_since is not None and r.step >= low_since]
        if not later:
            return None
        trainable = [n for n, m in obs.params.items() if m.requires_grad and m.in_optimizer is not False]
        mods = _modules_of(obs, trainable)
        return self.finding(
            f"A scheduler drove the learning rate from {fmt(first)} to {fmt(lrs[-1][1])} by step {low_since}: "
            f"from then on the weights ({listing(mods)}) no longer change.",
            severity=Severity.WARNING, where=None, modules=mods, kind="never_changed",
            mechanism="lr_decayed_to_zero", first_lr=first, last_lr=lrs[-1][1], low_since=low_since,
            fix="Check the scheduler: scheduler.step() once per epoch (not per batch) for epoch-based schedules, "
                "and its gamma / step_size / T_max / total_steps, so the LR does not decay to ~0.",
        )

    def _unchanged_finding(self, obs, unchanged: list[str], updated) -> Finding:
        mods = _modules_of(obs, unchanged)
        lrs = [r.lr for r in obs.steps if r.lr is not None]
        first, last = (lrs[0], lrs[-1]) if lrs else (None, None)
        common = dict(severity=Severity.WARNING, where=mods[0], modules=mods, parameter_names=unchanged[:50],
                      kind="never_changed", first_lr=first, last_lr=last)
        if lrs and max(abs(x) for x in lrs) == 0.0:
            return self.finding(
                f"{listing(mods)} get non-zero gradients but never change over {count(len(updated), 'measured update')}: "
                f"the learning rate is 0.",
                mechanism="lr_zero", fix="Set a non-zero learning rate (e.g. 1e-3 for Adam, 0.01-0.1 for SGD).",
                **common)
        return self.finding(
            f"{listing(mods)} get non-zero gradients but their values never changed over "
            f"{count(len(updated), 'measured update')} (learning rate 0 for their param group?).",
            mechanism="never_changed", **common)


class UnusedParameter(Check):
    """## What it measures
    Registered modules with parameters that are never called in the forward pass, and
    modules called *inside* the model's forward that are not registered in it (kept in a
    plain Python list or dict, or created on the fly).

    ## Why it matters
    Unused parameters waste memory and break `DistributedDataParallel` (it waits for
    their gradients). Unregistered modules are worse: `model.parameters()` does not
    list them, so the optimizer never updates them, `model.to(device)` does not move
    them and `state_dict()` does not save them.

    ## How to fix
    - Keep sub-modules in `nn.ModuleList` / `nn.ModuleDict`, never in a plain list/dict.
    - Create layers in `__init__`, not inside `forward`.
    - Delete layers that the forward pass never uses (or pass `find_unused_parameters=True` to DDP if their use is conditional).

    ## Known false positives
    - Branches used only on some inputs or some steps (auxiliary heads, mixture of experts).
    - Modules used only at evaluation time.
    - Frozen (requires_grad=False) modules that never run, e.g. the deeper stages of a
      trunk in linear evaluation on earlier features: reported as info only.

    ## Example
    `self.layers = [nn.Linear(32, 32) for _ in range(3)]` in `__init__`: the layers run
    but are invisible to `model.parameters()` and never train.

    ## References
    - PyTorch docs, "nn.ModuleList" and DDP `find_unused_parameters`.
    - The training checklist (check every part of a hand-built architecture).
    """

    id = "unused-parameter"
    title = "Parameters never used in forward, or modules used but not registered"
    family = "parameters"
    severity = Severity.ERROR
    needs = ("called_modules", "unregistered_modules", "modules")
    citations = (Citation("PyTorch documentation, nn.ModuleList / DistributedDataParallel"), CHECKLIST)

    def evaluate(self, obs) -> Iterable[Finding]:
        if not obs.called_modules:
            raise Skip("no sampled forward pass of the model was observed")
        ghosts = [info for info in obs.unregistered_modules if info.get("parameters", 0) > 0]
        if ghosts:
            trains = all(info.get("in_optimizer") for info in ghosts)
            sev = Severity.WARNING if trains else Severity.ERROR
            consequence = ("they are in the optimizer, but model.to(), state_dict() and model.parameters() miss them"
                           if trains else "their parameters are in no optimizer and never train; "
                                          "model.to(), state_dict() and model.parameters() miss them")
            classes = sorted({i["class"] for i in ghosts})
            total = sum(i["parameters"] for i in ghosts)
            yield self.finding(
                f"{count(len(ghosts), 'module')} ({', '.join(classes)}; {count(total, 'parameter')}) run{_s1(ghosts)} inside the model's "
                f"forward but are not registered as sub-modules: {consequence}.",
                severity=sev, where=None, module_class=classes[0] if len(classes) == 1 else classes,
                modules=len(ghosts), parameters=total, per_module=[i["parameters"] for i in ghosts],
            )
        # A module can be used without being called: its weights read functionally
        # (MultiheadAttention's out_proj, weight tying). Gradients prove use.
        with_grad = {obs.module_of(n) for r in obs.steps for n in r.grad_norms}
        unused = [
            p for p, m in obs.modules.items()
            if m.n_params > 0 and p and p not in obs.called_modules and p not in with_grad
            and not any(c.startswith(p + ".") for c in obs.called_modules)
        ]
        # Report the outermost unused modules only.
        top = [p for p in unused if not any(p.startswith(q + ".") for q in unused if q != p)]
        if top:
            n = sum(obs.modules[p].n_params for p in unused)
            # Unused *and* frozen (every parameter requires_grad=False): a deliberately
            # truncated network, e.g. linear evaluation on conv2 features of a frozen trunk.
            def frozen(path: str) -> bool:
                names = [m for m in obs.params.values() if m.module == path or m.module.startswith(path + ".")]
                return bool(names) and not any(m.requires_grad for m in names)

            all_frozen = all(frozen(p) for p in top)
            yield self.finding(
                f"{count(len(top), 'registered module')} with parameters never ran in the forward pass: "
                f"{listing(top)} ({count(n, 'parameter')} in all)"
                + ("; they are frozen too, so this looks deliberate." if all_frozen else "."),
                severity=Severity.INFO if all_frozen else Severity.WARNING, where=top[0], modules=top,
                parameters=n, frozen=all_frozen,
            )
