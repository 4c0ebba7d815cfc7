"""``Doctor.checkup``: run the probes on copies of the model, then let the checks judge.

The orchestrator only: it builds the :class:`~nndoctor.probes.ProbeContext`, runs the
selected probes (``nndoctor.probes``) under the isolation context and the time budget,
hands each the plain settings derived from its check's thresholds, stores the typed
records (``nndoctor._probe_records``) in ``Observations.experiments`` and runs the checks
on them. Probes measure; the checks in ``nndoctor.checks.experiments`` (and
``chance-level-loss``) alone decide.

=================  ==================  ==========================================
probe              key                 read by
=================  ==================  ==========================================
loss at init       ``init``            ``chance-level-loss`` (nndoctor.checks.loss)
overfit            ``overfit``         ``overfit-tiny-batch``
random inputs      ``random_input``    ``random-input-loss``
LR sweep + range   ``lr_sweep``,       ``lr-sweep``
                   ``lr_range``
gradient check     ``gradcheck``       ``gradient-check``
=================  ==================  ==========================================
"""

from __future__ import annotations

import math
import time
import dataclasses
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from ._checkset import CheckSet, internal_error, judge
from ._experiment_budget import BudgetPlanner
from ._observations import Observations
from ._probe_records import ProbeSkipped, Record
from ._report import Finding, Report
from .checks._base import Check
from .checks.experiments import GradientCheck, LrSweep, OverfitTinyBatch, RandomInputLoss
from .probes import ProbeContext, ProbeSkip, gradcheck, init_loss, interventions, isolated, lr_sweep, overfit, pairing, random_input
from .probes.context import train_curve
from .probes.lr_sweep import lr_suggestions

__all__ = ["run_checkup", "EXPERIMENT_IDS", "DEFAULT_OPTIONS", "lr_suggestions"]

CHANCE_ID = "chance-level-loss"
EXPERIMENT_IDS = (
    CHANCE_ID,
    OverfitTinyBatch.id,
    RandomInputLoss.id,
    LrSweep.id,
    GradientCheck.id,
)

# Probe knobs (``run_checkup(..., **options)``). Thresholds of the checks are separate:
# ``thresholds={"overfit-tiny-batch": {"max_steps": 200}}``.
DEFAULT_OPTIONS: dict[str, Any] = {
    "seed": 0,
    "overfit_samples": 8,
    "random_input_steps": 30,
    "random_input_samples": 16,  # training half; as many again are held out when present
    "random_input_eval_every": 3,
    "pairing_samples": 512,  # the checkup batch + the watched batches, half of them held out
    "pairing_steps": 300,  # at most: the copy stops once it has memorised its half
    "sweep_steps": 25,
    "sweep_samples": 16,
    "range_iters": 100,
    "range_start_lr": 1e-7,
    "range_end_lr": 10.0,
    "range_batch": 8,
    "range_smoothing": 0.95,  # EMA weight of the old value (torch-lr-finder's 0.05 on the new)
    "range_stop_factor": 4.0,  # stop when the smoothed loss exceeds 4x the best (fastai, Lightning)
    "gradcheck_batch": 2,
    "gradcheck_directions": 4,
    "gradcheck_eps": 1e-6,
    "gradcheck_full_max_elements": 1024,
    "gradcheck_max_tensors": 200,
    "thresholds": None,
    # Confirm by intervention: the fix of at most this many leading root-cause candidates is
    # applied to a copy and the tiny batch overfit again (0: no interventions).
    "interventions": 2,
    # Seconds for all the probes together; checked between probes (a probe is never cut
    # short). The probes not started in time are skipped with the reason. None: no limit.
    # Within it the LR sweep, range test and random-input test get fewer steps when the
    # budget cannot afford their full length (nndoctor._experiment_budget).
    "time_budget": None,
    # Seconds one training step of this model takes (the CLI runner passes the script's
    # own, timed while watching): the first guess of a probe step's cost, before the
    # probes have measured their own. None: unknown.
    "step_seconds": None,
    # The learning rates the watch saw, step by step (``Doctor.checkup`` passes them): a
    # rising run is a warm-up, and the overfit probe then trains at the base LR. None: unknown.
    "lr_history": None,
}


