"""Figures of a Report's observations (matplotlib, no pyplot).

Every function here reads plain data (``Observations``, ``Report.experiments``) and
returns a :class:`matplotlib.figure.Figure` drawn on an Agg canvas, or ``None`` when the
data it needs was not observed. Nothing touches pyplot's global figure manager, so two
Doctors can draw at once and a figure is freed as soon as its last reference goes.

The figures, by name (the keys of :func:`report_figures` and :func:`save_figures`):

``activation_std``
    Activation standard deviation per layer, in forward order, log scale, with the
    healthy 0.5–2 band shaded (the training checklist). ``ax.lines[0]``: the first
    sampled step; ``ax.lines[1]`` (when more than one step was sampled): the last.
``gradient_flow``
    Gradient L2 norm per layer (the parameters of a module pooled:
    ``sqrt(sum of squared parameter norms)``), forward order, log scale.
    ``ax.lines[0]``: the mean over the watched steps; the shaded band: min–max.
``update_ratio``
    ``|update| / |weight|`` per layer (pooled like the gradients), log scale, with the
    1e-3 rule-of-thumb line. ``ax.lines[0]``: the mean over the steps with an update.
``loss``
    The watched loss per step, with the chance level (``ln K`` for a cross-entropy or
    NLL loss over K classes, ``ln 2`` for a binary cross-entropy) and the first
    non-finite loss marked.
``overfit``, ``lr_sweep``, ``lr_range``, ``random_input``
    Experiment curves, when the experiments ran (:func:`overfit_runs`,
    :func:`lr_sweep_runs`, :func:`lr_range_curve`, :func:`random_input_curves` list
    the shapes accepted; ``nndoctor._experiments``'s own shapes first).

Values that a log axis cannot show (zero, negative, NaN, Inf) are never dropped
silently: they become gaps in the line and a marker at the bottom edge (zero) or the
top edge (non-finite) of the plot, with a legend entry.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = [
    "ACTIVATION_STD_BAND",
    "UPDATE_RATIO_TARGET",
    "FIGURE_SIZE",
    "FIGURE_DPI",
    "activation_std_figure",
    "gradient_flow_figure",
    "update_ratio_figure",
    "loss_figure",
    "overfit_figure",
    "lr_sweep_figure",
    "lr_range_figure",
    "random_input_figure",
    "report_figures",
    "save_figures",
    "figure_to_png",
    "figure_to_rgb",
    "chance_level",
    "find_experiment",
]

# The training checklist: "activation standard deviations are typically between 0.5 and
# 2", and "the ratio of update size to weight size should be about 0.001".
ACTIVATION_STD_BAND = (0.5, 2.0)
UPDATE_RATIO_TARGET = 1e-3

# Fixed size and resolution, so a figure's pixel size is known (1000 x 500 px) and the
# PNG in the logdir matches the image in TensorBoard.
FIGURE_SIZE = (10.0, 5.0)
FIGURE_DPI = 100
_MAX_TICK_LABELS = 40
_LABEL_CHARS = 24

# Experiment keys as producers may spell them; the first is the canonical name.
_EXPERIMENT_ALIASES: dict[str, tuple[str, ...]] = {
    "overfit": ("overfit", "overfit_tiny_batch", "overfit-tiny-batch", "tiny_batch"),
    "lr_sweep": ("lr_sweep", "lr-sweep", "lr_compare", "lr_comparison"),
    "lr_range": ("lr_range", "lr-range", "lr_range_test", "lr_finder", "lr_find"),
    "random_input": ("random_input", "random-input", "random_inputs", "random-input-loss"),
}


# -- plain-data helpers (shared with the TensorBoard reporter) ------------------------
def _as_float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _as_mapping(value: Any) -> Mapping[str, Any] | None:
    """Experiments may arrive as dicts, dataclasses or simple objects."""
    if isinstance(value, Mapping):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if hasattr(value, "__dict__") and not isinstance(value, type):
        return vars(value)
    return None


def _float_list(values: Any) -> list[float] | None:
    if values is None or isinstance(values, (str, bytes, Mapping)):
        return None
    try:
        out = [_as_float(v) for v in values]
    except TypeError:
        return None
    if any(v is None for v in out):
        return None
    return out  # type: ignore[return-value]


def _get(mapping: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        if key in mapping and mapping[key] is not None:
            return mapping[key]
    return None


def layer_order(obs: Any, paths: Iterable[str]) -> list[str]:
    """``paths`` sorted in forward order (``obs.forward_order``); paths never seen in
    the forward pass keep their given order, after the others."""
    paths = list(dict.fromkeys(paths))
    rank = {p: i for i, p in enumerate(getattr(obs, "forward_order", None) or [])}
    given = {p: i for i, p in enumerate(paths)}
    return sorted(paths, key=lambda p: (p not in rank, rank.get(p, 0), given[p]))


def layer_label(obs: Any, path: str) -> str:
    """A module path for an axis: ``(model)`` for the root, and the class name added when
    the path ends in an index (``features.3 (Conv2d)``), which alone says nothing."""
    if not path:
        return "(model)"
    if path.rpartition(".")[2].isdigit():
        meta = (getattr(obs, "modules", None) or {}).get(path)
        class_name = getattr(meta, "class_name", None)
        if class_name:
            return f"{path} ({class_name})"
    return path


def _plotted_layer(obs: Any, path: str) -> bool:
    """Layers worth a point in a per-layer figure: leaves that are not the loss. Unknown
    modules (no metadata) are kept rather than hidden."""
    meta = (getattr(obs, "modules", None) or {}).get(path)
    if meta is None:
        return True
    if getattr(meta, "category", None) in ("loss", "container"):
        return False
    return bool(getattr(meta, "is_leaf", True))


def first_call_activations(step: Any) -> dict[str, Any]:
    """One ActivationRecord per module for a step: its first call (a module called
    several times in one forward, e.g. a shared block, is represented by its first
    call)."""
    chosen: dict[str, Any] = {}
    for rec in getattr(step, "activations", None) or []:
        kept = chosen.get(rec.path)
        if kept is None or rec.call < kept.call:
            chosen[rec.path] = rec
    return chosen


def _pooled_norm(values: Iterable[float]) -> float:
    # sqrt(sum of squares): the L2 norm of the concatenated parameters. NaN/Inf
    # propagate on purpose.
    return math.sqrt(sum(v * v for v in values))


def layer_gradient_norms(obs: Any, step: Any) -> dict[str, float]:
    """Per-module gradient L2 norm at one step, from the per-parameter norms."""
    grouped: dict[str, list[float]] = {}
    for name, norm in (getattr(step, "grad_norms", None) or {}).items():
        grouped.setdefault(_module_of(obs, name), []).append(float(norm))
    return {module: _pooled_norm(norms) for module, norms in grouped.items()}


def layer_update_ratios(obs: Any, step: Any) -> dict[str, float]:
    """Per-module ``|update| / |weight|`` at one step (parameters of a module pooled)."""
    updates = getattr(step, "update_norms", None) or {}
    weights = getattr(step, "weight_norms", None) or {}
    grouped: dict[str, tuple[list[float], list[float]]] = {}
    for name, update in updates.items():
        if name not in weights:
            continue
        u, w = grouped.setdefault(_module_of(obs, name), ([], []))
        u.append(float(update))
        w.append(float(weights[name]))
    out: dict[str, float] = {}
    for module, (u, w) in grouped.items():
        weight = _pooled_norm(w)
        update = _pooled_norm(u)
        out[module] = update / weight if weight > 0 else (math.inf if update > 0 else math.nan)
    return out


def parameter_update_ratios(step: Any) -> dict[str, float]:
    """Per-parameter ``|update| / |weight|`` at one step (NaN where the weight is 0 and
    the update too, Inf where only the weight is 0)."""
    updates = getattr(step, "update_norms", None) or {}
    weights = getattr(step, "weight_norms", None) or {}
    out: dict[str, float] = {}
    for name, update in updates.items():
        if name not in weights:
            continue
        u, w = float(update), float(weights[name])
        out[name] = u / w if w > 0 else (math.inf if u > 0 else math.nan)
    return out


def _module_of(obs: Any, param_name: str) -> str:
    module_of = getattr(obs, "module_of", None)
    if callable(module_of):
        return module_of(param_name)
    return param_name.rpartition(".")[0]


def chance_level(obs: Any) -> tuple[float, str] | None:
    """The loss of a uniform random guess, when the loss graph says what the loss is:
    ``ln K`` (= −ln(1/K)) for cross-entropy/NLL over K classes, ``ln 2`` for binary
    cross-entropy. ``None`` when unknown."""
    first = getattr(obs, "first_loss_graph", None)
    graph = first() if callable(first) else None
    if graph is None:
        return None
    kind = getattr(graph, "kind", None)
    n_classes = getattr(graph, "n_classes", None)
    if kind in ("cross_entropy", "nll") and isinstance(n_classes, int) and n_classes >= 2:
        return math.log(n_classes), f"chance level ln({n_classes}) = {math.log(n_classes):.3f}"
    if kind in ("bce", "bce_logits"):
        return math.log(2.0), f"chance level ln(2) = {math.log(2.0):.3f}"
    return None


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
        mapping = _as_mapping(found)
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
        mapping = _as_mapping(source) if source is not None else None
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
    mapping = _as_mapping(experiment)
    if mapping is None:
        losses = _float_list(experiment)
        if not losses:
            return [], None
        return [{"label": "loss", "steps": list(map(float, range(len(losses)))), "losses": losses,
                 "is_user": True}], None
    target = _as_float(_get(mapping, "target", "threshold", "goal", "target_loss"))
    runs: list[dict[str, Any]] = []
    source = mapping.get("runs")
    items = [_as_mapping(r) for r in source] if isinstance(source, (list, tuple)) else [mapping]
    for i, run in enumerate(items):
        if run is None:
            continue
        losses = _float_list(_get(run, "losses", "loss", "curve", "history"))
        if not losses:
            continue
        steps = _float_list(_get(run, "steps", "iterations"))
        if not steps or len(steps) != len(losses):
            steps = list(map(float, range(len(losses))))
        label = str(_get(run, "label", "optimizer", "name") or ("loss" if run is mapping else f"run {i}"))
        is_user = bool(run.get("is_user", i == 0))
        runs.append({"label": label, "steps": steps, "losses": losses, "is_user": is_user})
    return runs, target


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
    mapping = _as_mapping(experiment)
    base = None
    runs_source: Any = experiment
    if mapping is not None:
        base = _as_float(_get(mapping, "base_lr", "chosen_lr", "current_lr", "lr"))
        runs_source = _get(mapping, "runs", "trials")
    runs: list[tuple[float, list[float]]] = []
    if isinstance(runs_source, Mapping):
        # {"trials": {"0.1": {"lr": ..., "losses": [...]}, ...}}: the keys are labels
        # (LR scales), the lr is inside each run.
        runs_source = list(runs_source.values())
    if runs_source is not None and not isinstance(runs_source, (str, bytes)):
        for item in runs_source:
            run = _as_mapping(item)
            if run is None:
                continue
            lr = _as_float(_get(run, "lr", "learning_rate"))
            curve = _float_list(_get(run, "losses", "loss", "curve", "history"))
            if curve is None:
                final = _as_float(_get(run, "final_loss", "final", "loss"))
                curve = [final] if final is not None else None
            if lr is not None and curve:
                runs.append((lr, curve))
    elif mapping is not None:
        keyed = _get(mapping, "curves", "results")
        if keyed is None and isinstance(mapping.get("losses"), Mapping):
            keyed = mapping["losses"]
        if isinstance(keyed, Mapping):
            for key, value in keyed.items():
                lr = _as_float(key)
                curve = _float_list(value)
                if curve is None:
                    final = _as_float(value)
                    curve = [final] if final is not None else None
                if lr is not None and curve:
                    runs.append((lr, curve))
        else:
            lrs = _float_list(_get(mapping, "lrs", "learning_rates"))
            values = _get(mapping, "losses", "final_losses", "finals", "curves")
            if lrs and values is not None and not isinstance(values, (str, bytes)):
                values = list(values)
                if len(values) == len(lrs):
                    for lr, value in zip(lrs, values):
                        curve = _float_list(value)
                        if curve is None:
                            final = _as_float(value)
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
    mapping = _as_mapping(experiment)
    if mapping is None:
        try:
            pairs = [(float(a), float(b)) for a, b in experiment]
        except (TypeError, ValueError):
            return None
        if not pairs:
            return None
        return [p[0] for p in pairs], [p[1] for p in pairs], None, None
    lrs = _float_list(_get(mapping, "lrs", "learning_rates", "lr"))
    losses = _float_list(_get(mapping, "losses", "loss"))
    if not lrs or not losses or len(lrs) != len(losses):
        return None
    suggested = _as_float(_get(mapping, "suggested_lr", "suggestion", "best_lr", "lr_suggestion"))
    base = _as_float(_get(mapping, "base_lr", "current_lr", "chosen_lr"))
    return lrs, losses, suggested, base


def random_input_curves(experiment: Any) -> dict[str, dict[str, list[float]]] | None:
    """``{"train": {variant: losses}, "holdout": {variant: losses}}`` from the
    random-input experiment (``nndoctor._experiments`` records ``train_loss`` and
    ``holdout_loss``, each ``{"real"|"noise"|"zeros": [...]}``; holdout may be None)."""
    mapping = _as_mapping(experiment)
    if mapping is None:
        return None
    out: dict[str, dict[str, list[float]]] = {}
    for part, keys in (("train", ("train_loss", "train_losses", "losses")),
                       ("holdout", ("holdout_loss", "holdout_losses"))):
        curves = _as_mapping(_get(mapping, *keys))
        if not curves:
            continue
        cleaned = {str(k): v for k, v in ((k, _float_list(v)) for k, v in curves.items()) if v}
        if cleaned:
            out[part] = cleaned
    return out if "train" in out else None


# -- drawing helpers -----------------------------------------------------------------
def _new_figure() -> tuple[Figure, Any]:
    fig = Figure(figsize=FIGURE_SIZE, dpi=FIGURE_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.grid(True, which="major", alpha=0.3)
    return fig, ax


def _short_label(name: str) -> str:
    # The end of a module path is the most specific part ("layer4.1.conv2").
    return name if len(name) <= _LABEL_CHARS else "…" + name[-(_LABEL_CHARS - 1):]


def _layer_axis(ax: Any, names: Sequence[str]) -> None:
    n = len(names)
    every = max(1, math.ceil(n / _MAX_TICK_LABELS))
    ticks = list(range(0, n, every))
    ax.set_xticks(ticks)
    ax.set_xticklabels([_short_label(names[i]) for i in ticks], rotation=45, ha="right", fontsize=8)
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_xlabel("layer (forward order)")


def _log_safe(values: Sequence[float]) -> np.ndarray:
    """Values for a log axis: anything not finite and > 0 becomes NaN (a gap)."""
    arr = np.asarray(values, dtype=float)
    return np.where(np.isfinite(arr) & (arr > 0), arr, np.nan)


def _set_log_ylim(ax: Any, *value_groups: Iterable[float]) -> None:
    """Switch the y axis to log scale with limits that show every plottable value and
    at least one decade (autoscaling a flat series on a log axis is singular)."""
    arr = np.asarray([v for group in value_groups for v in group], dtype=float)
    arr = arr[np.isfinite(arr) & (arr > 0)]
    if arr.size == 0:
        low, high = 1e-3, 10.0
    else:
        low, high = float(arr.min()) / 2, float(arr.max()) * 2
        if high / low < 10:
            mid = math.sqrt(low * high)
            low, high = mid / math.sqrt(10), mid * math.sqrt(10)
    ax.set_ylim(low, high)  # first: turns y autoscaling off, so the switch to log cannot
    ax.set_yscale("log")    # autoscale a flat series into singular limits


def _mark_unplottable(ax: Any, xs: Sequence[float], values: Sequence[float],
                      zero_label: str = "zero (off the log scale)") -> None:
    """Markers at the plot's edges for values a log axis cannot show: zero or negative
    at the bottom edge, NaN/Inf at the top edge."""
    arr = np.asarray(values, dtype=float)
    xs_arr = np.asarray(xs, dtype=float)
    nonfinite = ~np.isfinite(arr)
    nonpositive = np.isfinite(arr) & (arr <= 0)
    if not nonfinite.any() and not nonpositive.any():
        return
    low, high = ax.get_ylim()
    if nonpositive.any():
        ax.scatter(xs_arr[nonpositive], np.full(nonpositive.sum(), low), marker="v", color="tab:purple",
                   s=60, zorder=5, clip_on=False, label=zero_label)
    if nonfinite.any():
        ax.scatter(xs_arr[nonfinite], np.full(nonfinite.sum(), high), marker="X", color="red",
                   s=70, zorder=5, clip_on=False, label="NaN / Inf")
    ax.set_ylim(low, high)


def _per_layer_series(
    names: Sequence[str], per_step: Sequence[Mapping[str, float]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, min, max) per layer over the steps where the layer has a value. Non-finite
    values propagate (NaN/Inf in any step makes the layer's mean non-finite)."""
    means, lows, highs = [], [], []
    for name in names:
        vals = np.asarray([s[name] for s in per_step if name in s], dtype=float)
        if vals.size == 0:
            means.append(np.nan), lows.append(np.nan), highs.append(np.nan)
            continue
        with np.errstate(invalid="ignore"):
            means.append(float(np.mean(vals)))
        finite = vals[np.isfinite(vals)]
        lows.append(float(finite.min()) if finite.size else np.nan)
        highs.append(float(finite.max()) if finite.size else np.nan)
    return np.asarray(means), np.asarray(lows), np.asarray(highs)


