"""Figures of a Report's observations (matplotlib, no pyplot).

Every function here reads plain data (``Observations``, ``Report.experiments``) and
returns a :class:`matplotlib.figure.Figure` drawn on an Agg canvas, or ``None`` when the
data it needs was not observed. Nothing touches pyplot's global figure manager, so two
Doctors can draw at once and a figure is freed as soon as its last reference goes.

The figures, by name (the keys of :func:`report_figures` and :func:`save_figures`):

``activation_std``
    Activation standard deviation per layer, in forward order, log scale, with the
    healthy band of ``activation-std`` shaded (its ``low``/``high`` thresholds as the
    check used them: 0.5–2 by default, the training checklist). ``ax.lines[0]``: the first
    sampled step; ``ax.lines[1]`` (when more than one step was sampled): the last.
``gradient_flow``
    Gradient L2 norm per layer (the parameters of a module pooled:
    ``sqrt(sum of squared parameter norms)``), forward order, log scale.
    ``ax.lines[0]``: the mean over the watched steps; the shaded band: min–max.
``update_ratio``
    ``|update| / |weight|`` per layer (pooled like the gradients), log scale, with the
    1e-3 rule-of-thumb line and the ``update-ratio`` check's ``low``/``high`` thresholds. ``ax.lines[0]``: the mean over the steps with an update.
``loss``
    The watched loss per step, with the chance level (``ln K`` for a cross-entropy or
    NLL loss over K classes, ``ln 2`` for a binary cross-entropy) and the first
    non-finite loss marked.
``overfit``, ``lr_sweep``, ``lr_range``, ``random_input``
    Experiment curves, when the experiments ran, drawn by
    :mod:`nndoctor.reporters.experiment_figures` (the one module for them).

Thresholds drawn are those the checks judged with: ``check_thresholds`` recorded on the
report or its observations (a user's override included), else the checks' defaults.
Where the report holds a finding of a figure's check, the title states the verdict and
the per-layer figures mark the flagged layers.

Values that a log axis cannot show (zero, negative, NaN, Inf) are never dropped
silently: they become gaps in the line and a marker at the bottom edge (zero) or the
top edge (non-finite) of the plot, with a legend entry.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
from matplotlib.figure import Figure

from ._drawing import (
    FIGURE_DPI,
    FIGURE_SIZE,
    as_float as _as_float,  # noqa: F401  (the TensorBoard reporter reads plain data with these)
    as_mapping as _as_mapping,  # noqa: F401
    check_thresholds,
    figure_to_png,
    figure_to_rgb,
    layer_axis,
    log_safe,
    mark_flagged_layers,
    mark_unplottable,
    new_figure,
    per_layer_series,
    set_log_ylim,
    verdict,
)
from .experiment_figures import (  # noqa: F401  (re-exported: one import for every figure)
    experiment_figures,
    find_experiment,
    lr_range_curve,
    lr_range_figure,
    lr_sweep_figure,
    lr_sweep_runs,
    overfit_figure,
    overfit_floor,
    overfit_runs,
    random_input_curves,
    random_input_figure,
    report_experiments,
)

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
    "check_thresholds",
]

# The defaults of `activation-std` (low, high) and the checklist's rule of thumb for
# `update-ratio` ("the ratio of update size to weight size should be about 0.001"); the
# figures draw the thresholds the report's checks used (`check_thresholds`).
ACTIVATION_STD_BAND = (0.5, 2.0)
UPDATE_RATIO_TARGET = 1e-3


# -- plain-data readers of the observations (shared with the TensorBoard reporter) ------
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


# -- the figures of the watched steps ----------------------------------------------------
def activation_std_figure(
    obs: Any, *, band: tuple[float, float] | None = None, findings: Iterable[Any] | None = None
) -> Figure | None:
    """Activation std per layer (forward order) on the first and last sampled steps,
    log scale, with the healthy band shaded: ``band`` (``activation-std``'s low/high as
    the check used them; by default those recorded on ``obs``, else 0.5–2), and the layers
    flagged by ``findings`` of ``activation-std`` marked."""
    if obs is None:
        return None
    sampled = [s for s in getattr(obs, "steps", []) or [] if getattr(s, "activations", None)]
    if not sampled:
        return None
    per_step = [first_call_activations(s) for s in sampled]
    paths = layer_order(obs, [p for acts in per_step for p in acts if _plotted_layer(obs, p)])
    if not paths:
        return None
    fig, ax = new_figure()
    xs = np.arange(len(paths), dtype=float)
    shown = [sampled[0]] + ([sampled[-1]] if len(sampled) > 1 else [])
    shown_acts = [per_step[0]] + ([per_step[-1]] if len(sampled) > 1 else [])
    styles = [dict(color="tab:blue", marker="o"), dict(color="tab:orange", marker="s", alpha=0.85)]
    all_values: list[float] = []
    for step, acts, style in zip(shown, shown_acts, styles):
        values = [float(acts[p].std) if p in acts else math.nan for p in paths]
        all_values.extend(values)
        ax.plot(xs, log_safe(values), linewidth=1.5, label=f"step {step.step}", **style)
    if band is None:
        values = check_thresholds(obs, "activation-std")
        band = (values.get("low", ACTIVATION_STD_BAND[0]), values.get("high", ACTIVATION_STD_BAND[1]))
    low, high = band
    ax.axhspan(low, high, color="tab:green", alpha=0.15, label=f"healthy band {low:g}–{high:g}")
    set_log_ylim(ax, all_values, band)
    mark_unplottable(ax, list(xs) * len(shown), all_values)
    layer_axis(ax, [layer_label(obs, p) for p in paths])
    suffix, flagged = verdict(findings, ("activation-std",))
    mark_flagged_layers(ax, paths, flagged)
    ax.set_ylabel("activation std (log scale)")
    ax.set_title("Activation standard deviation per layer" + suffix)
    ax.legend(loc="best", fontsize=8)
    return fig


def gradient_flow_figure(obs: Any, *, findings: Iterable[Any] | None = None) -> Figure | None:
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
    fig, ax = new_figure()
    xs = np.arange(len(paths), dtype=float)
    mean, low, high = per_layer_series(paths, per_step)
    ax.plot(xs, log_safe(mean), color="tab:blue", marker="o", linewidth=1.5,
            label=f"mean over {len(steps)} step{'s' if len(steps) != 1 else ''}")
    if len(steps) > 1:
        ax.fill_between(xs, log_safe(low), log_safe(high), color="tab:blue", alpha=0.15, label="min–max")
    set_log_ylim(ax, mean, low, high)
    # A layer whose parameters never got a gradient shows at the bottom edge, like a
    # zero norm; a NaN/Inf gradient at the top edge.
    no_gradient = [not any(p in layer for layer in per_step) for p in paths]
    mark_unplottable(ax, xs, [0.0 if empty else m for empty, m in zip(no_gradient, mean)],
                      zero_label="zero / no gradient")
    layer_axis(ax, [layer_label(obs, p) for p in paths])
    suffix, flagged = verdict(findings, ("vanishing-gradient", "exploding-gradient", "frozen-layer"))
    mark_flagged_layers(ax, paths, flagged)
    ax.set_ylabel("gradient L2 norm (log scale)")
    ax.set_title("Gradient flow: gradient norm per layer" + suffix)
    ax.legend(loc="best", fontsize=8)
    return fig


def update_ratio_figure(
    obs: Any, *, limits: tuple[float, float] | None = None, findings: Iterable[Any] | None = None
) -> Figure | None:
    """Per-layer ``|update| / |weight|`` (forward order, log scale): mean over the steps
    with an update, min–max band, the checklist's 1e-3 rule of thumb, and the
    ``update-ratio`` check's ``low``/``high`` thresholds (``limits``; by default those
    recorded on ``obs``, else the check's defaults)."""
    if obs is None:
        return None
    steps = [s for s in getattr(obs, "steps", []) or [] if getattr(s, "update_norms", None)]
    per_step = [r for r in (layer_update_ratios(obs, s) for s in steps) if r]
    if not per_step:
        return None
    paths = layer_order(obs, [m for ratios in per_step for m in ratios])
    fig, ax = new_figure()
    xs = np.arange(len(paths), dtype=float)
    mean, low, high = per_layer_series(paths, per_step)
    ax.plot(xs, log_safe(mean), color="tab:blue", marker="o", linewidth=1.5,
            label=f"mean over {len(per_step)} update{'s' if len(per_step) != 1 else ''}")
    if len(per_step) > 1:
        ax.fill_between(xs, log_safe(low), log_safe(high), color="tab:blue", alpha=0.15, label="min–max")
    ax.axhline(UPDATE_RATIO_TARGET, color="tab:green", linestyle="--", linewidth=1.5,
               label=f"rule of thumb ≈ {UPDATE_RATIO_TARGET:g}")
    if limits is None:
        values = check_thresholds(obs, "update-ratio")
        limits = (values["low"], values["high"]) if "low" in values and "high" in values else None
    shown = [mean, low, high, [UPDATE_RATIO_TARGET]]
    if limits is not None:
        for value, side in zip(limits, ("below", "above")):
            ax.axhline(value, color="tab:red", linestyle=":", linewidth=1.2,
                       label=f"update-ratio warns {side} {value:g}")
        # keep the thresholds in view only when the data comes within a decade of them
        finite = [v for v in mean if math.isfinite(v) and v > 0]
        if finite:
            shown.append([v for v in limits if min(finite) / 10 <= v <= max(finite) * 10])
    set_log_ylim(ax, *shown)
    mark_unplottable(ax, xs, list(mean))
    layer_axis(ax, [layer_label(obs, p) for p in paths])
    suffix, flagged = verdict(findings, ("update-ratio",))
    mark_flagged_layers(ax, paths, flagged)
    ax.set_ylabel("|update| / |weight| (log scale)")
    ax.set_title("Update-to-weight ratio per layer" + suffix)
    ax.legend(loc="best", fontsize=8)
    return fig