_MIN_HARD_STOP_S = 30.0


# ======================================================================================
# entry point
# ======================================================================================
def run_checkup(
    model: nn.Module,
    batch: Any,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    select: Any = None,
    ignore: Any = None,
    checks: "CheckSet | Mapping[str, Check] | None" = None,
    figures_dir: Any = None,
    prior_findings: "Sequence[Finding] | None" = None,
    pairs: "Sequence[tuple[Any, Any, Any]] | None" = None,
    **options: Any,
) -> Report:
    """Run the experiments on copies of ``model`` and judge them.

    ``batch`` is ``(inputs, targets)``; inputs may be a tensor, a tuple of tensors
    (``model(*inputs)``) or a dict (``model(**inputs)``); targets may be None when
    ``loss_fn(outputs, None)`` makes sense. ``loss_fn`` defaults to ``CrossEntropyLoss``
    for integer class targets and float logits. ``optimizer``: the copies are trained with
    its type and hyper-parameters (Adam(lr=1e-3) when None). ``checks``: the check set to
    judge with (a ``CheckSet``, or its ``.checkup`` mapping of id -> check, as the Doctor
    passes it); or else ``select`` / ``ignore``: check ids (a list or a comma-separated
    string) and ``thresholds=`` (resolved here into a check set). ``figures_dir``: PNG plots are written there
    and their paths put in ``report.experiments["figures"]``. Other keyword options are
    the probe knobs of ``DEFAULT_OPTIONS``.

    Confirm by intervention: after the checks have judged, the leading root-cause
    candidates of the diagnosis (at most ``interventions``, within ``time_budget``) get
    the fix their finding proposes applied to a copy, and the tiny batch is overfit again
    (``nndoctor.probes.interventions``); ``report.diagnosis.confirmed`` says whether the
    fix removed the symptom (``report.experiments["interventions"]`` holds the curves).
    ``prior_findings``: what a watch already found (``Doctor.checkup`` passes them), so
    the intervention targets the diagnosis of watch + checkup, the report the CLI shows
    after merging both; the returned report's ``diagnosis`` is then that joint diagnosis.
    ``pairs``: ``(args, kwargs, targets)`` of batches the script trained on (``Doctor.checkup``
    passes the ones its watch kept): the pairing experiment of ``random-input-loss`` holds
    out half of them with the batch.

    The user's model, optimizer, RNG streams, ``training`` flags and ``requires_grad``
    map are left exactly as they were.
    """
    unknown = set(options) - set(DEFAULT_OPTIONS)
    if unknown:
        raise TypeError(
            f"run_checkup() got unknown options {sorted(unknown)}; known: {sorted(DEFAULT_OPTIONS)}"
        )
    opts = {**DEFAULT_OPTIONS, **options}
    overrides = opts.pop("thresholds")
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise TypeError(
            "checkup needs batch=(inputs, targets); pass (inputs, None) when the loss takes "
            "no targets"
        )
    checks = _build_checks(checks, select, ignore, overrides)
    opts["pairs"] = pairs

    obs = Observations()
    obs.model_class = type(model).__name__
    obs.n_parameters = sum(p.numel() for p in model.parameters())
    obs.n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    obs.check_thresholds = {cid: dict(check.values) for cid, check in checks.items() if check is not None}

    # enable_grad: a checkup called under `torch.no_grad()` must still train its copies.
    with isolated(model), torch.enable_grad():
        ctx = ProbeContext(model, batch, optimizer, loss_fn, seed=int(opts["seed"]))
        ctx.lr_history = list(opts.get("lr_history") or [])
        started = time.monotonic()
        budget = opts.get("time_budget")
        planner = BudgetPlanner(None if budget is None else float(budget), started, opts.get("step_seconds"))
        if budget is not None:
            # A running probe may overrun the budget by as much again at most (30 s at least:
            # the first experiment always runs, even on a budget of 0).
            ctx.deadline = started + max(2 * float(budget), _MIN_HARD_STOP_S)
        probes = _probes(checks)
        served = False  # the first experiment that trains (the one that matters most) always runs
        for i, (key, probe) in enumerate(probes):
            now = time.monotonic()
            if budget is not None and served and now - started > budget:
                obs.experiments[key] = ProbeSkipped(
                    f"the experiments' time budget ({budget:g} s) ran out before this one "
                    f"started; raise it (nndoctor check --timeout, or time_budget=...)"
                )
                continue
            served = served or key != "init"
            sized = planner.size(key, opts, [k for k, _ in probes[i + 1:]], now,
                                 measure=lambda: _time_copy_steps(ctx, int(opts["sweep_samples"])))
            if sized is None:
                obs.experiments[key] = ProbeSkipped(
                    f"the experiments' time budget ({budget:g} s) left too little for this one after the "
                    f"experiments before it; raise it (nndoctor check --timeout, or time_budget=...)")
                continue
            torch.manual_seed(ctx.seed)
            steps_before = ctx.train_steps
            try:
                obs.experiments[key] = probe(ctx, sized)
            except ProbeSkip as skip:
                obs.experiments[key] = ProbeSkipped(skip.reason)
            except Exception as exc:  # a probe must never take the checkup down (strict mode: raise)
                obs.experiments[key] = ProbeSkipped(internal_error(f"the {key} experiment", exc))
            planner.record(ctx.train_steps - steps_before, time.monotonic() - now)
            if key in planner.resized and "shortened_from" in obs.experiments[key]:
                # The checks read it: a probe cut short by the budget (which follows the
                # machine's load) must not give a verdict its full length would not.
                obs.experiments[key].shortened_from = planner.resized[key][0]

    report = Report(
        model={
            "class": obs.model_class,
            "parameters": obs.n_parameters,
            "trainable": obs.n_trainable,
        },
        observations=obs,
    )
    verdict = judge(checks.values(), obs)
    report.findings.extend(verdict.findings)
    report.checks_run.extend(verdict.run)
    report.checks_skipped.extend(verdict.skipped)
    report.notes.extend(verdict.notes)
    report.notes.extend(planner.notes())
    report.notes.extend(ctx.notes)
    report.sort()
    if int(opts["interventions"]) > 0 and OverfitTinyBatch.id in checks:
        _confirm(report, ctx, checks[OverfitTinyBatch.id], obs, opts, prior_findings, model,
                 budget=budget, started=started)
    report.experiments = {k: v for k, v in obs.experiments.items()}
    if figures_dir is not None:
        from .reporters.figures import save_figures

        report.experiments["figures"] = save_figures(report, figures_dir)
    return report