# -- the figures ---------------------------------------------------------------------
def activation_std_figure(obs: Any) -> Figure | None:
    """Activation std per layer (forward order) on the first and last sampled steps,
    log scale, with the healthy 0.5–2 band shaded."""
    if obs is None:
        return None
    sampled = [s for s in getattr(obs, "steps", []) or [] if getattr(s, "activations", None)]
    if not sampled:
        return None
    per_step = [first_call_activations(s) for s in sampled]
    paths = layer_order(obs, [p for acts in per_step for p in acts if _plotted_layer(obs, p)])
    if not paths:
        return None
    fig, ax = _new_figure()
    xs = np.arange(len(paths), dtype=float)
    shown = [sampled[0]] + ([sampled[-1]] if len(sampled) > 1 else [])
    shown_acts = [per_step[0]] + ([per_step[-1]] if len(sampled) > 1 else [])
    styles = [dict(color="tab:blue", marker="o"), dict(color="tab:orange", marker="s", alpha=0.85)]
    all_values: list[float] = []
    for step, acts, style in zip(shown, shown_acts, styles):
        values = [float(acts[p].std) if p in acts else math.nan for p in paths]
        all_values.extend(values)
        ax.plot(xs, _log_safe(values), linewidth=1.5, label=f"step {step.step}", **style)
    low, high = ACTIVATION_STD_BAND
    ax.axhspan(low, high, color="tab:green", alpha=0.15, label=f"healthy band {low:g}–{high:g}")
    _set_log_ylim(ax, all_values, ACTIVATION_STD_BAND)
    _mark_unplottable(ax, list(xs) * len(shown), all_values)
    _layer_axis(ax, [layer_label(obs, p) for p in paths])
    ax.set_ylabel("activation std (log scale)")
    ax.set_title("Activation standard deviation per layer")
    ax.legend(loc="best", fontsize=8)
    return fig


