"""Parameter checks: frozen and unused parameters, update sizes, init scales, modes."""

from __future__ import annotations

import math
from typing import Iterable

from .._report import Finding, Severity
from ._base import CHECKLIST, Check, Citation, Skip, Threshold
from ._util import count, fmt, listing, median, next_norm_after, number


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
            yield self.finding(
                f"The gradients of {listing(mods)} exist when backward() ends but are "
                f"{'gone' if any(n in never_grad for n in wiped) else 'zero'} when the optimizer steps "
                f"({count(len(wiped), 'parameter tensor')}): they are zeroed between loss.backward() and "
                f"optimizer.step(), so nothing ever updates.",
                severity=Severity.ERROR, where=mods[0], modules=mods, parameter_names=wiped[:50],
                kind="grads_wiped", mechanism="grads_zeroed_before_step",
                fix="Call optimizer.zero_grad() before loss.backward() (or right after optimizer.step()), "
                    "never between backward() and step().",
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
        between = [m for m in mods if m in order and t_pos and min(t_pos) < order[m] < max(t_pos)]
        held = [n for n in frozen if params[n].in_optimizer]
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
            f"({listing(mods)}); fine if you froze them on purpose.",
            severity=Severity.INFO, where=mods[0], modules=mods, kind="requires_grad_false",
            mechanism="requires_grad_false", placement="prefix" if prefix else "other",
            parameters=n_params,
        )

    def _missing_finding(self, obs, missing: list[str], trainable: list[str]) -> Finding:
        params = obs.params
        mods = _modules_of(obs, missing)
        share = sum(params[n].numel for n in missing) / max(sum(params[n].numel for n in trainable), 1)
        sev = Severity.ERROR if share >= self.max_missing_share else Severity.WARNING
        held = sum(g.get("n_params", 0) for o in obs.optimizers for g in o.get("groups", []))
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


