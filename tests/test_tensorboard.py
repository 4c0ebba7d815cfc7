"""TensorBoard reporter: real event files, read back with tensorboard's EventAccumulator.

The observations are the hand-built 3-layer MLP of ``test_figures.py`` (12 steps,
activations sampled on steps 0, 4 and 8).
"""

from __future__ import annotations

import importlib.util
import io
import json
import math
import re
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.plugin_util import markdown_to_safe_html
from tensorboard.plugins.custom_scalar import layout_pb2

from nndoctor._observations import NonFiniteEvent
from nndoctor._report import Finding, Report
from nndoctor.reporters.tensorboard import (
    TensorBoardStream,
    custom_scalars_layout,
    findings_markdown,
    tag,
    tensorboard_hint,
    write_report,
)

# The data builders live in test_figures.py; loaded by path so this works whatever
# pytest's import mode.
_spec = importlib.util.spec_from_file_location("_nndoctor_test_data", Path(__file__).with_name("test_figures.py"))
data = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(data)

FINDINGS = [
    Finding("activation-std", "warning", "Activation std leaves the 0.5–2 band",
            "The activation std of `fc2` is 0.31 at step 0 (below 0.5 | vanishing).",
            "Use He (Kaiming) initialisation for layers followed by ReLU.\nOr add BatchNorm.",
            where="fc2", step=0, evidence={"std": 0.31, "band": [0.5, 2.0]}),
    Finding("dead-relu", "error", "Most ReLU units never activate",
            "71% of the units of `act2` never activate.", "Lower the learning rate.",
            where="act2", evidence={"dead_fraction": 0.71}),
    Finding("loss-not-decreasing", "info", "The loss barely moves",
            "The loss fell by 0.4 over 12 steps.", "Train longer."),
]


def make_report(**overrides) -> Report:
    fields = dict(findings=[Finding(**vars(f)) for f in FINDINGS],
                  checks_run=["activation-std", "dead-relu", "loss-not-decreasing", "nan-trace"],
                  checks_skipped=[{"check": "gradient-check", "reason": "no custom autograd Function"}],
                  steps_observed=12, model={"class": "MLP", "parameters": 1386, "trainable": 1386},
                  script="train.py", observations=data.make_observations(),
                  experiments=data.make_experiments())
    fields.update(overrides)
    return Report(**fields)


def load(logdir) -> ea.EventAccumulator:
    guidance = {kind: 0 for kind in (ea.SCALARS, ea.HISTOGRAMS, ea.IMAGES, ea.TENSORS,
                                     ea.COMPRESSED_HISTOGRAMS, ea.AUDIO)}
    acc = ea.EventAccumulator(str(logdir), size_guidance=guidance)
    acc.Reload()
    return acc


def scalars(acc, name) -> dict[int, float]:
    events = acc.Scalars(name)
    steps = [e.step for e in events]
    assert len(steps) == len(set(steps)), f"{name} written twice for a step: {steps}"
    return {e.step: e.value for e in events}


def texts(acc, name) -> list[tuple[int, str]]:
    return [(t.step, t.tensor_proto.string_val[0].decode("utf-8"))
            for t in acc.Tensors(f"{name}/text_summary")]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """One full report written once (figures are the slow part) and read back."""
    logdir = tmp_path_factory.mktemp("tb") / "run"
    report = make_report()
    returned = write_report(report, logdir)
    return report, Path(returned), load(logdir)


# -- the full report ---------------------------------------------------------------------
def test_write_report_returns_the_logdir_with_events_and_pngs(written):
    report, logdir, _ = written
    assert logdir.is_dir() and list(logdir.glob("events.out.tfevents.*"))
    assert {p.name for p in logdir.glob("*.png")} == {
        f"nndoctor_{n}.png" for n in ("loss", "activation_std", "gradient_flow", "update_ratio",
                                      "overfit", "lr_sweep", "lr_range", "random_input")}