def gradient_flow_figure(obs: Any) -> Figure | None:
    """Per-layer gradient L2 norm (forward order, log scale): mean over the watched
    steps, min–max band; layers whose parameters got no gradient are marked."""
    if obs is None:
        return None
    steps = [s for s in getattr(obs, "steps", []) or [] if getattr(s, "grad_norms", None)]
    missing = {_module_of(obs, name) for s in getattr(obs, "steps", []) or []
               for name in (getattr(s, "grads_missing", None) or [])}
    if not steps and not missing:
        return None
    per_step = [layer_gradient_norms(obs, s) for s in steps]
    seen = [m for layer in per_step for m in layer]
    paths = layer_order(obs, [*seen, *sorted(missing - set(seen))])
    fig, ax = _new_figure()
    xs = np.arange(len(paths), dtype=float)
    mean, low, high = _per_layer_series(paths, per_step)
    ax.plot(xs, _log_safe(mean), color="tab:blue", marker="o", linewidth=1.5,
            label=f"mean over {len(steps)} step{'s' if len(steps) != 1 else ''}")
    if len(steps) > 1:
        ax.fill_between(xs, _log_safe(low), _log_safe(high), color="tab:blue", alpha=0.15, label="min–max")
    _set_log_ylim(ax, mean, low, high)
    # A layer whose parameters never got a gradient shows at the bottom edge, like a
    # zero norm; a NaN/Inf gradient at the top edge.
    no_gradient = [not any(p in layer for layer in per_step) for p in paths]
    _mark_unplottable(ax, xs, [0.0 if empty else m for empty, m in zip(no_gradient, mean)],
                      zero_label="zero / no gradient")
    _layer_axis(ax, [layer_label(obs, p) for p in paths])
    ax.set_ylabel("gradient L2 norm (log scale)")
    ax.set_title("Gradient flow: gradient norm per layer")
    ax.legend(loc="best", fontsize=8)
    return fig


