"""The thresholds the reporters draw are the ones the checks judged with, a user's override
included, on every path: a watch, a checkup, the two merged (as `nndoctor check` and the
integrations do), and the TensorBoard layout written while training runs.

Before: a watch recorded no thresholds, so `Doctor(thresholds={"activation-std": {"low": 0.2,
"high": 5}})` got figures shading 0.5-2 and a TensorBoard chart titled "healthy 0.5-2"; a
merged report lost the checkup's `overfit-tiny-batch` loss_fraction.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.plugins.custom_scalar import layout_pb2

from nndoctor import Doctor
from nndoctor.reporters import figures as F
from nndoctor.reporters.tensorboard import TensorBoardStream

OVERRIDES = {"activation-std": {"low": 0.2, "high": 5.0}, "overfit-tiny-batch": {"loss_fraction": 0.5}}


def _watched(logdir=None):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    doctor = Doctor(model, optimizer=opt, loss_fn=nn.CrossEntropyLoss(), thresholds=OVERRIDES)
    x, y = torch.randn(32, 10), torch.randint(0, 2, (32,))
    with doctor.watch(logdir=logdir):
        for _ in range(4):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return doctor, (x, y)


def _band_label(report):
    ax = F.report_figures(report)["activation_std"].axes[0]
    return [p.get_label() for p in ax.patches if p.get_label().startswith("healthy band")]


def _overfit_target(report):
    ax = F.report_figures(report)["overfit"].axes[0]
    [line] = [line for line in ax.lines if line.get_label().startswith("target")]
    runs = report.experiments["overfit"].runs
    return line.get_ydata()[0], runs[0].losses[0], report.experiments["overfit"].loss_floor


def _layout_titles(logdir):
    acc = ea.EventAccumulator(str(logdir), size_guidance={ea.TENSORS: 0})
    acc.Reload()
    [event] = acc.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout()
    layout.ParseFromString(event.tensor_proto.string_val[0])
    return [chart.title for category in layout.category for chart in category.chart]


def test_a_watch_draws_the_activation_band_the_check_used():
    doctor, _ = _watched()
    report = doctor.report()
    assert report.observations.check_thresholds["activation-std"]["low"] == 0.2
    assert _band_label(report) == ["healthy band 0.2–5"]


def test_a_merged_watch_and_checkup_keep_both_sides_thresholds():
    doctor, batch = _watched()
    checkup = doctor.checkup(batch, select=["overfit-tiny-batch"])
    merged = doctor.report().merge(checkup)
    assert _band_label(merged) == ["healthy band 0.2–5"]
    target, start, floor = _overfit_target(merged)
    assert target == pytest.approx(floor + 0.5 * (start - floor))  # not the default 0.1


def test_the_streamed_layout_names_the_band_the_check_uses(tmp_path):
    _watched(logdir=tmp_path)
    assert "std per layer (activation-std band 0.2-5)" in _layout_titles(tmp_path)


def test_a_stream_without_thresholds_names_the_checks_defaults(tmp_path):
    class Obs:
        steps, nonfinite = [], []

    with TensorBoardStream(tmp_path) as stream:
        stream.write_steps(Obs(), [])
    assert "std per layer (activation-std band 0.5-2)" in _layout_titles(tmp_path)