def _confirm(
    report: Report, ctx: ProbeContext, fit: Check, obs: Observations, opts: dict[str, Any],
    prior: "Sequence[Finding] | None", model: nn.Module, *, budget: float | None, started: float,
) -> None:
    """Confirm by intervention: for the leading root-cause candidates of the diagnosis of
    ``prior`` (the watch's findings) + this checkup's, apply the proposed fix on a copy,
    overfit the tiny batch again, and record the verdict of ``judge_intervention`` on the
    diagnosis. Never raises (a failed intervention is recorded as skipped)."""
    from ._diagnosis import candidate_findings, diagnose, judge_intervention
    from ._probe_records import InterventionRun, InterventionTrial

    # Copies: the diagnosis below must not touch the findings of either report.
    def fresh(f: Finding) -> Finding:
        return dataclasses.replace(f, evidence=dict(f.evidence or {}))

    pool = [fresh(f) for f in [*(prior or []), *report.findings]]
    target = diagnose(pool) if prior else report.diagnosis
    if target is None:
        return
    record = InterventionRun()
    tried = 0
    for head in candidate_findings(pool):
        if tried >= int(opts["interventions"]):
            break
        if budget is not None and time.monotonic() - started > budget:
            record.trials.append(InterventionTrial(cause=head.check, skipped=(
                f"the experiments' time budget ({budget:g} s) ran out before this intervention")))
            break
        with isolated(model), torch.enable_grad():
            torch.manual_seed(ctx.seed)
            try:
                trial = interventions.measure(
                    ctx, head.check, head.evidence, n_samples=int(opts["overfit_samples"]),
                    max_steps=int(fit.max_steps), loss_fraction=float(fit.loss_fraction),
                    min_accuracy=float(fit.min_accuracy),
                )
            except ProbeSkip:
                continue  # no fix to apply for this cause: try the next candidate
            except Exception as exc:  # an intervention must never take the checkup down
                record.trials.append(InterventionTrial(
                    cause=head.check, skipped=internal_error(f"the intervention for {head.check}", exc)))
                tried += 1
                continue
        record.trials.append(trial)
        tried += 1
        verdict = judge_intervention(trial)
        verdict.pop("cause", None)
        if head.check == target.cause:
            target.confirm(**verdict)
        elif target.confirmed is not None and verdict["outcome"] == "confirmed":
            # the leading cause's fix did not help, the runner-up's did: say so
            target.confirmed["runner_up_confirmed"] = {"cause": head.check, **verdict}
        if verdict["outcome"] == "confirmed":
            break
    obs.experiments["interventions"] = record
    if prior:
        report.diagnosis = target