def update_ratio_figure(obs: Any) -> Figure | None:
    """Per-layer ``|update| / |weight|`` (forward order, log scale): mean over the steps
    with an update, min–max band, and the 1e-3 line."""
    if obs is None:
        return None
    steps = [s for s in getattr(obs, "steps", []) or [] if getattr(s, "update_norms", None)]
    per_step = [r for r in (layer_update_ratios(obs, s) for s in steps) if r]
    if not per_step:
        return None
    paths = layer_order(obs, [m for ratios in per_step for m in ratios])
    fig, ax = _new_figure()
    xs = np.arange(len(paths), dtype=float)
    mean, low, high = _per_layer_series(paths, per_step)
    ax.plot(xs, _log_safe(mean), color="tab:blue", marker="o", linewidth=1.5,
            label=f"mean over {len(per_step)} update{'s' if len(per_step) != 1 else ''}")
    if len(per_step) > 1:
        ax.fill_between(xs, _log_safe(low), _log_safe(high), color="tab:blue", alpha=0.15, label="min–max")
    ax.axhline(UPDATE_RATIO_TARGET, color="tab:green", linestyle="--", linewidth=1.5,
               label=f"rule of thumb ≈ {UPDATE_RATIO_TARGET:g}")
    _set_log_ylim(ax, mean, low, high, [UPDATE_RATIO_TARGET])
    _mark_unplottable(ax, xs, list(mean))
    _layer_axis(ax, [layer_label(obs, p) for p in paths])
    ax.set_ylabel("|update| / |weight| (log scale)")
    ax.set_title("Update-to-weight ratio per layer")
    ax.legend(loc="best", fontsize=8)
    return fig


