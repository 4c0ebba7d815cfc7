"""The one module that draws the checkup experiments (overfit, LR sweep, LR range test,
random inputs), from their records (``nndoctor._probe_records``) or plain data of the
same shape.

Every figure has the size of all nndoctor figures (``FIGURE_SIZE`` at ``FIGURE_DPI``),
is drawn on an Agg canvas without pyplot, states the verdict of its check in the title
when the report holds a finding of it (``findings=``), and uses a log axis where the
values span decades. ``nndoctor.reporters.figures`` re-exports everything here and
puts these figures in ``report_figures`` / ``save_figures``.

The readers (:func:`overfit_runs`, :func:`lr_sweep_runs`, :func:`lr_range_curve`,
:func:`random_input_curves`) list the shapes accepted, the probes' records first; the
TensorBoard reporter uses them for its experiment scalars.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import numpy as np
from matplotlib.figure import Figure

from ._drawing import as_float, as_mapping, float_list, get_first, new_figure, spans_decades, verdict

__all__ = [
    "overfit_figure",
    "lr_sweep_figure",
    "lr_range_figure",
    "random_input_figure",
    "experiment_figures",
    "find_experiment",
    "report_experiments",
    "overfit_runs",
    "overfit_floor",
    "lr_sweep_runs",
    "lr_range_curve",
    "random_input_curves",
    "EXPERIMENT_CHECKS",
]

# The check that judges each figure's experiment (its verdict goes in the title).
EXPERIMENT_CHECKS = {
    "overfit": ("overfit-tiny-batch",),
    "lr_sweep": ("lr-sweep",),
    "lr_range": ("lr-sweep",),
    "random_input": ("random-input-loss",),
}

# Experiment keys as producers may spell them; the first is the canonical name.
_EXPERIMENT_ALIASES: dict[str, tuple[str, ...]] = {
    "overfit": ("overfit", "overfit_tiny_batch", "overfit-tiny-batch", "tiny_batch"),
    "lr_sweep": ("lr_sweep", "lr-sweep", "lr_compare", "lr_comparison"),
    "lr_range": ("lr_range", "lr-range", "lr_range_test", "lr_finder", "lr_find"),
    "random_input": ("random_input", "random-input", "random_inputs", "random-input-loss"),
}



def find_experiment(experiments: Mapping[str, Any] | None, name: str) -> Any:
    """The experiment ``name`` (``overfit``, ``lr_sweep``, ``lr_range``,
    ``random_input``) under any of its accepted spellings, or ``None`` (also when it
    is recorded as ``{"skipped": reason}``)."""
    if not experiments:
        return None
    for key in _EXPERIMENT_ALIASES.get(name, (name,)):
        found = experiments.get(key)
        if found is None:
            continue
        mapping = as_mapping(found)
        if mapping is not None and mapping.get("skipped"):
            return None  # {"skipped": reason}: the experiment did not run
        return found
    return None


def report_experiments(report: Any) -> dict[str, Any]:
    """Experiments from ``report.observations.experiments`` (if the observer side stores
    them) overlaid by ``report.experiments`` (the Report's own, which win)."""
    merged: dict[str, Any] = {}
    obs = getattr(report, "observations", None)
    for source in (getattr(obs, "experiments", None), getattr(report, "experiments", None)):
        mapping = as_mapping(source) if source is not None else None
        if mapping:
            merged.update(mapping)
    return merged


def overfit_runs(experiment: Any) -> tuple[list[dict[str, Any]], float | None]:
    """([{"label", "steps", "losses", "is_user"}, ...], target) from an overfit
    experiment. Accepted shapes:

    - what ``nndoctor._experiments`` records: ``{"runs": [{"optimizer": "SGD(...)",
      "is_user": True, "losses": [...]}, ...], ...}`` (the user's optimizer, then a
      retry with Adam);
    - ``{"losses": [...], "steps"?: [...], "target"?: float}`` (also ``loss``/``curve``/
      ``history``; target also ``threshold``/``goal``/``target_loss``);
    - a bare list of losses.
    """
    mapping = as_mapping(experiment)
    if mapping is None:
        losses = float_list(experiment)
        if not losses:
            return [], None
        return [{"label": "loss", "steps": list(map(float, range(len(losses)))), "losses": losses,
                 "is_user": True}], None
    target = as_float(get_first(mapping, "target", "threshold", "goal", "target_loss"))
    runs: list[dict[str, Any]] = []
    source = mapping.get("runs")
    items = [as_mapping(r) for r in source] if isinstance(source, (list, tuple)) else [mapping]
    for i, run in enumerate(items):
        if run is None:
            continue
        losses = float_list(get_first(run, "losses", "loss", "curve", "history"))
        if not losses:
            continue
        steps = float_list(get_first(run, "steps", "iterations"))
        if not steps or len(steps) != len(losses):
            steps = list(map(float, range(len(losses))))
        label = str(get_first(run, "label", "optimizer", "name") or ("loss" if run is mapping else f"run {i}"))
        is_user = bool(run.get("is_user", i == 0))
        runs.append({"label": label, "steps": steps, "losses": losses, "is_user": is_user})
    return runs, target


def overfit_floor(experiment: Any) -> tuple[float, str | None]:
    """(the lowest value the loss can reach on the tiny batch, how it was derived) as the
    overfit probe measured it (``OverfitRun.loss_floor`` / ``loss_floor_reason``); (0.0,
    None) when the experiment does not say or the value is not finite."""
    mapping = as_mapping(experiment)
    if mapping is None:
        return 0.0, None
    floor = as_float(mapping.get("loss_floor"))
    if floor is None or not math.isfinite(floor):
        return 0.0, None
    reason = mapping.get("loss_floor_reason")
    return floor, (str(reason) if reason else None)


def lr_sweep_runs(experiment: Any) -> tuple[list[tuple[float, list[float]]], float | None]:
    """([(lr, loss curve), ...] sorted by lr, chosen lr) from an LR-sweep experiment.

    Accepted shapes (the chosen lr from ``base_lr``/``lr``/``chosen_lr``/``current_lr``):
    - what ``nndoctor._experiments`` records: ``{"base_lr": 0.01, "trials": {"0.1":
      {"lr": 0.001, "losses": [...]}, "1": {...}, "10": {...}}}``;
    - ``{"runs": [{"lr": 0.01, "losses": [...]}, ...]}`` or the bare list of runs
      (a run's curve may also be ``loss``/``curve``, or a single ``final_loss``);
    - ``{"curves": {lr: [...], ...}}`` (or ``results``/``losses`` keyed by lr);
    - ``{"lrs": [...], "losses": [[...], ...]}`` (one curve per lr) or
      ``{"lrs": [...], "losses"/"final_losses": [...]}`` (one number per lr).
    """
    mapping = as_mapping(experiment)
    base = None
    runs_source: Any = experiment
    if mapping is not None:
        base = as_float(get_first(mapping, "base_lr", "chosen_lr", "current_lr", "lr"))
        runs_source = get_first(mapping, "runs", "trials")
    runs: list[tuple[float, list[float]]] = []
    if isinstance(runs_source, Mapping):
        # {"trials": {"0.1": {"lr": ..., "losses": [...]}, ...}}: the keys are labels
        # (LR scales), the lr is inside each run.
        runs_source = list(runs_source.values())
    if runs_source is not None and not isinstance(runs_source, (str, bytes)):
        for item in runs_source:
            run = as_mapping(item)
            if run is None:
                continue
            lr = as_float(get_first(run, "lr", "learning_rate"))
            curve = float_list(get_first(run, "losses", "loss", "curve", "history"))
            if curve is None:
                final = as_float(get_first(run, "final_loss", "final", "loss"))
                curve = [final] if final is not None else None
            if lr is not None and curve:
                runs.append((lr, curve))
    elif mapping is not None:
        keyed = get_first(mapping, "curves", "results")
        if keyed is None and isinstance(mapping.get("losses"), Mapping):
            keyed = mapping["losses"]
        if isinstance(keyed, Mapping):
            for key, value in keyed.items():
                lr = as_float(key)
                curve = float_list(value)
                if curve is None:
                    final = as_float(value)
                    curve = [final] if final is not None else None
                if lr is not None and curve:
                    runs.append((lr, curve))
        else:
            lrs = float_list(get_first(mapping, "lrs", "learning_rates"))
            values = get_first(mapping, "losses", "final_losses", "finals", "curves")
            if lrs and values is not None and not isinstance(values, (str, bytes)):
                values = list(values)
                if len(values) == len(lrs):
                    for lr, value in zip(lrs, values):
                        curve = float_list(value)
                        if curve is None:
                            final = as_float(value)
                            curve = [final] if final is not None else None
                        if curve:
                            runs.append((lr, curve))
    runs.sort(key=lambda r: r[0])
    return runs, base


def lr_range_curve(experiment: Any) -> tuple[list[float], list[float], float | None, float | None] | None:
    """(lrs, losses, suggested lr, chosen lr) from an LR range test. Accepted: a mapping
    with ``lrs`` and ``losses`` (optionally ``suggested_lr``/``suggestion``/``best_lr``
    and ``base_lr``/``current_lr``; ``smoothed`` is read by the figure), as
    ``nndoctor._experiments`` records it, or a list of ``(lr, loss)`` pairs."""
    mapping = as_mapping(experiment)
    if mapping is None:
        try:
            pairs = [(float(a), float(b)) for a, b in experiment]
        except (TypeError, ValueError):
            return None
        if not pairs:
            return None
        return [p[0] for p in pairs], [p[1] for p in pairs], None, None
    lrs = float_list(get_first(mapping, "lrs", "learning_rates", "lr"))
    losses = float_list(get_first(mapping, "losses", "loss"))
    if not lrs or not losses or len(lrs) != len(losses):
        return None
    suggested = as_float(get_first(mapping, "suggested_lr", "suggestion", "best_lr", "lr_suggestion"))
    base = as_float(get_first(mapping, "base_lr", "current_lr", "chosen_lr"))
    return lrs, losses, suggested, base


def random_input_curves(experiment: Any) -> dict[str, dict[str, list[float]]] | None:
    """``{"train": {variant: losses}, "holdout": {variant: losses}}`` from the
    random-input experiment (``nndoctor._experiments`` records ``train_loss`` and
    ``holdout_loss``, each ``{"real"|"noise"|"zeros": [...]}``; holdout may be None)."""
    mapping = as_mapping(experiment)
    if mapping is None:
        return None
    out: dict[str, dict[str, list[float]]] = {}
    for part, keys in (("train", ("train_loss", "train_losses", "losses")),
                       ("holdout", ("holdout_loss", "holdout_losses"))):
        curves = as_mapping(get_first(mapping, *keys))
        if not curves:
            continue
        cleaned = {str(k): v for k, v in ((k, float_list(v)) for k, v in curves.items()) if v}
        if cleaned:
            out[part] = cleaned
    return out if "train" in out else None


# -- the figures --------------------------------------------------------------------
def overfit_figure(
    experiment: Any, *, findings: Iterable[Any] | None = None, loss_fraction: float | None = None
) -> Figure | None:
    """Loss per iteration while overfitting one tiny fixed batch, one line per run (the
    user's optimizer first, drawn thicker; then any retry), log scale when every value
    is positive, with the loss's floor on this batch when it is not 0 (``loss_floor`` of
    the probe's ``OverfitRun``: the targets' entropy for BCE with soft targets, ...) and
    the target loss: the experiment's own, else the one the check judged by
    (``OverfitCurve.fitted_at``): ``loss_fraction`` (the ``overfit-tiny-batch``
    threshold) of the way from the floor to the first loss."""
    if experiment is None:
        return None
    runs, target = overfit_runs(experiment)
    if not runs:
        return None
    floor, floor_reason = overfit_floor(experiment)
    start = runs[0]["losses"][0]
    target_label = f"target {target:g}" if target is not None else ""
    if target is None and loss_fraction is not None and math.isfinite(start) and start > floor:
        target = floor + loss_fraction * (start - floor)
        target_label = (f"target: floor + {loss_fraction:g} x (first loss - floor) = {target:.3g}" if floor
                        else f"target: {loss_fraction:g} x the first loss = {target:.3g}")
    fig, ax = new_figure()
    positive = all(np.all(np.isfinite(r["losses"]) & (np.asarray(r["losses"]) > 0)) for r in runs)
    for run in runs:
        arr = np.asarray(run["losses"], dtype=float)
        finite = np.isfinite(arr)
        label = run["label"] + (" (your optimizer)" if run["is_user"] and len(runs) > 1 else "")
        if finite.any():
            label += f": final {arr[finite][-1]:.3g} after {len(arr) - 1} steps"
        ax.plot(run["steps"], np.where(finite, arr, np.nan), linewidth=2.2 if run["is_user"] else 1.4,
                marker="." if len(arr) <= 60 else None, label=label)
        if not finite.all():
            first_bad = np.asarray(run["steps"])[~finite][0]
            ax.axvline(first_bad, color="red", linestyle=":",
                       label=f"{run['label']}: non-finite from iteration {int(first_bad)}")
    if floor and (floor > 0 or not positive):
        ax.axhline(floor, color="tab:gray", linestyle=":", linewidth=1.2,
                   label=f"the loss's floor on this batch: {floor:.3g}" + (f" ({floor_reason})" if floor_reason else ""))
    if target is not None and (target > 0 or not positive):
        ax.axhline(target, color="tab:green", linestyle="--", linewidth=1.2, label=target_label)
    if positive:
        ax.set_yscale("log")
    ax.set_xlabel("iteration on the same tiny batch")
    ax.set_ylabel("loss" + (" (log scale)" if positive else ""))
    mapping = as_mapping(experiment)
    n_samples = mapping.get("n_samples") if mapping is not None else None
    ax.set_title("Overfit a tiny batch" + (f" ({n_samples} samples)" if n_samples else "")
                 + verdict(findings, EXPERIMENT_CHECKS["overfit"])[0])
    ax.legend(loc="best", fontsize=8)
    return fig


def random_input_figure(experiment: Any, *, findings: Iterable[Any] | None = None) -> Figure | None:
    """Training loss on real inputs against noise and all-zero inputs (solid), and the
    held-out loss of each (dashed): a model that learns as well from noise ignores its
    input."""
    curves = random_input_curves(experiment) if experiment is not None else None
    if curves is None:
        return None
    fig, ax = new_figure()
    colors = {"real": "tab:blue", "noise": "tab:orange", "zeros": "tab:gray"}
    for name, losses in curves["train"].items():
        arr = np.asarray(losses, dtype=float)
        ax.plot(np.arange(len(arr)), np.where(np.isfinite(arr), arr, np.nan), color=colors.get(name),
                linewidth=2.0 if name == "real" else 1.4, label=f"{name} inputs: training loss")
    n_train = max(len(v) for v in curves["train"].values())
    for name, losses in curves.get("holdout", {}).items():
        arr = np.asarray(losses, dtype=float)
        # Held-out points are spread evenly over the training steps (evaluated every N).
        xs = np.linspace(0, max(n_train - 1, 1), len(arr)) if len(arr) > 1 else np.asarray([n_train - 1.0])
        ax.plot(xs, np.where(np.isfinite(arr), arr, np.nan), color=colors.get(name), linestyle="--",
                marker="o", markersize=3, linewidth=1.2, label=f"{name} inputs: held-out loss")
    # Noise inputs can sit decades above the real curve: a log axis keeps both readable.
    groups = [*curves["train"].values(), *curves.get("holdout", {}).values()]
    log = spans_decades(*groups)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss" + (" (log scale)" if log else ""))
    ax.set_title("Real vs random inputs: does the model use its input?"
                 + verdict(findings, EXPERIMENT_CHECKS["random_input"])[0])
    ax.legend(loc="best", fontsize=8)
    return fig


def lr_sweep_figure(experiment: Any, *, findings: Iterable[Any] | None = None) -> Figure | None:
    """LR sweep: one loss curve per learning rate (the chosen one drawn thicker), or the
    final loss against the learning rate when the runs give one number each."""
    if experiment is None:
        return None
    runs, base = lr_sweep_runs(experiment)
    if not runs:
        return None
    fig, ax = new_figure()
    if all(len(curve) == 1 for _, curve in runs):
        lrs = [lr for lr, _ in runs]
        finals = [curve[0] for _, curve in runs]
        ax.plot(lrs, np.where(np.isfinite(finals), finals, np.nan), color="tab:blue", marker="o",
                linewidth=1.5, label="final loss")
        ax.set_xscale("log")
        if base is not None:
            ax.axvline(base, color="tab:red", linestyle="--", label=f"chosen lr {base:g}")
        ax.set_xlabel("learning rate (log scale)")
        ax.set_ylabel("final loss")
    else:
        for lr, curve in runs:
            chosen = base is not None and math.isclose(lr, base, rel_tol=1e-6)
            arr = np.asarray(curve, dtype=float)
            ax.plot(np.arange(len(arr)), np.where(np.isfinite(arr), arr, np.nan),
                    linewidth=2.5 if chosen else 1.3,
                    label=f"lr {lr:g}" + (" (chosen)" if chosen else "")
                    + ("" if np.isfinite(arr).all() else " — diverged"))
        # A diverging trial can end decades above the others.
        log = spans_decades(*(curve for _, curve in runs))
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("iteration")
        ax.set_ylabel("loss" + (" (log scale)" if log else ""))
    ax.set_title("Learning-rate sweep" + verdict(findings, EXPERIMENT_CHECKS["lr_sweep"])[0])
    ax.legend(loc="best", fontsize=8)
    return fig


def lr_range_figure(experiment: Any, *, findings: Iterable[Any] | None = None) -> Figure | None:
    """LR range test: loss against an exponentially growing learning rate (log x), with
    the suggested and the chosen learning rate."""
    curve = lr_range_curve(experiment) if experiment is not None else None
    if curve is None:
        return None
    lrs, losses, suggested, base = curve
    fig, ax = new_figure()
    arr = np.asarray(losses, dtype=float)
    ax.plot(lrs, np.where(np.isfinite(arr), arr, np.nan), color="tab:blue", linewidth=1.2, alpha=0.6,
            label="loss")
    mapping = as_mapping(experiment)
    smoothed = float_list(mapping.get("smoothed")) if mapping is not None else None
    if smoothed and len(smoothed) == len(lrs):
        ax.plot(lrs, np.where(np.isfinite(smoothed), smoothed, np.nan), color="tab:blue", linewidth=2.0,
                label="smoothed loss")
    if suggested is not None and suggested > 0:
        ax.axvline(suggested, color="tab:green", linestyle="--", label=f"suggested lr {suggested:.3g}")
    if base is not None and base > 0:
        ax.axvline(base, color="tab:red", linestyle=":", label=f"chosen lr {base:.3g}")
    # A diverging tail can reach many times the starting loss and flatten the part that
    # matters; clip the view (not the data) at 2x the starting loss, and say so.
    finite = arr[np.isfinite(arr)]
    if finite.size and finite[0] > 0 and finite.max() > 2 * finite[0]:
        ax.set_ylim(top=2 * finite[0])
        ax.text(0.99, 0.98, f"y axis clipped at 2x the first loss (max {finite.max():.3g})",
                transform=ax.transAxes, ha="right", va="top", fontsize=8, color="gray")
    if all(lr > 0 for lr in lrs):
        ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("loss")
    ax.set_title("Learning-rate range test" + verdict(findings, EXPERIMENT_CHECKS["lr_range"])[0])
    ax.legend(loc="best", fontsize=8)
    return fig


def experiment_figures(
    experiments: Mapping[str, Any] | None,
    findings: Iterable[Any] | None = None,
    thresholds: Mapping[str, Mapping[str, float]] | None = None,
) -> dict[str, Figure]:
    """Every experiment figure the data allows, by name, in a stable order; ``thresholds``
    (check id -> {name: value}) are those the checks judged with."""
    findings = list(findings or [])
    fraction = (thresholds or {}).get("overfit-tiny-batch", {}).get("loss_fraction")
    makers = {
        "overfit": lambda data, findings: overfit_figure(data, findings=findings, loss_fraction=fraction),
        "lr_sweep": lr_sweep_figure,
        "lr_range": lr_range_figure,
        "random_input": random_input_figure,
    }
    out: dict[str, Figure] = {}
    for name, make in makers.items():
        fig = make(find_experiment(experiments, name), findings=findings)
        if fig is not None:
            out[name] = fig
    return out