def test_every_tag_follows_the_scheme(written):
    _, _, acc = written
    tags = acc.Tags()
    all_tags = [*tags["scalars"], *tags["histograms"], *tags["images"]]
    assert all_tags
    for name in all_tags:
        assert re.fullmatch(r"nndoctor/[\w.\-/]+", name), name
    expected = {"nndoctor/loss/value", "nndoctor/optimizer/lr", "nndoctor/gradient/total_norm"}
    for layer in data.LAYERS:
        expected |= {f"nndoctor/activation/mean/{layer}", f"nndoctor/activation/std/{layer}"}
    expected |= {"nndoctor/activation/dead_fraction/act1", "nndoctor/activation/dead_fraction/act2",
                 "nndoctor/activation/std/_model"}
    for p in data.PARAMS:
        expected |= {f"nndoctor/gradient/norm/{p}", f"nndoctor/update/ratio/{p}"}
    assert expected <= set(tags["scalars"])
    # Nothing no check or figure reads, and no count that is zero on a healthy run.
    assert not [t for t in tags["scalars"] if t.startswith(
        ("nndoctor/update/norm/", "nndoctor/weight/", "nndoctor/nonfinite/", "nndoctor/zeros/",
         "nndoctor/gradient/missing_count"))]
    assert "nndoctor/activation/dead_fraction/fc1" not in tags["scalars"]  # not a ReLU


def test_loss_on_every_watched_step_lr_on_sampled_steps_and_changes(written, tmp_path):
    report, _, acc = written
    loss = scalars(acc, "nndoctor/loss/value")
    assert sorted(loss) == list(range(12))
    assert loss[5] == pytest.approx(report.observations.steps[5].loss, rel=1e-6)
    lr = scalars(acc, "nndoctor/optimizer/lr")
    assert sorted(lr) == list(data.SAMPLED) and list(lr.values()) == pytest.approx([0.01] * len(lr))
    obs = data.make_observations()
    for record in obs.steps[5:]:
        record.lr = 0.001  # a schedule lowers the LR at step 5 (not a sampled step)
    with TensorBoardStream(tmp_path / "decay") as stream:
        stream.write_steps(obs, obs.steps)
    lr = scalars(load(tmp_path / "decay"), "nndoctor/optimizer/lr")
    assert sorted(lr) == sorted({*data.SAMPLED, 5}) and lr[5] == pytest.approx(0.001)


def test_activation_scalars_on_sampled_steps_only(written):
    _, _, acc = written
    std = scalars(acc, "nndoctor/activation/std/fc2")
    assert sorted(std) == list(data.SAMPLED)
    for step in data.SAMPLED:
        assert std[step] == pytest.approx(data.activation_stats(step)["fc2"][1], rel=1e-6)
    dead = scalars(acc, "nndoctor/activation/dead_fraction/act2")
    assert dead[4] == pytest.approx(0.71, rel=1e-6)


def test_gradient_and_update_scalars_match_the_records(written):
    report, _, acc = written
    record = report.observations.steps[7]
    assert scalars(acc, "nndoctor/gradient/norm/fc1.weight")[7] == pytest.approx(record.grad_norms["fc1.weight"], rel=1e-6)
    total = math.sqrt(sum(v * v for v in record.grad_norms.values()))
    assert scalars(acc, "nndoctor/gradient/total_norm")[7] == pytest.approx(total, rel=1e-6)
    ratio = record.update_norms["fc2.weight"] / record.weight_norms["fc2.weight"]
    assert scalars(acc, "nndoctor/update/ratio/fc2.weight")[7] == pytest.approx(ratio, rel=1e-6)
    names = acc.Tags()["scalars"]
    assert "nndoctor/gradient/missing_count" not in names and "nndoctor/nonfinite/events" not in names


