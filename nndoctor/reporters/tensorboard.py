"""TensorBoard reporter: scalars, histograms, the findings table and figures.

Reads plain data only (``Report``, ``Observations``, ``StepRecord``): no tensor is
touched and nothing forces a device sync, so the Doctor may call the streaming writer at
its sync points while training runs.

Tag scheme: ``nndoctor/<family>/<quantity>/<layer>`` (``<layer>`` is a module path or a
parameter name; the root module is ``_model``; characters outside ``[A-Za-z0-9_.-/]``
become ``_``). Quantities without a layer stop at ``<quantity>``.

Scalars (x = the step number). Only what a check or a figure reads is streamed, and
counts that are almost always zero are written only when they are not; each step's
scalars go out as one event (one record in the file), not one event per value.

Every watched step:

- ``nndoctor/loss/value``                          the training loss (NaN/Inf kept as is)
- ``nndoctor/gradient/total_norm``                 L2 norm over all parameters
- ``nndoctor/optimizer/lr``                        the learning rate: on sampled steps and
  whenever it changes

Sampled steps:

- ``nndoctor/activation/{mean,std}/<module>``      first call of the module in the step
- ``nndoctor/activation/dead_fraction/<module>``   ReLU-like layers
- ``nndoctor/activation/saturated_fraction/<module>``  sigmoid/tanh layers
- ``nndoctor/gradient/norm/<param>``               gradient L2 norm per parameter
- ``nndoctor/update/ratio/<param>``                |update| / |weight|

Only when not zero:

- ``nndoctor/gradient/missing_count``              parameters needing a gradient that got none
- ``nndoctor/nonfinite/events``                    NaN/Inf events recorded at that step

Histograms, on sampled steps. Observations hold reduced statistics, not raw tensors, so
these are distributions *across layers/parameters* of one step's statistics:

- ``nndoctor/distribution/grad_norm_log10``        log10 gradient norm, one value per parameter
- ``nndoctor/distribution/update_ratio_log10``     log10 |update|/|weight|, per parameter
- ``nndoctor/distribution/activation_std_log10``   log10 activation std, per layer
- ``nndoctor/distribution/activation_mean``        activation mean, per layer
- ``nndoctor/distribution/dead_fraction``          dead fraction, per ReLU layer
- ``nndoctor/histogram/<key>``                     raw bins, if a StepRecord carries
  ``histograms = {key: (bin_edges, counts, nonfinite_count)}``

Values a histogram cannot hold are never silently dropped: each histogram comes with
``nndoctor/nonfinite/<quantity>`` (how many NaN/Inf values were left out;
``nndoctor/nonfinite/histogram/<key>`` for raw bins) and, for log10 quantities,
``nndoctor/zeros/<quantity>`` (how many zeros were left out), written when not zero.

Experiments (x = iteration or index): ``nndoctor/experiment/overfit/loss/<run>``
(``<run>``: the optimizer, e.g. ``SGD_lr_0.1_momentum_0.9``), ``nndoctor/experiment/lr_sweep/loss/lr_<lr>``,
``nndoctor/experiment/lr_range/{loss,lr}``,
``nndoctor/experiment/random_input/{train,holdout}_loss/{real,noise,zeros}``.

Text: ``nndoctor/findings`` (a Markdown table: severity, check, where, message, fix),
``nndoctor/evidence`` (each finding's numbers), ``nndoctor/summary`` (the pages are
built in :mod:`nndoctor.reporters._tensorboard_text`).
Images: ``nndoctor/figures/<name>`` (see :mod:`nndoctor.reporters.figures`), also saved
as ``<logdir>/nndoctor_<name>.png``.
A custom-scalars layout groups the scalars into nndoctor panels.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from . import figures as _fig
from ._tensorboard_text import custom_scalars_layout, evidence_markdown, findings_markdown, summary_markdown

__all__ = [
    "TensorBoardStream",
    "write_report",
    "tensorboard_hint",
    "findings_markdown",
    "custom_scalars_layout",
    "tag",
]

_BAD_TAG_CHARS = re.compile(r"[^\w.\-/]")
_HIST_BINS = 30


def tag(*parts: str) -> str:
    """``nndoctor/<parts...>`` with each part cleaned for TensorBoard; the root module
    path ``""`` becomes ``_model``."""
    cleaned = [_BAD_TAG_CHARS.sub("_", p) if p else "_model" for p in parts]
    return "/".join(["nndoctor", *cleaned])


def _slug(label: str) -> str:
    """A free-text label (``"SGD(lr=0.01, momentum=0.9)"``) as one compact tag part
    (``"SGD_lr_0.01_momentum_0.9"``)."""
    return re.sub(r"[^\w.\-]+", "_", label).strip("_") or "_"


def tensorboard_hint(logdir: "str | os.PathLike[str]") -> str:
    """One line for the console report: how to open the TensorBoard output."""
    return f"open it with: tensorboard --logdir {shlex.quote(str(logdir))}"


# -- histograms from plain numbers ---------------------------------------------------
def _split_values(values: Iterable[float], log10: bool) -> tuple[np.ndarray, int, int]:
    """(values to histogram, non-finite count, zero count). For log10 quantities, zeros
    and negatives cannot be placed and are counted apart."""
    arr = np.asarray(list(values), dtype=float)
    nonfinite = ~np.isfinite(arr)
    arr_finite = arr[~nonfinite]
    zeros = 0
    if log10:
        nonpositive = arr_finite <= 0
        zeros = int(nonpositive.sum())
        arr_finite = np.log10(arr_finite[~nonpositive])
    return arr_finite, int(nonfinite.sum()), zeros


class TensorBoardStream:
    """Writes nndoctor's observations to TensorBoard while training runs.

    The Doctor calls :meth:`write_steps` at each sync point with the steps finished
    since the last call, :meth:`write_findings` when findings change, and at the end
    :meth:`write_report` then :meth:`close`. Steps already written are skipped, so
    handing the same step twice (or the whole report at the end) writes it once.

    ``logdir``: a directory (created if needed). ``writer``: an existing
    ``SummaryWriter`` to write into instead; it is flushed, never closed, by
    :meth:`close`. ``per_parameter=False`` skips the per-parameter scalars (gradient
    norms and update ratios of sampled steps) for very large models; totals and
    distributions are still written. ``thresholds`` (check id -> {name: value}): those
    the checks judge with, for what the layout names (the ``activation-std`` band); by
    default those recorded on the observations, else the checks' defaults.
    """

    def __init__(self, logdir: "str | os.PathLike[str] | None" = None, *, writer: Any = None,
                 flush_secs: int = 30, per_parameter: bool = True,
                 thresholds: "Mapping[str, Mapping[str, float]] | None" = None) -> None:
        if writer is None:
            if logdir is None:
                raise ValueError("TensorBoardStream needs a logdir or a SummaryWriter")
            from torch.utils.tensorboard import SummaryWriter

            Path(logdir).mkdir(parents=True, exist_ok=True)
            writer = SummaryWriter(log_dir=str(logdir), flush_secs=flush_secs)
            self._owns_writer = True
        else:
            self._owns_writer = False
        self.writer = writer
        # A writer handed in decides where files go; the PNGs follow it.
        self.logdir = str(logdir) if self._owns_writer else _writer_logdir(writer)
        self.per_parameter = per_parameter
        self.check_thresholds = {cid: dict(values) for cid, values in (thresholds or {}).items()}
        self._written_steps: set[int] = set()
        self._layout_written = False
        self._experiments_written: set[str] = set()
        self._findings_key: tuple | None = None
        self._closed = False
        self._last_lr: float | None = None
        # The step being written: its scalars and histograms, sent as one event.
        self._batch: list[Any] = []

    # -- context manager -----------------------------------------------------------
    def __enter__(self) -> "TensorBoardStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- streaming -----------------------------------------------------------------
    def write_steps(self, obs: Any, steps: Sequence[Any]) -> int:
        """Write the scalars (and, for sampled steps, the histograms) of ``steps``;
        returns how many steps were new. ``obs`` gives the context (forward order,
        non-finite events)."""
        self._check_open()
        self._write_layout(obs)
        new = 0
        events_by_step: dict[int, int] = {}
        for event in getattr(obs, "nonfinite", None) or []:
            events_by_step[event.step] = events_by_step.get(event.step, 0) + 1
        for step in steps:
            if step.step in self._written_steps:
                continue
            self._written_steps.add(step.step)
            self._write_step(obs, step, events_by_step.get(step.step, 0))
            new += 1
        self.writer.flush()
        return new

    def write_findings(self, report: Any) -> bool:
        """Write the findings table (and the evidence) if it changed since the last
        call; returns whether it wrote. The text's step is the last step written, so
        TensorBoard shows how the table evolved as training went."""
        self._check_open()
        key = tuple(
            (f.check, str(getattr(f.severity, "value", f.severity)), f.where, f.step, f.message)
            for f in getattr(report, "findings", None) or []
        )
        if key == self._findings_key:
            return False
        self._findings_key = key
        step = self._text_step(report)
        self.writer.add_text(tag("findings"), findings_markdown(report), global_step=step)
        self.writer.add_text(tag("evidence"), evidence_markdown(report), global_step=step)
        self.writer.flush()
        return True

    def write_report(self, report: Any, *, figures: bool = True) -> dict[str, str]:
        """The final write: any steps not yet written, the findings, the summary, the
        experiment curves and the figures (PNG files in the logdir and images in
        TensorBoard). Returns ``{figure name: PNG path}``."""
        self._check_open()
        obs = getattr(report, "observations", None)
        self._write_layout(obs)
        if obs is not None and getattr(obs, "steps", None):
            self.write_steps(obs, obs.steps)
        step = self._text_step(report)
        self.write_findings(report)  # no-op when the stream already wrote this table
        self.writer.add_text(tag("summary"), summary_markdown(report), global_step=step)
        self._write_experiments(_fig.report_experiments(report))
        paths: dict[str, str] = {}
        if figures:
            for name, figure in _fig.report_figures(report).items():
                path = _fig.figure_to_png(figure, Path(self.logdir) / f"nndoctor_{name}.png")
                paths[name] = str(path)
                self.writer.add_image(tag("figures", name), _fig.figure_to_rgb(figure),
                                      global_step=step, dataformats="HWC")
        self.writer.flush()
        return paths

    def close(self) -> None:
        """Flush; close the writer if this stream opened it. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._owns_writer:
            self.writer.close()
        else:
            self.writer.flush()

    # -- internals -----------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"TensorBoardStream for {self.logdir} is closed")

    def _text_step(self, report: Any) -> int:
        # On the scalars' x axis: the last step written; without any (a report read
        # from JSON), the number of steps observed.
        if self._written_steps:
            return max(self._written_steps)
        return int(getattr(report, "steps_observed", 0) or 0)

    def _write_layout(self, obs: Any) -> None:
        if not self._layout_written:
            band = _fig.check_thresholds(self if "activation-std" in self.check_thresholds else obs,
                                         "activation-std")
            low, high = band.get("low"), band.get("high")
            self.writer.add_custom_scalars(
                custom_scalars_layout((low, high) if low is not None and high is not None else None))
            self._layout_written = True

    def _scalar(self, name: str, value: Any, step: int) -> None:
        number = _fig._as_float(value)
        if number is not None:
            self.writer.add_scalar(name, number, global_step=step)

    def _count(self, name: str, value: int, step: int) -> None:
        """A count that is almost always zero: written only when it is not."""
        if value:
            self._scalar(name, value, step)

    def _write_step(self, obs: Any, record: Any, nonfinite_events: int) -> None:
        """One step, written as one event when the writer is torch's ``SummaryWriter``
        (about 40 µs an event, most of it per event, not per value)."""
        file_writer = getattr(self.writer, "_get_file_writer", None)
        if not callable(file_writer):
            self._write_step_values(obs, record, nonfinite_events)
            return
        batch: list[Any] = []
        self._batch = batch
        scalar, histogram = self._scalar, self._histogram_raw
        self._scalar, self._histogram_raw = self._batched_scalar, self._batched_histogram  # type: ignore[method-assign]
        try:
            self._write_step_values(obs, record, nonfinite_events)
        finally:
            self._scalar, self._histogram_raw = scalar, histogram  # type: ignore[method-assign]
            self._batch = []
        if batch:
            from tensorboard.compat.proto.summary_pb2 import Summary

            file_writer().add_summary(Summary(value=batch), record.step)

    def _batched_scalar(self, name: str, value: Any, step: int) -> None:
        number = _fig._as_float(value)
        if number is not None:
            from tensorboard.compat.proto.summary_pb2 import Summary

            self._batch.append(Summary.Value(tag=name, simple_value=number))

    def _batched_histogram(self, name: str, edges: np.ndarray, counts: np.ndarray, *, total: float,
                           total_sq: float, step: int) -> None:
        num = float(counts.sum())
        if num <= 0:
            return
        from torch.utils.tensorboard.summary import histogram_raw

        summary = histogram_raw(name, min=float(edges[0]), max=float(edges[-1]), num=num, sum=total,
                                sum_squares=total_sq, bucket_limits=[float(e) for e in edges[1:]],
                                bucket_counts=[float(c) for c in counts])
        self._batch.extend(summary.value)

    def _write_step_values(self, obs: Any, record: Any, nonfinite_events: int) -> None:
        n = record.step
        sampled = getattr(record, "sampled", False)
        self._scalar(tag("loss", "value"), record.loss, n)
        lr = _fig._as_float(getattr(record, "lr", None))
        if lr is not None and (sampled or lr != self._last_lr):
            self._scalar(tag("optimizer", "lr"), lr, n)
            self._last_lr = lr
        self._count(tag("nonfinite", "events"), nonfinite_events, n)

        activations = _fig.first_call_activations(record)
        for path in _fig.layer_order(obs, activations):
            rec = activations[path]
            self._scalar(tag("activation", "mean", path), rec.mean, n)
            self._scalar(tag("activation", "std", path), rec.std, n)
            self._scalar(tag("activation", "dead_fraction", path), getattr(rec, "dead_fraction", None), n)
            self._scalar(tag("activation", "saturated_fraction", path), getattr(rec, "saturated_fraction", None), n)

        grad_norms = getattr(record, "grad_norms", None) or {}
        ratios = _fig.parameter_update_ratios(record)
        if self.per_parameter:
            self._per_parameter_scalars(record, grad_norms, ratios)
        total = getattr(record, "grad_total", None)
        if total is not None:
            self._scalar(tag("gradient", "total_norm"), total, n)
        elif grad_norms:
            self._scalar(tag("gradient", "total_norm"), _fig._pooled_norm(float(v) for v in grad_norms.values()), n)
        self._count(tag("gradient", "missing_count"), len(getattr(record, "grads_missing", None) or []), n)

        if sampled:
            self._distribution("grad_norm_log10", grad_norms.values(), n, log10=True)
            self._distribution("update_ratio_log10", ratios.values(), n, log10=True)
            plotted = [a for p, a in activations.items() if _fig._plotted_layer(obs, p)]
            self._distribution("activation_std_log10", [a.std for a in plotted], n, log10=True)
            self._distribution("activation_mean", [a.mean for a in plotted], n, log10=False)
            dead = [a.dead_fraction for a in plotted if getattr(a, "dead_fraction", None) is not None]
            self._distribution("dead_fraction", dead, n, log10=False)
        self._raw_histograms(getattr(record, "histograms", None), n)

    def _per_parameter_scalars(self, record: Any, grad_norms: Mapping[str, float],
                               ratios: Mapping[str, float]) -> None:
        n = record.step
        for name, norm in grad_norms.items():
            self._scalar(tag("gradient", "norm", name), norm, n)
        for name, ratio in ratios.items():
            self._scalar(tag("update", "ratio", name), ratio, n)

    def _distribution(self, quantity: str, values: Iterable[Any], step: int, *, log10: bool) -> None:
        floats = [_fig._as_float(v) for v in values]
        floats = [v for v in floats if v is not None]
        if not floats:
            return
        kept, nonfinite, zeros = _split_values(floats, log10)
        self._count(tag("nonfinite", quantity), nonfinite, step)
        if log10:
            self._count(tag("zeros", quantity), zeros, step)
        if kept.size == 0:
            return
        counts, edges = np.histogram(kept, bins=min(_HIST_BINS, max(1, kept.size)))
        self._histogram_raw(tag("distribution", quantity), edges, counts,
                            total=float(kept.sum()), total_sq=float((kept * kept).sum()), step=step)

    def _raw_histograms(self, histograms: Any, step: int) -> None:
        """StepRecord.histograms (optional, may not exist): ``{key: (bin_edges, counts,
        nonfinite_count)}`` with ``len(bin_edges) == len(counts) + 1``."""
        mapping = _fig._as_mapping(histograms) if histograms is not None else None
        for key, value in (mapping or {}).items():
            try:
                edges, counts, nonfinite = value
                edges = np.asarray(list(edges), dtype=float)
                counts = np.asarray(list(counts), dtype=float)
            except (TypeError, ValueError):
                continue
            parts = [p for p in str(key).split("/") if p] or ["_"]
            self._count(tag("nonfinite", "histogram", *parts), int(nonfinite or 0), step)
            if counts.size == 0 or edges.size != counts.size + 1 or not np.isfinite(edges).all():
                continue
            centers = (edges[:-1] + edges[1:]) / 2
            self._histogram_raw(tag("histogram", *parts), edges, counts,
                                total=float((centers * counts).sum()),
                                total_sq=float((centers * centers * counts).sum()), step=step)

    def _histogram_raw(self, name: str, edges: np.ndarray, counts: np.ndarray, *, total: float,
                       total_sq: float, step: int) -> None:
        num = float(counts.sum())
        if num <= 0:
            return
        self.writer.add_histogram_raw(
            name,
            min=float(edges[0]),
            max=float(edges[-1]),
            num=num,
            sum=total,
            sum_squares=total_sq,
            bucket_limits=[float(e) for e in edges[1:]],
            bucket_counts=[float(c) for c in counts],
            global_step=step,
        )

    def _write_experiments(self, experiments: Mapping[str, Any]) -> None:
        """Experiment curves as scalars (x = iteration or index), each written once."""
        def fresh(name: str) -> Any:
            found = _fig.find_experiment(experiments, name)
            if found is None or name in self._experiments_written:
                return None
            self._experiments_written.add(name)
            return found

        overfit = fresh("overfit")
        if overfit is not None:
            for run in _fig.overfit_runs(overfit)[0]:
                for x, loss in zip(run["steps"], run["losses"]):
                    self._scalar(tag("experiment", "overfit", "loss", _slug(run["label"])), loss, int(x))
        random_input = fresh("random_input")
        curves = _fig.random_input_curves(random_input) if random_input is not None else None
        for part, by_variant in (curves or {}).items():
            for variant, losses in by_variant.items():
                for i, loss in enumerate(losses):
                    self._scalar(tag("experiment", "random_input", f"{part}_loss", variant), loss, i)
        sweep = fresh("lr_sweep")
        if sweep is not None:
            runs, _ = _fig.lr_sweep_runs(sweep)
            for lr, losses in runs:
                for i, loss in enumerate(losses):
                    self._scalar(tag("experiment", "lr_sweep", "loss", f"lr_{lr:.3g}"), loss, i)
        lr_range = fresh("lr_range")
        range_curve = _fig.lr_range_curve(lr_range) if lr_range is not None else None
        if range_curve is not None:
            for i, (lr, loss) in enumerate(zip(range_curve[0], range_curve[1])):
                self._scalar(tag("experiment", "lr_range", "loss"), loss, i)
                self._scalar(tag("experiment", "lr_range", "lr"), lr, i)


def _writer_logdir(writer: Any) -> str:
    get = getattr(writer, "get_logdir", None)
    if callable(get):
        return str(get())
    return str(getattr(writer, "log_dir", "."))


def write_report(report: Any, logdir_or_writer: Any) -> str:
    """Write a whole report to TensorBoard (a directory path or a ``SummaryWriter``):
    the observed steps, the findings table, the summary, the experiment curves and the
    figures (also saved as PNG files in the logdir). Works for a report without
    observations (e.g. loaded from JSON): then only the text is written. Returns the
    logdir path. A writer handed in is flushed, not closed."""
    if isinstance(logdir_or_writer, (str, os.PathLike)):
        stream = TensorBoardStream(logdir_or_writer)
    else:
        stream = TensorBoardStream(writer=logdir_or_writer)
    try:
        stream.write_report(report)
    finally:
        stream.close()
    return stream.logdir