def loss_figure(obs: Any) -> Figure | None:
    """The watched loss per step, with the chance level and the first non-finite loss."""
    if obs is None:
        return None
    points = [(s.step, float(s.loss)) for s in getattr(obs, "steps", []) or [] if s.loss is not None]
    if not points:
        return None
    fig, ax = _new_figure()
    steps = np.asarray([p[0] for p in points], dtype=float)
    losses = np.asarray([p[1] for p in points], dtype=float)
    finite = np.isfinite(losses)
    ax.plot(steps, np.where(finite, losses, np.nan), color="tab:blue", marker="o", markersize=3,
            linewidth=1.5, label="loss")
    chance = chance_level(obs)
    if chance is not None:
        ax.axhline(chance[0], color="tab:red", linestyle="--", linewidth=1.2, label=chance[1])
    if not finite.all():
        first_bad = steps[~finite][0]
        ax.axvline(first_bad, color="red", linestyle=":", linewidth=1.5,
                   label=f"first non-finite loss (step {int(first_bad)})")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Training loss over the watched steps")
    ax.legend(loc="best", fontsize=8)
    return fig


def overfit_figure(experiment: Any) -> Figure | None:
    """Loss per iteration while overfitting one tiny fixed batch, one line per run (the
    user's optimizer first, drawn thicker; then any retry), log scale when every value
    is positive, with the target loss when the experiment gives one."""
    if experiment is None:
        return None
    runs, target = overfit_runs(experiment)
    if not runs:
        return None
    fig, ax = _new_figure()
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
    if target is not None and (target > 0 or not positive):
        ax.axhline(target, color="tab:green", linestyle="--", linewidth=1.2, label=f"target {target:g}")
    if positive:
        ax.set_yscale("log")
    ax.set_xlabel("iteration on the same tiny batch")
    ax.set_ylabel("loss" + (" (log scale)" if positive else ""))
    mapping = _as_mapping(experiment)
    n_samples = mapping.get("n_samples") if mapping is not None else None
    ax.set_title("Overfit a tiny batch" + (f" ({n_samples} samples)" if n_samples else ""))
    ax.legend(loc="best", fontsize=8)
    return fig