class UpdateRatio(Check):
    """## What it measures
    For every weight matrix, the ratio ||update|| / ||weight|| of each measured update
    (the change the optimizer, or your hand-written rule, made in one step); the
    verdict uses the median over layers of the median over steps, and lists outliers.

    ## Why it matters
    The checklist: the ratio of the update size to the weight size should be about
    1e-3. Far above, the learning rate is too high and the weights are being rewritten
    each step (divergence, dead ReLUs); far below, nothing moves and training stalls.

    ## How to fix
    - Ratio too high: lower the learning rate (x0.1), add warm-up or gradient clipping.
    - Ratio too low: raise the learning rate (x10); check weight decay is not fighting the updates.

    ## Known false positives
    - Adam's first steps update every weight by about the learning rate, so tiny
      layers with a small init show large ratios early; the band is wide (1e-6 to 1e-1).
    - Biases and norm parameters (zero-initialised) are not judged.
    - Weights initialised near zero (e.g. a tiny linear regression) change by a large
      share of their norm in the first updates, then settle. When only the first updates
      are above the band, the median over all updates is inside it, the weight norm grew
      at least `min_growth` times over the watched steps and the loss fell, the finding is
      info ("a near-zero start"), not a warning.

    ## Example
    SGD with lr=10 on a default-initialised MLP: each step changes the weights by more
    than their own norm (ratio > 1).

    ## References
    - The training checklist ("the ratio of update size to weight size should be about 0.001").
    - CS231n, "Neural Networks Part 3: ratio of weights:updates"; DL4J visualisation guide.
    """

    id = "update-ratio"
    title = "Update size / weight size far from ~1e-3"
    family = "parameters"
    severity = Severity.ERROR
    needs = ("steps", "params")
    thresholds = (
        Threshold("high", 1e-1, "median ratio above which the learning rate is likely too high (warning)", "ratio"),
        Threshold("broken", 1.0, "median ratio at which every update rewrites the weights (error)", "ratio"),
        Threshold("low", 1e-6, "median ratio below which updates are too small to matter (warning)", "ratio"),
        Threshold("early_updates", 5, "the first measured updates, also judged on their own (a too-high LR shows there before the weights inflate)", "updates"),
        Threshold("min_growth", 2.0, "growth of the weight norm over the watched steps (with a falling loss and a healthy median over all updates) at which large first updates are a near-zero start, reported as info", "factor"),
    )
    citations = (CHECKLIST, Citation("CS231n notes, 'Neural Networks Part 3'"))

    def evaluate(self, obs) -> Iterable[Finding]:
        per: dict[str, list[float]] = {}
        step_medians: list[float] = []
        for rec in obs.steps:
            this_step = []
            for name, upd in rec.update_norms.items():
                meta = obs.params.get(name)
                w = rec.weight_norms.get(name)
                if meta is None or meta.role != "weight" or not w or not math.isfinite(upd) or not math.isfinite(w):
                    continue
                per.setdefault(name, []).append(upd / w)
                if upd > 0:
                    this_step.append(upd / w)
            if this_step:
                step_medians.append(median(this_step))
        if not per:
            raise Skip("no weight update was measured (no sampled step with an update)")
        ratios = {n: median(v) for n, v in per.items()}
        moving = {n: r for n, r in ratios.items() if r > 0}
        if not moving:
            raise Skip("no weight changed in the measured updates (see frozen-layer)")
        # A too-high learning rate inflates the weights within a few steps, after which
        # the ratio shrinks again: the first updates are judged on their own as well.
        early = median(step_medians[: int(self.early_updates)])
        overall = max(median(moving.values()), early)
        evidence = {"median_ratio": overall, "early_median_ratio": early, "ratio_by_param": moving,
                    "ratio_by_step": step_medians[:50]}
        if overall >= self.broken or overall > self.high:
            worst = max(moving, key=moving.get)
            sev = Severity.ERROR if overall >= self.broken else Severity.WARNING
            whole = median(moving.values())
            n_early = min(len(step_medians), int(self.early_updates))
            when = (f"over the first {count(n_early, 'measured update')}; the median over all "
                    f"{len(step_medians)} is {fmt(whole)}" if early > whole else
                    f"median over {count(len(moving), 'weight tensor')} and {count(len(step_medians), 'update')}")
            growth = _weight_growth(obs, list(moving))
            if sev is Severity.WARNING and whole <= self.high and growth is not None \
                    and growth >= self.min_growth and _loss_fell(obs):
                # Only the first updates are large, measured against weights that started near
                # zero and have since grown (a linear model fitted from a small init) while the
                # loss fell: the denominator was small, not the learning rate too high.
                yield self.finding(
                    f"The first updates change the weights by {fmt(early)} of their norm ({when}), but "
                    f"the weights started small and grew {fmt(growth)}x while the loss fell: a near-zero "
                    f"start, not a too-high learning rate.",
                    severity=Severity.INFO, where=obs.params[worst].module, direction="high",
                    kind="small_start", weight_growth=growth, **evidence,
                    fix="Nothing to fix if the loss keeps falling; the ratio settles as the weights grow.")
                return
            yield self.finding(
                f"Each update changes the weights by {fmt(overall)} of their norm ({when}; ~1e-3 is healthy); "
                f"the most-changed tensor is `{worst}` ({fmt(moving[worst])} over all updates). "
                f"The learning rate is likely too high.",
                severity=sev, where=obs.params[worst].module, direction="high", **evidence)
        elif median(moving.values()) < self.low:
            overall = median(moving.values())
            worst = min(moving, key=moving.get)
            yield self.finding(
                f"Each update changes the weights by only {fmt(overall)} of their norm (median; ~1e-3 "
                f"is healthy): the learning rate is likely too low to make progress.",
                severity=Severity.WARNING, where=obs.params[worst].module, direction="low", **evidence)


def _weight_growth(obs, names: list[str]) -> float | None:
    """Median over the judged weights of (last measured norm / first measured norm)."""
    growth = []
    for n in names:
        norms = [r.weight_norms[n] for r in obs.steps if n in r.weight_norms and math.isfinite(r.weight_norms[n])]
        if len(norms) >= 2 and norms[0] > 0:
            growth.append(norms[-1] / norms[0])
    return median(growth) if growth else None


def _loss_fell(obs) -> bool:
    """The median loss of the last third of the watched steps is below that of the first third."""
    values = [v for _, v in obs.losses if v is not None and math.isfinite(v)]
    if len(values) < 6:
        return False
    third = len(values) // 3
    return median(values[-third:]) < median(values[:third])


