"""PNG plots of the checkup experiments (overfit curve, LR sweep and LR range test).

Reads only ``report.experiments`` (plain data). Uses ``matplotlib.figure.Figure`` with
the Agg canvas directly, never ``pyplot``: no global figure registry, no backend switch,
nothing left open in the user's session.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["overfit_figure", "lr_figure", "random_input_figure", "save_figures", "FIGSIZE", "DPI"]

FIGSIZE = (8.0, 4.5)
DPI = 100  # -> 800 x 450 pixels


def _new_figure(ncols: int = 1) -> tuple[Figure, list[Any]]:
    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _finite(values: list[float]) -> list[float]:
    return [v if isinstance(v, (int, float)) and math.isfinite(v) else float("nan") for v in values]


def _positive(values: list[float]) -> bool:
    return all(v > 0 for v in values if math.isfinite(v))


def overfit_figure(data: dict[str, Any]) -> Figure:
    """Loss (and accuracy) per step of each overfit run."""
    fig, (ax,) = _new_figure()
    acc_ax = None
    for run in data.get("runs") or []:
        losses = _finite(run.get("losses") or [])
        line = ax.plot(range(len(losses)), losses, label=f"loss, {run.get('optimizer')}")[0]
        if run.get("accuracies"):
            acc_ax = acc_ax or ax.twinx()
            acc_ax.plot(
                range(len(run["accuracies"])), run["accuracies"], "--",
                color=line.get_color(), label=f"accuracy, {run.get('optimizer')}",
            )
    if all(_positive(_finite(r.get("losses") or [])) for r in data.get("runs") or []):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss on the tiny batch")
    if acc_ax is not None:
        acc_ax.set_ylabel("accuracy")
        acc_ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"Overfit {data.get('n_samples')} samples ({data.get('task')})")
    handles, labels = ax.get_legend_handles_labels()
    if acc_ax is not None:  # one legend for both axes
        more_handles, more_labels = acc_ax.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    ax.legend(handles, labels, loc="center right", fontsize=8)
    fig.tight_layout()
    return fig


def lr_figure(sweep: dict[str, Any] | None, rng: dict[str, Any] | None) -> Figure:
    """Left: the x0.1 / x1 / x10 trials. Right: the range test with its estimators."""
    fig, (left, right) = _new_figure(2)
    if sweep and not sweep.get("skipped"):
        for label, trial in (sweep.get("trials") or {}).items():
            losses = _finite(trial.get("losses") or [])
            left.plot(range(len(losses)), losses, label=f"x{label} (lr {trial.get('lr'):.2g})")
        left.set_xlabel("step")
        left.set_ylabel("loss")
        left.set_title(f"LR sweep, {sweep.get('optimizer')}")
        left.legend(fontsize=8)
    if rng and not rng.get("skipped") and rng.get("lrs"):
        right.plot(rng["lrs"], _finite(rng["losses"]), alpha=0.35, label="loss")
        right.plot(rng["lrs"], _finite(rng["smoothed"]), label="smoothed")
        right.set_xscale("log")
        smoothed = [v for v in _finite(rng["smoothed"]) if math.isfinite(v)]
        if smoothed:  # the last raw losses can be huge: keep the interesting range in view
            raw = [v for v in _finite(rng["losses"]) if math.isfinite(v)]
            low, high = min(smoothed + raw), max(smoothed[0], min(smoothed) * 4.0)
            right.set_ylim(low - 0.05 * (high - low), high + 0.25 * (high - low))
        styles = {"steep": ":", "valley": "--", "minimum/10": "-."}
        for name, lr in (rng.get("suggestions") or {}).items():
            right.axvline(lr, linestyle=styles.get(name, ":"), color="tab:green", label=f"{name} {lr:.2g}")
        if rng.get("base_lr"):
            right.axvline(rng["base_lr"], color="tab:red", label=f"your lr {rng['base_lr']:.2g}")
        right.set_xlabel("learning rate")
        right.set_title("LR range test")
        right.legend(fontsize=7)
    fig.tight_layout()
    return fig


def random_input_figure(data: dict[str, Any]) -> Figure:
    """Training (and held-out) loss with real, noise and zero inputs."""
    fig, (train_ax, hold_ax) = _new_figure(2)
    for name, losses in (data.get("train_loss") or {}).items():
        train_ax.plot(range(len(losses)), _finite(losses), label=name)
    train_ax.set_title("training loss")
    train_ax.set_xlabel("step")
    train_ax.legend(fontsize=8)
    for name, losses in (data.get("holdout_loss") or {}).items():
        hold_ax.plot(range(len(losses)), _finite(losses), label=name)
    hold_ax.set_title("held-out loss")
    hold_ax.set_xlabel("evaluation")
    hold_ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def save_figures(experiments: dict[str, Any], directory: "str | os.PathLike[str]") -> dict[str, str]:
    """Write the plots that the experiments' data allows; returns {name: path}."""
    out_dir = Path(directory)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}

    def save(name: str, fig: Figure) -> None:
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=DPI)
        paths[name] = str(path)

    overfit = experiments.get("overfit")
    if overfit and not overfit.get("skipped"):
        save("overfit", overfit_figure(overfit))
    sweep, rng = experiments.get("lr_sweep"), experiments.get("lr_range")
    if (sweep and not sweep.get("skipped")) or (rng and not rng.get("skipped")):
        save("lr", lr_figure(sweep, rng))
    rand = experiments.get("random_input")
    if rand and not rand.get("skipped"):
        save("random_input", random_input_figure(rand))
    return paths
