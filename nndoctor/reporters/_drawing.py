"""Drawing helpers shared by the figure modules (matplotlib, no pyplot).

Plain-data readers (experiments may arrive as records, dicts or simple objects), one
figure size for every figure (so a PNG in the logdir matches the image in TensorBoard),
log-axis helpers that never drop a value silently, the thresholds the checks used, and
the verdict a figure states in its title.
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

# Fixed size and resolution, so a figure's pixel size is known (1000 x 500 px) and the
# PNG in the logdir matches the image in TensorBoard.
FIGURE_SIZE = (10.0, 5.0)
FIGURE_DPI = 100
_MAX_TICK_LABELS = 40
_LABEL_CHARS = 24
_SEVERITY_RANK = {"error": 0, "warning": 1, "info": 2}


# -- plain-data helpers ----------------------------------------------------------------
def as_float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def as_mapping(value: Any) -> Mapping[str, Any] | None:
    """Experiments may arrive as dicts, dataclasses or simple objects."""
    if isinstance(value, Mapping):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if hasattr(value, "__dict__") and not isinstance(value, type):
        return vars(value)
    return None


def float_list(values: Any) -> list[float] | None:
    if values is None or isinstance(values, (str, bytes, Mapping)):
        return None
    try:
        out = [as_float(v) for v in values]
    except TypeError:
        return None
    if any(v is None for v in out):
        return None
    return out  # type: ignore[return-value]


def get_first(mapping: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        if key in mapping and mapping[key] is not None:
            return mapping[key]
    return None



# -- drawing helpers -------------------------------------------------------------------
def new_figure() -> tuple[Figure, Any]:
    fig = Figure(figsize=FIGURE_SIZE, dpi=FIGURE_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.grid(True, which="major", alpha=0.3)
    return fig, ax


def short_label(name: str) -> str:
    # The end of a module path is the most specific part ("layer4.1.conv2").
    return name if len(name) <= _LABEL_CHARS else "…" + name[-(_LABEL_CHARS - 1):]


def layer_axis(ax: Any, names: Sequence[str]) -> None:
    n = len(names)
    every = max(1, math.ceil(n / _MAX_TICK_LABELS))
    ticks = list(range(0, n, every))
    ax.set_xticks(ticks)
    ax.set_xticklabels([short_label(names[i]) for i in ticks], rotation=45, ha="right", fontsize=8)
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_xlabel("layer (forward order)")


def log_safe(values: Sequence[float]) -> np.ndarray:
    """Values for a log axis: anything not finite and > 0 becomes NaN (a gap)."""
    arr = np.asarray(values, dtype=float)
    return np.where(np.isfinite(arr) & (arr > 0), arr, np.nan)


def set_log_ylim(ax: Any, *value_groups: Iterable[float]) -> None:
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


def mark_unplottable(ax: Any, xs: Sequence[float], values: Sequence[float],
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


def per_layer_series(
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


# -- what the checks used and said -----------------------------------------------------
def check_thresholds(source: Any, check_id: str) -> dict[str, float]:
    """The thresholds ``check_id`` judged with: those recorded on the report or its
    observations (``check_thresholds``: ``{check id: {name: value}}``, a user's override
    included), else the check's documented defaults."""
    for holder in (source, getattr(source, "observations", None)):
        recorded = getattr(holder, "check_thresholds", None)
        if isinstance(recorded, Mapping) and isinstance(recorded.get(check_id), Mapping):
            return {k: float(v) for k, v in recorded[check_id].items()}
    from ..checks._registry import REGISTRY  # pure Python: the catalogue of defaults

    cls = REGISTRY.get(check_id)
    return {t.name: float(t.default) for t in getattr(cls, "thresholds", ())} if cls is not None else {}


def verdict(findings: Iterable[Any] | None, check_ids: Sequence[str]) -> tuple[str, list[str]]:
    """(" — <check>: <severity>, N findings" for the worst finding of ``check_ids``, the
    layers those findings name), or ("", []) when they found nothing."""
    found = [f for f in findings or () if getattr(f, "check", None) in check_ids]
    if not found:
        return "", []
    def severity_of(f: Any) -> str:
        return str(getattr(f.severity, "value", f.severity))

    worst = min(found, key=lambda f: _SEVERITY_RANK.get(severity_of(f), 3))
    severity = severity_of(worst)
    count = f", {len(found)} findings" if len(found) > 1 else ""
    where = list(dict.fromkeys(str(f.where) for f in found if getattr(f, "where", None) is not None))
    return f" — {worst.check}: {severity}{count}", where


def mark_flagged_layers(ax: Any, paths: Sequence[str], flagged: Sequence[str]) -> None:
    """A red band behind each flagged layer of a per-layer axis, its tick label in red."""
    shown = False
    for i, path in enumerate(paths):
        if path in flagged:
            ax.axvspan(i - 0.5, i + 0.5, color="tab:red", alpha=0.12, zorder=0,
                       label=None if shown else "flagged layer")
            shown = True
    labels = ax.get_xticklabels()
    ticks = list(ax.get_xticks())
    for label, tick in zip(labels, ticks):
        index = int(round(tick))
        if 0 <= index < len(paths) and paths[index] in flagged:
            label.set_color("tab:red")


def spans_decades(*groups: Iterable[float], decades: float = 1.0) -> bool:
    """True when every finite value is positive and they span at least ``decades``."""
    values = [float(v) for g in groups for v in g if v is not None and math.isfinite(float(v))]
    if not values or min(values) <= 0:
        return False
    return math.log10(max(values) / min(values)) >= decades