class WeightInit(Check):
    """## What it measures
    At the start of watching, the standard deviation of every Linear/Conv weight,
    expressed in units of 1/sqrt(fan_in) (LeCun). PyTorch's default init gives 0.58,
    Xavier 0.3-1.4 depending on fan-out, He 1.41. Also weights that are all equal
    (zero or constant) in a hidden layer.

    ## Why it matters
    The checklist: initialisation matters; use Xavier/Glorot or He. A scale far above
    He explodes the activations layer after layer; far below vanishes them. Identical
    weights make every unit of a layer compute the same thing forever (symmetry is
    never broken).

    ## How to fix
    - Use `nn.init.kaiming_normal_(w, nonlinearity="relu")` for ReLU nets, `nn.init.xavier_uniform_` for tanh/sigmoid, or keep PyTorch's defaults.
    - Never initialise hidden weights to a constant; zero init is fine only for the last layer or residual branches.

    ## Known false positives
    - Pre-trained weights can legitimately have other scales (then activation-std tells
      whether it matters).
    - Zero-initialised last layers or residual-branch outputs (a known good practice) are
      not flagged: only layers before the last one are. A small-scale output layer is info.
    - Transformers with GPT-2-style init: every Linear at std 0.02 and the residual
      projections (`c_proj`) at 0.02/sqrt(2 n_layer), embeddings at 0.02. At small widths
      these fall below 0.1/sqrt(fan_in), yet they are deliberate: the projection writes
      into a residual stream that the next LayerNorm re-normalises. A small weight whose
      module reaches a normalisation layer (torch's, or a custom leaf class named `*Norm`)
      within three layers in forward order is reported as info, not a warning; the advice
      "use kaiming_normal_" does not apply there.

    ## Example
    `nn.init.normal_(layer.weight, std=1.0)` on a `Linear(512, 512)`: the std is 22.6x
    LeCun's, and activations grow ~16x per layer.

    ## References
    - The training checklist ("initialisation matters: Xavier/Glorot or He").
    - He et al., ICCV 2015; Glorot & Bengio, AISTATS 2010; LeCun et al., "Efficient BackProp", 1998.
    """

    id = "weight-init"
    title = "Initial weight scale far from Xavier/He"
    family = "parameters"
    severity = Severity.ERROR
    needs = ("params", "forward_order", "modules")
    thresholds = (
        Threshold("low", 0.1, "std x sqrt(fan_in) below which the init is too small (warning)", "LeCun units"),
        Threshold("high", 4.0, "std x sqrt(fan_in) above which the init is too large (warning; He is 1.41)", "LeCun units"),
    )
    citations = (CHECKLIST, Citation("He et al., ICCV 2015"), Citation("Glorot & Bengio, AISTATS 2010"))

    def evaluate(self, obs) -> Iterable[Finding]:
        weights = [m for m in obs.params.values() if m.role == "weight" and m.init_std is not None and m.fan_in]
        if not weights:
            raise Skip("no Linear/Conv weight to judge")
        order = {p: i for i, p in enumerate(obs.forward_order)}
        ordered = sorted(weights, key=lambda m: order.get(m.module, 10**9))
        last_module = ordered[-1].module if order else None
        symmetric, small, large = [], [], []
        scale = {}
        for m in weights:
            s = m.init_std * math.sqrt(m.fan_in)
            scale[m.name] = s
            if m.init_all_equal:
                if m.module != last_module:
                    symmetric.append(m)
                continue
            if s < self.low:
                small.append(m)
            elif s > self.high:
                large.append(m)
        evidence = {"scale_by_weight": scale}
        if symmetric:
            names = [m.name for m in symmetric]
            yield self.finding(
                f"{listing(names)} start with all weights equal (value {fmt(symmetric[0].init_mean)}): every "
                f"unit of the layer computes the same thing and symmetry is never broken.",
                severity=Severity.ERROR, where=symmetric[0].module, weights=names, kind="symmetric", **evidence,
            )
        # Deliberately small scales: the output layer (a small or zero last layer is good
        # practice), and transformer-style init (GPT-2: Linear std 0.02, residual projections
        # 0.02/sqrt(2 n_layer)) of a layer whose output a normalisation layer re-scales right
        # after. Reported as info: "use kaiming_normal_" would be wrong advice there.
        leaf_order = [p for p in obs.forward_order if p in obs.modules and obs.modules[p].is_leaf]
        designed = {}
        for m in small:
            if m.module == last_module:
                designed[m.name] = "the output layer"
            else:
                norm = next_norm_after(obs, m.module, leaf_order)
                if norm:
                    designed[m.name] = f"`{norm}` re-normalises its output"
        small = [m for m in small if m.name not in designed]
        for group, word in ((large, "large"), (small, "small")):
            if not group:
                continue
            worst = max(group, key=lambda m: abs(math.log(max(scale[m.name], 1e-30))))
            yield self.finding(
                f"{count(len(group), 'weight tensor')} start{'s' if len(group) == 1 else ''} with a {word} scale: "
                f"{listing([m.name for m in group])}; "
                f"`{worst.name}` has std {fmt(worst.init_std)} = {fmt(scale[worst.name])}/sqrt(fan_in={number(worst.fan_in)}) "
                f"(He is 1.41/sqrt(fan_in), PyTorch's default 0.58/sqrt(fan_in)).",
                severity=Severity.WARNING, where=worst.module, weights=[m.name for m in group], kind=word, **evidence,
            )
        if designed:
            names = list(designed)
            first = obs.params[names[0]]
            yield self.finding(
                f"{count(len(names), 'weight tensor')} start{'s' if len(names) == 1 else ''} with a small scale "
                f"by design: {listing([f'{n} ({fmt(scale[n])}/sqrt(fan_in); {designed[n]})' for n in names], 3)}. "
                + ("Small residual projections before a LayerNorm (GPT-2's 0.02/sqrt(2 n_layer)) are a "
                   "deliberate choice, not a bad init."
                   if any(r != "the output layer" for r in designed.values()) else
                   "A small output layer is a deliberate choice (the first predictions start near "
                   "neutral), not a bad init."),
                severity=Severity.INFO, where=first.module, weights=names, kind="small_by_design",
                reasons=designed, **evidence,
                fix="Nothing to fix if the small init is deliberate; Kaiming/Xavier advice does not apply "
                    "to transformer residual projections.",
            )