def _probes(checks: dict[str, Check | None]) -> list[tuple[str, Callable[[ProbeContext, dict[str, Any]], Record]]]:
    """(key, probe) for each selected experiment, in the order the time budget serves them:
    the ones that most change the diagnosis first, the LR sweep (sized to leave room
    for the overfit, whose failing run on a slow model would otherwise take the whole
    budget and leave a too-high LR undiagnosed), then the overfit, the range test,
    random inputs, the gradient check; the loss at init (one forward) before them all. Each probe gets the options
    (``DEFAULT_OPTIONS``, its step count possibly cut by the budget) and the thresholds of
    its check that bound the measurement (the overfit step budget and target, the
    gradient tolerances)."""
    Probe = Callable[[ProbeContext, dict[str, Any]], Record]
    probes: list[tuple[str, Probe]] = []
    if CHANCE_ID in checks:
        probes.append(("init", lambda ctx, o: init_loss.measure(ctx)))
    sweep = checks.get(LrSweep.id)
    if sweep is not None:
        probes.append(("lr_sweep", lambda ctx, o: lr_sweep.measure_sweep(
            ctx, n_samples=int(o["sweep_samples"]), steps=int(o["sweep_steps"]),
            x10_unneeded=lambda record: _x10_unneeded(sweep, record),
        )))
    fit = checks.get(OverfitTinyBatch.id)
    if fit is not None:
        probes.append(("overfit", lambda ctx, o: overfit.measure(
            ctx, n_samples=int(o["overfit_samples"]), max_steps=int(fit.max_steps),
            loss_fraction=float(fit.loss_fraction), min_accuracy=float(fit.min_accuracy),
        )))
    if LrSweep.id in checks:
        probes.append(("lr_range", lambda ctx, o: lr_sweep.measure_range(
            ctx, iters=int(o["range_iters"]), start_lr=float(o["range_start_lr"]),
            end_lr=float(o["range_end_lr"]), batch=int(o["range_batch"]),
            smoothing=float(o["range_smoothing"]), stop_factor=float(o["range_stop_factor"]),
        )))
    if RandomInputLoss.id in checks:
        probes.append(("random_input", lambda ctx, o: random_input.measure(
            ctx, n_samples=int(o["random_input_samples"]), steps=int(o["random_input_steps"]),
            eval_every=int(o["random_input_eval_every"]),
        )))
        probes.append(("pairing", lambda ctx, o: pairing.measure(
            ctx, pairing.watched_pairs(o.get("pairs"), ctx), max_samples=int(o["pairing_samples"]),
            steps=int(o["pairing_steps"]),
        )))
    grad = checks.get(GradientCheck.id)
    if grad is not None:
        probes.append(("gradcheck", lambda ctx, o: gradcheck.measure(
            ctx, batch=int(o["gradcheck_batch"]), directions=int(o["gradcheck_directions"]),
            eps=float(o["gradcheck_eps"]), full_max_elements=int(o["gradcheck_full_max_elements"]),
            max_tensors=int(o["gradcheck_max_tensors"]), atol=float(grad.gradcheck_atol),
            rtol=float(grad.gradcheck_rtol), localize_above=float(grad.max_relative_error),
        )))
    return probes