def test_histograms_are_distributions_across_parameters_and_layers(written):
    report, _, acc = written
    grad = acc.Histograms("nndoctor/distribution/grad_norm_log10")
    assert [h.step for h in grad] == list(data.SAMPLED)
    first = grad[0].histogram_value
    logs = [math.log10(v) for v in report.observations.steps[0].grad_norms.values()]
    assert first.num == len(data.PARAMS)
    assert first.min == pytest.approx(min(logs)) and first.max == pytest.approx(max(logs))
    assert first.sum == pytest.approx(sum(logs))
    assert sum(first.bucket) == len(data.PARAMS)
    std = acc.Histograms("nndoctor/distribution/activation_std_log10")[0].histogram_value
    assert std.num == len(data.LAYERS)  # leaves only, not the root container
    dead = acc.Histograms("nndoctor/distribution/dead_fraction")[0].histogram_value
    assert dead.num == 2 and dead.max == pytest.approx(0.71)
    assert "nndoctor/nonfinite/grad_norm_log10" not in acc.Tags()["scalars"]


def test_findings_table_in_the_text_tab(written):
    report, _, acc = written
    [(step, table)] = texts(acc, "nndoctor/findings")
    assert step == 11  # the last watched step
    for f in report.findings:
        assert f.check in table
    assert "below 0.5 \\| vanishing" in table  # pipe escaped
    html = markdown_to_safe_html(table)
    rows = re.findall(r"<tr>(.*?)</tr>", html, flags=re.S)
    assert len(rows) == 1 + len(report.findings)
    cells = [re.findall(r"<t[dh]>(.*?)</t[dh]>", row, flags=re.S) for row in rows]
    assert all(len(c) == 5 for c in cells)
    assert [c.strip() for c in cells[0]] == ["severity", "check", "where", "message", "fix"]
    by_check = {c[1]: c for c in cells[1:]}
    # In the Report's order: the root cause, the findings it explains (dead units explain
    # the stalled loss), then the rest.
    assert [c[1] for c in cells[1:]] == [f.check for f in report.findings]
    assert [c[1] for c in cells[1:]] == ["dead-relu", "loss-not-decreasing", "activation-std"]
    std_row = by_check["activation-std"]
    assert std_row[0] == "<strong>warning</strong>"
    assert std_row[2] == "fc2 (step 0)"
    assert std_row[3] == "The activation std of <code>fc2</code> is 0.31 at step 0 (below 0.5 | vanishing)."
    assert std_row[4] == "Use He (Kaiming) initialisation for layers followed by ReLU.<br>Or add BatchNorm."


def test_evidence_and_summary_texts(written):
    _, _, acc = written
    [(_, evidence)] = texts(acc, "nndoctor/evidence")
    assert '"dead_fraction": 0.71' in evidence and "### dead-relu" in evidence
    [(_, summary)] = texts(acc, "nndoctor/summary")
    assert "MLP" in summary and "1386" in summary and "gradient-check" in summary
    assert "no custom autograd Function" in summary


def test_figures_as_decodable_images(written):
    _, logdir, acc = written
    assert set(acc.Tags()["images"]) == {f"nndoctor/figures/{n}" for n in (
        "loss", "activation_std", "gradient_flow", "update_ratio", "overfit", "lr_sweep", "lr_range",
        "random_input")}
    for name in acc.Tags()["images"]:
        [event] = acc.Images(name)
        assert (event.width, event.height) == (1000, 500)
        pixels = mpimg.imread(io.BytesIO(event.encoded_image_string), format="png")
        assert pixels.shape[:2] == (500, 1000)
        on_disk = mpimg.imread(logdir / f"nndoctor_{name.rsplit('/', 1)[1]}.png")
        assert on_disk.shape[:2] == pixels.shape[:2]
        assert np.abs(on_disk[..., :3] - pixels[..., :3]).mean() < 0.02  # same picture