class TrainEvalMode(Check):
    """## What it measures
    Whether the model was in `eval()` mode during training steps (steps with a
    backward), and whether a BatchNorm layer in training mode saw batches of one sample.

    ## Why it matters
    The checklist: frameworks behave differently in train and eval phase. In eval mode
    dropout is off and BatchNorm uses its running statistics, which are never updated:
    a model left in eval mode after validation trains without its regularisers and with
    frozen normalisation. A BatchNorm batch of one has zero variance: its output is
    pure noise around the bias.

    ## How to fix
    - Call `model.train()` at the start of every training epoch (after any `model.eval()`).
    - Use batches of at least 2 (drop_last=True in the DataLoader) or GroupNorm/LayerNorm for tiny batches.

    ## Known false positives
    - Fine-tuning with BatchNorm deliberately frozen in eval mode (reported as a warning
      only when the model has dropout or BatchNorm; otherwise eval mode changes nothing
      and it is info).

    ## Example
    `model.eval(); validate(); for x, y in loader: ...` with no `model.train()` in the
    next epoch.

    ## References
    - The training checklist ("frameworks behave differently in train and eval phase").
    - Ioffe & Szegedy, "Batch Normalization", ICML 2015.
    """

    id = "train-eval-mode"
    title = "Training in eval mode, or BatchNorm on batches of one"
    family = "modes"
    severity = Severity.WARNING
    needs = ("steps", "modules")
    citations = (CHECKLIST, Citation("Ioffe & Szegedy, ICML 2015"))

    def evaluate(self, obs) -> Iterable[Finding]:
        steps = [r for r in obs.steps if r.backward_calls > 0 and r.training is not None]
        if not steps:
            raise Skip("no training step was observed")
        in_eval = [r.step for r in steps if r.training is False]
        if in_eval:
            mode_sensitive = [p for p, m in obs.modules.items() if m.category in ("dropout", "batchnorm")]
            sev = Severity.WARNING if mode_sensitive else Severity.INFO
            yield self.finding(
                f"The model was in eval mode during {len(in_eval)} of {count(len(steps), 'training step')}"
                + (f"; {count(len(mode_sensitive), 'Dropout/BatchNorm layer')} behave{_s1(mode_sensitive)} differently there "
                   f"({listing(mode_sensitive, 3)})." if mode_sensitive else
                   " (it has no Dropout/BatchNorm, so this changes nothing yet)."),
                severity=sev, step=in_eval[0], eval_steps=in_eval[:50], mode_sensitive_layers=mode_sensitive,
            )
        bn_one = sorted({p for r in obs.steps for p in r.bn_batch_one})
        if bn_one:
            yield self.finding(
                f"{'BatchNorm layer' if len(bn_one) == 1 else 'BatchNorm layers'} {listing(bn_one)} received a batch of one sample in training mode: "
                f"the batch statistics are meaningless.",
                severity=Severity.WARNING, where=bn_one[0], layers=bn_one,
            )