def random_input_figure(experiment: Any) -> Figure | None:
    """Training loss on real inputs against noise and all-zero inputs (solid), and the
    held-out loss of each (dashed): a model that learns as well from noise ignores its
    input."""
    curves = random_input_curves(experiment) if experiment is not None else None
    if curves is None:
        return None
    fig, ax = _new_figure()
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
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_title("Real vs random inputs: does the model use its input?")
    ax.legend(loc="best", fontsize=8)
    return fig


def lr_sweep_figure(experiment: Any) -> Figure | None:
    """LR sweep: one loss curve per learning rate (the chosen one drawn thicker), or the
    final loss against the learning rate when the runs give one number each."""
    if experiment is None:
        return None
    runs, base = lr_sweep_runs(experiment)
    if not runs:
        return None
    fig, ax = _new_figure()
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
        ax.set_xlabel("iteration")
        ax.set_ylabel("loss")
    ax.set_title("Learning-rate sweep")
    ax.legend(loc="best", fontsize=8)
    return fig


def lr_range_figure(experiment: Any) -> Figure | None:
    """LR range test: loss against an exponentially growing learning rate (log x), with
    the suggested and the chosen learning rate."""
    curve = lr_range_curve(experiment) if experiment is not None else None
    if curve is None:
        return None
    lrs, losses, suggested, base = curve
    fig, ax = _new_figure()
    arr = np.asarray(losses, dtype=float)
    ax.plot(lrs, np.where(np.isfinite(arr), arr, np.nan), color="tab:blue", linewidth=1.2, alpha=0.6,
            label="loss")
    mapping = _as_mapping(experiment)
    smoothed = _float_list(mapping.get("smoothed")) if mapping is not None else None
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
    ax.set_title("Learning-rate range test")
    ax.legend(loc="best", fontsize=8)
    return fig