def test_experiment_curves_as_scalars(written):
    report, _, acc = written
    user_run = report.experiments["overfit"]["runs"][0]["losses"]
    overfit = scalars(acc, "nndoctor/experiment/overfit/loss/SGD_lr_0.01_momentum_0.9")
    assert len(overfit) == 61 and overfit[3] == pytest.approx(user_run[3], rel=1e-6)
    assert len(scalars(acc, "nndoctor/experiment/overfit/loss/Adam_lr_0.001")) == 30
    sweep = {"nndoctor/experiment/lr_sweep/loss/lr_0.001", "nndoctor/experiment/lr_sweep/loss/lr_0.01",
             "nndoctor/experiment/lr_sweep/loss/lr_0.1"}
    assert sweep <= set(acc.Tags()["scalars"])
    noise = scalars(acc, "nndoctor/experiment/random_input/holdout_loss/noise")
    assert list(noise.values()) == pytest.approx(report.experiments["random_input"]["holdout_loss"]["noise"])
    lr = scalars(acc, "nndoctor/experiment/lr_range/lr")
    assert lr[10] == pytest.approx(report.experiments["lr_range"]["lrs"][10], rel=1e-6)


def test_custom_scalars_layout_points_at_written_tags(written):
    _, _, acc = written
    [event] = acc.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout()
    layout.ParseFromString(event.tensor_proto.string_val[0])
    titles = [c.title for c in layout.category]
    assert titles == list(custom_scalars_layout())
    scalar_tags = acc.Tags()["scalars"]
    for category in layout.category:
        for chart in category.chart:
            if chart.title.startswith("saturated"):
                continue  # this MLP has no sigmoid/tanh layer
            if chart.title == "non-finite values":
                continue  # written only when there are some (test_nonfinite_values_are_counted_not_dropped)
            for pattern in chart.multiline.tag:
                assert any(re.fullmatch(pattern, t) for t in scalar_tags), (chart.title, pattern)


# -- streaming ------------------------------------------------------------------------------
def test_stream_writes_incrementally_and_never_twice(tmp_path):
    obs = data.make_observations()
    stream = TensorBoardStream(tmp_path / "live")
    assert stream.write_steps(obs, obs.steps[:6]) == 6
    # Readable while training goes on (the stream flushes at each sync point).
    assert sorted(scalars(load(tmp_path / "live"), "nndoctor/loss/value")) == list(range(6))
    assert stream.write_steps(obs, obs.steps[4:]) == 6  # steps 4 and 5 already written
    stream.close()
    stream.close()  # safe twice
    acc = load(tmp_path / "live")
    assert sorted(scalars(acc, "nndoctor/loss/value")) == list(range(12))
    assert sorted(scalars(acc, "nndoctor/activation/std/fc1")) == list(data.SAMPLED)
    assert [h.step for h in acc.Histograms("nndoctor/distribution/grad_norm_log10")] == list(data.SAMPLED)
    with pytest.raises(RuntimeError, match="closed"):
        stream.write_steps(obs, obs.steps)


def test_per_parameter_scalars_can_be_switched_off_for_large_models(tmp_path):
    obs = data.make_observations()
    with TensorBoardStream(tmp_path / "lean", per_parameter=False) as stream:
        stream.write_steps(obs, obs.steps)
    acc = load(tmp_path / "lean")
    names = acc.Tags()["scalars"]
    assert "nndoctor/gradient/total_norm" in names and "nndoctor/activation/std/fc1" in names
    assert not [t for t in names if t.startswith(("nndoctor/gradient/norm/", "nndoctor/update/", "nndoctor/weight/"))]
    assert "nndoctor/distribution/update_ratio_log10" in acc.Tags()["histograms"]


def test_stream_findings_table_is_rewritten_only_when_findings_change(tmp_path):
    obs = data.make_observations()
    with TensorBoardStream(tmp_path / "live") as stream:
        stream.write_steps(obs, obs.steps[:6])
        report = make_report(findings=[Finding(**vars(FINDINGS[0]))], steps_observed=6)
        assert stream.write_findings(report) is True
        assert stream.write_findings(report) is False
        stream.write_steps(obs, obs.steps[6:])
        later = make_report(steps_observed=12)
        assert stream.write_findings(later) is True
        paths = stream.write_report(later)
    assert set(paths) >= {"loss", "activation_std"}
    acc = load(tmp_path / "live")
    tables = texts(acc, "nndoctor/findings")
    assert [step for step, _ in tables] == [5, 11]
    assert "dead-relu" not in tables[0][1] and "dead-relu" in tables[1][1]
    assert sorted(scalars(acc, "nndoctor/loss/value")) == list(range(12))  # not rewritten