def loss_figure(obs: Any, *, findings: Iterable[Any] | None = None) -> Figure | None:
    """The watched loss per step, with the chance level and the first non-finite loss."""
    if obs is None:
        return None
    points = [(s.step, float(s.loss)) for s in getattr(obs, "steps", []) or [] if s.loss is not None]
    if not points:
        return None
    fig, ax = new_figure()
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
    ax.set_title("Training loss over the watched steps"
                 + verdict(findings, ("loss-not-decreasing", "chance-level-loss", "nan-trace"))[0])
    ax.legend(loc="best", fontsize=8)
    return fig


# -- whole report --------------------------------------------------------------------
def report_figures(report: Any) -> dict[str, Figure]:
    """Every figure the report has data for, by name, in a stable order. ``report`` is
    a Report, or a plain mapping of experiments (``report.experiments``)."""
    if isinstance(report, Mapping):
        obs, experiments, findings = None, dict(report), []
    else:
        obs, experiments = getattr(report, "observations", None), report_experiments(report)
        findings = list(getattr(report, "findings", None) or [])
    source = report if not isinstance(report, Mapping) else None
    makers = {
        "loss": lambda: loss_figure(obs, findings=findings),
        "activation_std": lambda: activation_std_figure(
            obs, band=_band(source, "activation-std", ACTIVATION_STD_BAND), findings=findings),
        "gradient_flow": lambda: gradient_flow_figure(obs, findings=findings),
        "update_ratio": lambda: update_ratio_figure(
            obs, limits=_band(source, "update-ratio", None), findings=findings),
    }
    figures: dict[str, Figure] = {}
    for name, make in makers.items():
        fig = make()
        if fig is not None:
            figures[name] = fig
    used = {"overfit-tiny-batch": check_thresholds(source if source is not None else {}, "overfit-tiny-batch")}
    figures.update(experiment_figures(experiments, findings, used))
    return figures


def _band(source: Any, check_id: str, default: tuple[float, float] | None) -> tuple[float, float] | None:
    """(low, high) of ``check_id`` as the report's checks used them."""
    if source is None:
        return default
    values = check_thresholds(source, check_id)
    if "low" in values and "high" in values:
        return values["low"], values["high"]
    return default


def save_figures(report: Any, directory: "str | os.PathLike[str]") -> dict[str, str]:
    """Write every figure the report (or a mapping of experiments) has data for as
    ``<directory>/nndoctor_<name>.png``; returns ``{name: path}``."""
    paths: dict[str, str] = {}
    for name, fig in report_figures(report).items():
        paths[name] = str(figure_to_png(fig, Path(directory) / f"nndoctor_{name}.png"))
    return paths