def _time_copy_steps(ctx: ProbeContext, n_samples: int, steps: int = 3) -> tuple[int, float]:
    """(evaluations, seconds) of ``steps`` training steps of a copy on the LR sweep's
    samples: the measured cost of a probe step, for the budget to size the probes with
    when the script's own step (observed, whole batch) is all it has. (0, 0.0) when the
    copy cannot train (the probes will say why)."""
    started, before = time.monotonic(), ctx.train_steps
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.seed)
            clone = ctx.copy_model()
            opt = ctx.make_optimizer(clone)
            inputs, targets = ctx.take(0, min(n_samples, ctx.batch_size))
            train_curve(ctx, clone, opt, inputs, targets, steps)
    except ProbeSkip:
        return 0, 0.0  # the probes will say why
    except Exception as exc:  # (strict mode: raise)
        internal_error("timing a copy's training step", exc)
        return 0, 0.0
    return ctx.train_steps - before, time.monotonic() - started


def _x10_unneeded(check: Check, record: Any) -> str | None:
    """Why the LR sweep's x10 trial cannot change the `lr-sweep` verdict, read by the
    check itself from the x0.1 and x1 trials (None: it can). The check looks at x10 only
    when x0.1 is not clearly better and x1 has stalled without diverging; the range
    test's blow-up point (not known yet) can only silence x10 further."""
    import types

    from .checks._base import Skip

    try:
        findings = list(check.evaluate(types.SimpleNamespace(experiments={"lr_sweep": record})))
    except Skip:
        return None
    except Exception:
        return None  # run the trial: the check will meet (and report) the same problem
    if any((f.evidence or {}).get("better") == "x0.1" for f in findings):
        return "LR x0.1 already trains clearly better than yours"
    progress = check.trial_stats(record.trials["1"].losses or [])[0]
    if math.isfinite(progress) and progress >= float(check.stalled_progress):
        return (f"your LR already removes {progress:.0%} of the starting loss, and x10 is judged only "
                f"when x1 stalls (< {float(check.stalled_progress):.0%})")
    if not math.isfinite(progress) or progress < -0.5:
        return "your LR already diverges, so x10 cannot be the better one"
    return None


def _build_checks(
    checks: "CheckSet | Mapping[str, Check] | None", select: Any, ignore: Any, thresholds: Any,
) -> dict[str, Check]:
    """The checkup's checks (id -> check): the given check set's, or one resolved from
    ``select``/``ignore``/``thresholds`` (unknown names raise a usage error)."""
    if checks is None:
        return CheckSet.resolve(select, ignore, thresholds).checkup
    if select is not None or ignore is not None or thresholds is not None:
        raise TypeError("run_checkup(): pass either checks= or select/ignore/thresholds, not both")
    if isinstance(checks, CheckSet):
        return checks.checkup
    return dict(checks)