def test_write_report_into_an_existing_writer_leaves_it_open(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(tmp_path / "mine"))
    writer.add_scalar("user/accuracy", 0.5, 0)
    returned = write_report(make_report(experiments={}), writer)
    assert Path(returned) == tmp_path / "mine"
    writer.add_scalar("user/accuracy", 0.6, 1)  # still usable
    writer.close()
    acc = load(tmp_path / "mine")
    assert scalars(acc, "user/accuracy") == {0: pytest.approx(0.5), 1: pytest.approx(0.6)}
    assert "nndoctor/loss/value" in acc.Tags()["scalars"]
    assert (tmp_path / "mine" / "nndoctor_loss.png").exists()


def test_report_to_tensorboard_goes_through_write_report(tmp_path):
    returned = make_report(experiments={}).to_tensorboard(str(tmp_path / "via-report"))
    assert Path(returned) == tmp_path / "via-report"
    assert texts(load(tmp_path / "via-report"), "nndoctor/findings")


# -- degraded inputs ----------------------------------------------------------------------------
def test_report_from_json_without_observations_still_writes_the_findings(tmp_path):
    report = Report.from_dict(json.loads(make_report().to_json()))
    assert report.observations is None
    write_report(report, tmp_path / "json")
    acc = load(tmp_path / "json")
    [(_, table)] = texts(acc, "nndoctor/findings")
    for f in FINDINGS:
        assert f.check in table
    assert acc.Tags()["images"] == [] and acc.Tags()["scalars"] == []
    assert not list((tmp_path / "json").glob("*.png"))


def test_empty_report_says_no_findings(tmp_path):
    write_report(Report(checks_run=["nan-trace", "dead-relu"]), tmp_path / "empty")
    [(_, table)] = texts(load(tmp_path / "empty"), "nndoctor/findings")
    assert table == "No findings: 2 checks ran and passed."


def test_nonfinite_values_are_counted_not_dropped(tmp_path):
    obs = data.make_observations()
    record = obs.steps[4]  # a sampled step
    record.grad_norms["fc2.weight"] = float("nan")
    record.grad_norms["fc1.bias"] = 0.0
    record.loss = float("inf")
    obs.nonfinite = [NonFiniteEvent("backward", 4, "fc2.weight", "nan"),
                     NonFiniteEvent("loss", 4, None, "inf")]
    with TensorBoardStream(tmp_path / "nan") as stream:
        stream.write_steps(obs, obs.steps)
    acc = load(tmp_path / "nan")
    assert scalars(acc, "nndoctor/nonfinite/grad_norm_log10")[4] == 1
    assert scalars(acc, "nndoctor/zeros/grad_norm_log10")[4] == 1
    assert scalars(acc, "nndoctor/nonfinite/events") == {4: 2}
    hist = {h.step: h.histogram_value for h in acc.Histograms("nndoctor/distribution/grad_norm_log10")}
    assert hist[4].num == len(data.PARAMS) - 2 and hist[0].num == len(data.PARAMS)
    assert math.isinf(scalars(acc, "nndoctor/loss/value")[4])
    assert math.isnan(scalars(acc, "nndoctor/gradient/norm/fc2.weight")[4])
    assert math.isnan(scalars(acc, "nndoctor/gradient/total_norm")[4])