# -- whole report --------------------------------------------------------------------
def report_figures(report: Any) -> dict[str, Figure]:
    """Every figure the report has data for, by name, in a stable order. ``report`` is
    a Report, or a plain mapping of experiments (``report.experiments``)."""
    if isinstance(report, Mapping):
        obs, experiments = None, dict(report)
    else:
        obs, experiments = getattr(report, "observations", None), report_experiments(report)
    makers = {
        "loss": lambda: loss_figure(obs),
        "activation_std": lambda: activation_std_figure(obs),
        "gradient_flow": lambda: gradient_flow_figure(obs),
        "update_ratio": lambda: update_ratio_figure(obs),
        "overfit": lambda: overfit_figure(find_experiment(experiments, "overfit")),
        "lr_sweep": lambda: lr_sweep_figure(find_experiment(experiments, "lr_sweep")),
        "lr_range": lambda: lr_range_figure(find_experiment(experiments, "lr_range")),
        "random_input": lambda: random_input_figure(find_experiment(experiments, "random_input")),
    }
    figures: dict[str, Figure] = {}
    for name, make in makers.items():
        fig = make()
        if fig is not None:
            figures[name] = fig
    return figures


def figure_to_rgb(fig: Figure) -> np.ndarray:
    """The rendered figure as an ``(H, W, 3)`` uint8 array (white background)."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def figure_to_png(fig: Figure, path: "str | os.PathLike[str]") -> Path:
    """Save ``fig`` as a PNG at its own size and resolution; returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    fig.savefig(target, format="png", dpi=fig.dpi, facecolor="white")
    return target


def save_figures(report: Any, directory: "str | os.PathLike[str]") -> dict[str, str]:
    """Write every figure the report (or a mapping of experiments) has data for as
    ``<directory>/nndoctor_<name>.png``; returns ``{name: path}``."""
    paths: dict[str, str] = {}
    for name, fig in report_figures(report).items():
        paths[name] = str(figure_to_png(fig, Path(directory) / f"nndoctor_{name}.png"))
    return paths