def test_raw_histogram_bins_when_a_step_carries_them(tmp_path):
    obs = data.make_observations()
    edges = [-3.0, -1.0, 0.0, 1.0, 3.0]
    counts = [5, 40, 38, 7]
    # StepRecord may later gain this optional field; the reporter reads it with getattr.
    obs.steps[0].histograms = {"activation/fc1": (edges, counts, 3), "grad/fc1.weight": (edges, [0, 0, 0, 0], 0)}
    with TensorBoardStream(tmp_path / "raw") as stream:
        stream.write_steps(obs, obs.steps[:2])
    acc = load(tmp_path / "raw")
    [event] = acc.Histograms("nndoctor/histogram/activation/fc1")
    value = event.histogram_value
    assert event.step == 0
    assert list(value.bucket) == counts and list(value.bucket_limit) == edges[1:]
    assert value.num == 90 and value.min == -3.0 and value.max == 3.0
    assert scalars(acc, "nndoctor/nonfinite/histogram/activation/fc1") == {0: 3}
    assert "nndoctor/nonfinite/histogram/grad/fc1.weight" not in acc.Tags()["scalars"]
    assert "nndoctor/histogram/grad/fc1.weight" not in acc.Tags()["histograms"]  # no values to show


# -- small pieces --------------------------------------------------------------------------------
def test_tags_are_cleaned_and_the_root_module_is_named():
    assert tag("activation", "std", "") == "nndoctor/activation/std/_model"
    assert tag("gradient", "norm", "blocks.0.attn:q proj") == "nndoctor/gradient/norm/blocks.0.attn_q_proj"


def test_markdown_cells_escape_pipes_outside_code_and_keep_rows_intact():
    report = Report(findings=[Finding("x-check", "error", "t", "a | b `c | d` e\r\nnext <line>", "f|g")])
    html = markdown_to_safe_html(findings_markdown(report))
    [row] = re.findall(r"<tbody>\s*<tr>(.*?)</tr>", html, flags=re.S)
    cells = re.findall(r"<td>(.*?)</td>", row, flags=re.S)
    assert len(cells) == 5
    assert cells[3] == "a | b <code>c | d</code> e<br>next &lt;line&gt;"
    assert cells[4] == "f|g"


def test_tensorboard_hint_quotes_the_path():
    assert tensorboard_hint("runs/nndoctor") == "open it with: tensorboard --logdir runs/nndoctor"
    assert tensorboard_hint(Path("my runs/a")) == "open it with: tensorboard --logdir 'my runs/a'"


def test_each_step_is_written_as_one_event(tmp_path):
    """Batching: a step's scalars and histograms travel in one event (one record)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    obs = data.make_observations()
    with TensorBoardStream(tmp_path / "batched") as stream:
        stream.write_steps(obs, obs.steps)
    [path] = (tmp_path / "batched").glob("events.out.tfevents.*")
    per_step: dict[int, int] = {}
    values: dict[int, set[str]] = {}
    for event in EventFileLoader(str(path)).Load():
        if event.HasField("summary") and event.summary.value and not event.summary.value[0].tag.startswith("custom"):
            per_step[event.step] = per_step.get(event.step, 0) + 1
            values.setdefault(event.step, set()).update(v.tag for v in event.summary.value)
    assert per_step == {s: 1 for s in range(12)}
    assert {"nndoctor/loss/value", "nndoctor/activation/std/fc1",
            "nndoctor/distribution/grad_norm_log10"} <= values[data.SAMPLED[1]]


def test_findings_page_leads_with_the_diagnosis_and_its_real_outcome():
    report = make_report()
    assert report.diagnosis.cause == "dead-relu"
    report.diagnosis.confirm("weights re-initialised", "overfit-tiny-batch", "not fitted in 100 steps",
                             "not fitted in 100 steps", outcome="not confirmed")
    html = markdown_to_safe_html(findings_markdown(report))
    lead = html[:html.index("<table>")]
    assert "<strong>Diagnosis:</strong> <code>dead-relu</code>" in lead
    assert "not confirmed: with weights re-initialised, overfit-tiny-batch: not fitted in 100 steps" in lead
    assert "explains: <code>loss-not-decreasing</code>" in lead
    rows = {c[1]: c for c in (re.findall(r"<td>(.*?)</td>", row, flags=re.S)
                              for row in re.findall(r"<tr>(.*?)</tr>", html, flags=re.S)) if c}
    assert rows["loss-not-decreasing"][3].endswith("(explained by <code>dead-relu</code>)")
    assert "explained by" not in rows["dead-relu"][3]
    assert "Diagnosis" not in findings_markdown(make_report(findings=[]))
