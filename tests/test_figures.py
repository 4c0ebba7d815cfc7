"""Figures of a report: content checks, not only existence.

The observations are built by hand (pure data): a 3-layer MLP (fc1 → act1 → fc2 → act2
→ fc3) watched for 12 steps, activations sampled on steps 0, 4 and 8. The figures are
read back from their axes (line data, band patch, tick labels) and from the PNG files.
"""

from __future__ import annotations

import math
import subprocess
import sys

import matplotlib.image as mpimg
import numpy as np
import pytest

from nndoctor._observations import (
    ActivationRecord,
    LossGraph,
    ModuleMeta,
    Observations,
    ParamMeta,
    StepRecord,
)
from nndoctor._report import Finding, Report
from nndoctor.reporters import figures as F

LAYERS = ["fc1", "act1", "fc2", "act2", "fc3"]  # forward order, root excluded
PARAMS = ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias"]
SAMPLED = (0, 4, 8)


def activation_stats(step: int) -> dict[str, tuple[float, float, float | None]]:
    """(mean, std, dead_fraction) per module; std shrinks layer by layer (fc2 and below
    leave the 0.5–2 band) and drifts a little with the step."""
    drift = 1.0 + 0.02 * step
    return {
        "": (0.01, 0.21 * drift, None),
        "fc1": (0.02, 1.10 * drift, None),
        "act1": (0.45, 0.62 * drift, 0.46),
        "fc2": (-0.01, 0.31 * drift, None),
        "act2": (0.12, 0.15 * drift, 0.71),
        "fc3": (0.01, 0.21 * drift, None),
    }


def grad_norm(param: str, step: int) -> float:
    base = {"fc1": 0.012, "fc2": 0.35, "fc3": 0.9}[param.split(".")[0]]
    return base * (0.5 if param.endswith("bias") else 1.0) * (1.0 - 0.03 * step)


def make_observations(n_steps: int = 12) -> Observations:
    modules = {
        "": ModuleMeta("", "MLP", "container", False, 1386, False),
        "fc1": ModuleMeta("fc1", "Linear", "linear", True, 672, True),
        "act1": ModuleMeta("act1", "ReLU", "relu", True, 0, True),
        "fc2": ModuleMeta("fc2", "Linear", "linear", True, 528, True),
        "act2": ModuleMeta("act2", "ReLU", "relu", True, 0, True),
        "fc3": ModuleMeta("fc3", "Linear", "linear", True, 170, True),
    }
    shapes = {"fc1.weight": (32, 20), "fc1.bias": (32,), "fc2.weight": (16, 32),
              "fc2.bias": (16,), "fc3.weight": (10, 16), "fc3.bias": (10,)}
    params = {
        name: ParamMeta(name, name.split(".")[0], shape, math.prod(shape), True, True, "linear",
                        name.split(".")[1], fan_in=shape[-1] if len(shape) > 1 else None)
        for name, shape in shapes.items()
    }
    steps = []
    for i in range(n_steps):
        record = StepRecord(
            step=i,
            sampled=i in SAMPLED,
            loss=2.31 - 0.04 * i + 0.01 * (i % 3),
            training=True,
            backward_calls=1,
            grad_norms={p: grad_norm(p, i) for p in PARAMS},
            update_norms={p: 1e-3 * (1 + j) * (1 + 0.01 * i) for j, p in enumerate(PARAMS)},
            weight_norms={p: 2.0 + 0.5 * j for j, p in enumerate(PARAMS)},
            lr=0.01,
        )
        if record.sampled:
            stats = activation_stats(i)
            # Records arrive in hook order (root last: its forward hook fires after
            # its children's), not in forward order: the figures must reorder.
            order = ["fc1", "act1", "fc2", "act2", "fc3", ""]
            record.activations = [
                ActivationRecord(path, call, stats[path][0], stats[path][1], 64 * 32, False, False,
                                 batch=64, dead_fraction=stats[path][2])
                for call, path in enumerate(order)
            ]
            record.loss_graph = LossGraph("cross_entropy", "logits", n_classes=10)
        steps.append(record)
    return Observations(
        model_class="MLP", n_parameters=1386, n_trainable=1386, modules=modules, params=params,
        steps=steps, forward_order=["", *LAYERS], called_modules=set(modules),
        has_optimizer=True, updates_seen=n_steps, sampled_steps=len(SAMPLED),
    )


def make_experiments() -> dict:
    """The shapes ``nndoctor._experiments`` records (checkup probes)."""
    lrs = [1e-6 * 1.6 ** k for k in range(30)]
    raw = [2.3 - 0.04 * k + 0.05 * (-1) ** k if k < 22 else 1.42 + 0.6 * (k - 22) for k in range(30)]
    return {
        "overfit": {
            "n_samples": 8, "max_steps": 60, "task": "classification",
            "runs": [
                {"optimizer": "SGD(lr=0.01, momentum=0.9)", "is_user": True,
                 "losses": [2.3 - 0.01 * i for i in range(61)], "accuracies": None},
                {"optimizer": "Adam(lr=0.001)", "is_user": False,
                 "losses": [2.3 * 0.8 ** i for i in range(30)], "accuracies": None},
            ],
            "regularisation_off": ["dropout"],
        },
        "lr_sweep": {
            "base_lr": 0.01, "optimizer": "SGD", "steps": 7, "n_samples": 32,
            "trials": {label: {"lr": 0.01 * scale,
                               "losses": [2.3 - k * 0.1 * math.sqrt(scale) for k in range(8)]}
                       for label, scale in (("0.1", 0.1), ("1", 1.0), ("10", 10.0))},
        },
        "lr_range": {
            "lrs": lrs, "losses": raw, "smoothed": [2.3 - 0.035 * k if k < 22 else 1.5 + 0.5 * (k - 22) for k in range(30)],
            "stopped_early": True, "diverged_at": lrs[-1], "base_lr": 0.01, "optimizer": "SGD",
            "suggestions": {"steep": 1e-3, "valley": 3e-3, "minimum/10": 4e-4},
            "spread_decades": 0.88, "suggested_lr": 1e-3,
        },
        "random_input": {
            "output_change": {"noise": 0.9, "zeros": 1.0}, "steps": 20, "n_train": 16, "n_holdout": 16,
            "optimizer": "Adam(lr=0.001)",
            "train_loss": {"real": [2.3 - 0.08 * i for i in range(21)],
                           "noise": [2.3 - 0.02 * i for i in range(21)],
                           "zeros": [2.3] * 21},
            "holdout_loss": {"real": [2.3, 2.0, 1.7, 1.5, 1.4],
                             "noise": [2.3, 2.3, 2.31, 2.32, 2.33],
                             "zeros": [2.3] * 5},
            "label_entropy": 2.28,
        },
        "gradcheck": {"skipped": "no custom autograd Function"},
    }


def make_report() -> Report:
    return Report(
        findings=[Finding("activation-std", "warning", "Activation std leaves the 0.5–2 band",
                          "`fc2` std is 0.31", "Use He init.", where="fc2", step=0)],
        checks_run=["activation-std"], steps_observed=12, model={"class": "MLP", "parameters": 1386},
        observations=make_observations(), experiments=make_experiments(),
    )


def only_axes(fig):
    assert len(fig.axes) == 1
    return fig.axes[0]


def labelled(items, prefix):
    found = [item for item in items if item.get_label().startswith(prefix)]
    assert found, f"nothing labelled {prefix!r} in {[i.get_label() for i in items]}"
    return found[0]


def tick_texts(ax):
    return [t.get_text() for t in ax.get_xticklabels()]


def patch_y_span(patch):
    ys = patch.get_patch_transform().transform(patch.get_path().vertices)[:, 1]
    return float(ys.min()), float(ys.max())


# -- per-layer figures -----------------------------------------------------------------
def test_activation_std_is_plotted_per_layer_in_forward_order_with_the_band():
    obs = make_observations()
    ax = only_axes(F.activation_std_figure(obs))
    first = [activation_stats(0)[p][1] for p in LAYERS]
    last = [activation_stats(8)[p][1] for p in LAYERS]
    np.testing.assert_allclose(ax.lines[0].get_ydata(), first)
    np.testing.assert_allclose(ax.lines[1].get_ydata(), last)
    assert ax.lines[0].get_label() == "step 0" and ax.lines[1].get_label() == "step 8"
    assert tick_texts(ax) == LAYERS  # the root module (a container) is not a layer
    low, high = patch_y_span(labelled(ax.patches, "healthy band"))
    assert low == pytest.approx(0.5) and high == pytest.approx(2.0)
    assert ax.get_yscale() == "log"
    assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
    ylow, yhigh = ax.get_ylim()
    assert ylow <= min(first) and yhigh >= 2.0


def test_activation_std_marks_zero_and_nonfinite_instead_of_dropping_them():
    obs = make_observations()
    for rec in obs.steps[0].activations:
        if rec.path == "fc2":
            rec.std = float("nan")
        if rec.path == "act2":
            rec.std = 0.0
    ax = only_axes(F.activation_std_figure(obs))
    y = np.asarray(ax.lines[0].get_ydata(), dtype=float)
    assert np.isnan(y[LAYERS.index("fc2")]) and np.isnan(y[LAYERS.index("act2")])
    nonfinite = labelled(ax.collections, "NaN / Inf")
    zero = labelled(ax.collections, "zero")
    assert nonfinite.get_offsets()[:, 0].tolist() == [LAYERS.index("fc2")]
    assert zero.get_offsets()[:, 0].tolist() == [LAYERS.index("act2")]


def test_gradient_flow_pools_parameters_per_layer_and_averages_over_steps():
    obs = make_observations()
    ax = only_axes(F.gradient_flow_figure(obs))
    expected = [
        np.mean([math.hypot(grad_norm(f"{m}.weight", i), grad_norm(f"{m}.bias", i)) for i in range(12)])
        for m in ("fc1", "fc2", "fc3")
    ]
    np.testing.assert_allclose(ax.lines[0].get_ydata(), expected)
    assert tick_texts(ax) == ["fc1", "fc2", "fc3"]
    assert ax.get_yscale() == "log"
    assert "gradient" in ax.get_ylabel().lower() and "layer" in ax.get_xlabel()
    band = labelled(ax.collections, "min–max")
    assert band is not None


def test_gradient_flow_marks_a_layer_that_never_got_a_gradient():
    obs = make_observations()
    obs.forward_order.append("head")
    for record in obs.steps:
        record.grads_missing = ["head.weight"]
    ax = only_axes(F.gradient_flow_figure(obs))
    assert tick_texts(ax) == ["fc1", "fc2", "fc3", "head"]
    assert np.isnan(ax.lines[0].get_ydata()[3])
    assert labelled(ax.collections, "zero / no gradient").get_offsets()[:, 0].tolist() == [3]


def test_update_ratio_per_layer_with_the_1e3_line():
    obs = make_observations()
    ax = only_axes(F.update_ratio_figure(obs))
    expected = []
    for j, module in enumerate(("fc1", "fc2", "fc3")):
        ratios = []
        for record in obs.steps:
            names = [f"{module}.weight", f"{module}.bias"]
            u = math.sqrt(sum(record.update_norms[n] ** 2 for n in names))
            w = math.sqrt(sum(record.weight_norms[n] ** 2 for n in names))
            ratios.append(u / w)
        expected.append(np.mean(ratios))
    np.testing.assert_allclose(ax.lines[0].get_ydata(), expected)
    target = labelled(ax.lines, "rule of thumb")
    np.testing.assert_allclose(target.get_ydata(), [1e-3, 1e-3])
    assert ax.get_yscale() == "log" and tick_texts(ax) == ["fc1", "fc2", "fc3"]


def test_sequential_indices_get_their_class_name():
    obs = make_observations()
    rename = {"fc1": "0", "act1": "1", "fc2": "2", "act2": "3", "fc3": "4"}
    obs.forward_order = [""] + [rename[p] for p in LAYERS]
    obs.modules = {rename.get(k, k): type(m)(**{**vars(m), "path": rename.get(k, k)}) for k, m in obs.modules.items()}
    for record in obs.steps:
        for rec in record.activations:
            rec.path = rename.get(rec.path, rec.path)
    ax = only_axes(F.activation_std_figure(obs))
    assert tick_texts(ax) == ["0 (Linear)", "1 (ReLU)", "2 (Linear)", "3 (ReLU)", "4 (Linear)"]


def test_many_long_layer_names_are_truncated_and_thinned():
    obs = make_observations()
    names = [f"encoder.blocks.{i}.attention.output_projection" for i in range(100)]
    obs.forward_order = names
    obs.modules = {}
    for record in obs.steps:
        record.activations = []
    obs.steps[0].activations = [ActivationRecord(n, i, 0.0, 1.0, 10, False, False) for i, n in enumerate(names)]
    ax = only_axes(F.activation_std_figure(obs))
    labels = tick_texts(ax)
    assert len(ax.lines[0].get_ydata()) == 100
    assert 0 < len(labels) <= 40
    assert all(len(label) <= 24 for label in labels)
    assert labels[0].endswith("output_projection") and labels[0].startswith("…")


# -- loss and experiments ----------------------------------------------------------------
def test_loss_curve_with_the_chance_level_of_10_classes():
    obs = make_observations()
    ax = only_axes(F.loss_figure(obs))
    np.testing.assert_allclose(ax.lines[0].get_xdata(), range(12))
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [s.loss for s in obs.steps])
    chance = labelled(ax.lines, "chance level")
    np.testing.assert_allclose(chance.get_ydata(), [math.log(10)] * 2)
    assert "ln(10)" in chance.get_label()


def test_loss_curve_marks_the_first_nonfinite_loss_and_has_no_chance_line_when_unknown():
    obs = make_observations()
    for record in obs.steps:
        record.loss_graph = None
    obs.steps[9].loss = float("nan")
    obs.steps[10].loss = float("inf")
    ax = only_axes(F.loss_figure(obs))
    assert not [line for line in ax.lines if line.get_label().startswith("chance")]
    marker = labelled(ax.lines, "first non-finite loss")
    np.testing.assert_allclose(marker.get_xdata(), [9, 9])
    assert np.isnan(ax.lines[0].get_ydata()[9])


def test_chance_level_for_binary_cross_entropy_and_unknown_losses():
    obs = make_observations()
    obs.steps[0].loss_graph = LossGraph("bce_logits", "logits", n_classes=None)
    assert F.chance_level(obs)[0] == pytest.approx(math.log(2))
    obs.steps[0].loss_graph = LossGraph("mse")
    assert F.chance_level(obs) is None


def test_overfit_runs_as_recorded_by_the_checkup():
    exp = make_experiments()["overfit"]
    ax = only_axes(F.overfit_figure(exp))
    user, retry = exp["runs"]
    np.testing.assert_allclose(ax.lines[0].get_ydata(), user["losses"])
    np.testing.assert_allclose(ax.lines[0].get_xdata(), range(61))
    np.testing.assert_allclose(ax.lines[1].get_ydata(), retry["losses"])
    assert ax.lines[0].get_label() == "SGD(lr=0.01, momentum=0.9) (your optimizer): final 1.7 after 60 steps"
    assert ax.lines[1].get_label().startswith("Adam(lr=0.001): final 0.00")
    assert ax.lines[0].get_linewidth() > ax.lines[1].get_linewidth()
    assert ax.get_yscale() == "log" and "iteration" in ax.get_xlabel()
    assert ax.get_title() == "Overfit a tiny batch (8 samples)"


def test_overfit_curve_from_a_dict_or_a_plain_list():
    losses = [2.3 * 0.7 ** i for i in range(25)]
    ax = only_axes(F.overfit_figure({"losses": losses, "target": 0.05}))
    np.testing.assert_allclose(ax.lines[0].get_ydata(), losses)
    np.testing.assert_allclose(labelled(ax.lines, "target").get_ydata(), [0.05, 0.05])
    ax = only_axes(F.overfit_figure(losses))
    np.testing.assert_allclose(ax.lines[0].get_ydata(), losses)
    assert F.overfit_figure({"something": "else"}) is None


def test_overfit_nonfinite_loss_is_marked():
    ax = only_axes(F.overfit_figure({"runs": [{"optimizer": "SGD(lr=10)", "losses": [2.3, 40.0, float("nan")]}]}))
    assert np.isnan(ax.lines[0].get_ydata()[2])
    np.testing.assert_allclose(labelled(ax.lines, "SGD(lr=10): non-finite").get_xdata(), [2, 2])
    assert ax.get_yscale() == "linear"


@pytest.mark.parametrize("shape", ["trials", "runs", "keyed", "lists"])
def test_lr_sweep_accepts_several_shapes_and_sorts_by_lr(shape):
    runs = {0.001: [2.3, 2.25, 2.2], 0.01: [2.3, 2.0, 1.8], 0.1: [2.3, 3.0, float("nan")]}
    experiment = {
        "trials": {"base_lr": 0.01, "trials": {s: {"lr": lr, "losses": runs[lr]}
                                               for s, lr in (("10", 0.1), ("0.1", 0.001), ("1", 0.01))}},
        "runs": {"base_lr": 0.01, "runs": [{"lr": lr, "losses": c} for lr, c in runs.items()]},
        "keyed": {"base_lr": 0.01, "curves": {str(lr): c for lr, c in runs.items()}},
        "lists": {"lr": 0.01, "lrs": list(runs), "losses": list(runs.values())},
    }[shape]
    ax = only_axes(F.lr_sweep_figure(experiment))
    assert [line.get_label() for line in ax.lines] == ["lr 0.001", "lr 0.01 (chosen)", "lr 0.1 — diverged"]
    np.testing.assert_allclose(ax.lines[1].get_ydata(), runs[0.01])
    assert ax.lines[1].get_linewidth() > ax.lines[0].get_linewidth()


def test_lr_sweep_with_one_final_loss_per_lr_plots_loss_against_lr():
    ax = only_axes(F.lr_sweep_figure({"lrs": [0.1, 0.001, 0.01], "final_losses": [3.0, 2.1, 1.5],
                                      "base_lr": 0.01}))
    np.testing.assert_allclose(ax.lines[0].get_xdata(), [0.001, 0.01, 0.1])
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [2.1, 1.5, 3.0])
    assert ax.get_xscale() == "log"
    np.testing.assert_allclose(labelled(ax.lines, "chosen lr").get_xdata(), [0.01, 0.01])


def test_lr_range_curve_with_the_suggestion():
    exp = make_experiments()["lr_range"]
    ax = only_axes(F.lr_range_figure(exp))
    np.testing.assert_allclose(ax.lines[0].get_xdata(), exp["lrs"])
    np.testing.assert_allclose(ax.lines[0].get_ydata(), exp["losses"])
    np.testing.assert_allclose(labelled(ax.lines, "smoothed").get_ydata(), exp["smoothed"])
    np.testing.assert_allclose(labelled(ax.lines, "suggested lr").get_xdata(), [1e-3, 1e-3])
    np.testing.assert_allclose(labelled(ax.lines, "chosen lr").get_xdata(), [0.01, 0.01])
    assert ax.get_ylim()[1] == pytest.approx(2 * exp["losses"][0])  # the diverging tail is clipped
    assert any("clipped" in t.get_text() for t in ax.texts)
    assert ax.get_xscale() == "log"
    pairs = list(zip(exp["lrs"], exp["losses"]))
    np.testing.assert_allclose(only_axes(F.lr_range_figure(pairs)).lines[0].get_ydata(), exp["losses"])


def test_random_input_curves_train_and_holdout():
    exp = make_experiments()["random_input"]
    ax = only_axes(F.random_input_figure(exp))
    real = labelled(ax.lines, "real inputs: training loss")
    np.testing.assert_allclose(real.get_ydata(), exp["train_loss"]["real"])
    noise_hold = labelled(ax.lines, "noise inputs: held-out loss")
    np.testing.assert_allclose(noise_hold.get_ydata(), exp["holdout_loss"]["noise"])
    np.testing.assert_allclose(noise_hold.get_xdata(), [0, 5, 10, 15, 20])  # spread over 21 steps
    assert len(ax.lines) == 6
    no_holdout = dict(exp, holdout_loss=None)
    assert len(only_axes(F.random_input_figure(no_holdout)).lines) == 3


def test_skipped_experiments_draw_nothing():
    assert F.report_figures({"overfit": {"skipped": "no batch"}, "lr_range": {"skipped": "x"}}) == {}


def test_experiments_found_under_alias_keys_and_on_the_observations():
    report = Report(observations=make_observations())
    report.observations.experiments = {"overfit_tiny_batch": [1.0, 0.5, 0.1]}  # observer-side
    report.experiments = {"lr-range": {"lrs": [1e-4, 1e-3], "losses": [2.0, 1.0]}}
    assert {"overfit", "lr_range"} <= set(F.report_figures(report))


# -- files and the empty case -------------------------------------------------------------
def test_save_figures_writes_decodable_pngs_of_the_expected_size(tmp_path):
    paths = F.save_figures(make_report(), tmp_path / "figs")
    assert set(paths) == {"loss", "activation_std", "gradient_flow", "update_ratio",
                          "overfit", "lr_sweep", "lr_range", "random_input"}
    width, height = (int(v * F.FIGURE_DPI) for v in F.FIGURE_SIZE)
    for name, path in paths.items():
        image = mpimg.imread(path)
        assert image.shape[:2] == (height, width), name
        assert image[..., :3].std() > 0.01, f"{name} is blank"


def test_save_figures_takes_the_experiments_mapping_as_the_checkup_passes_it(tmp_path):
    paths = F.save_figures(make_experiments(), tmp_path)
    assert set(paths) == {"overfit", "lr_sweep", "lr_range", "random_input"}
    assert all(mpimg.imread(p).shape[:2] == (500, 1000) for p in paths.values())


def test_figure_to_rgb_matches_the_png_size():
    fig = F.loss_figure(make_observations())
    rgb = F.figure_to_rgb(fig)
    assert rgb.dtype == np.uint8 and rgb.shape == (500, 1000, 3)
    assert (rgb == 255).mean() > 0.5  # mostly white background, something drawn
    assert (rgb != 255).any()


def test_no_observations_no_figures(tmp_path):
    report = Report.from_dict(make_report().to_dict())
    assert report.observations is None
    assert F.report_figures(report) == {}
    assert F.save_figures(report, tmp_path) == {}
    empty = Observations()
    for make in (F.activation_std_figure, F.gradient_flow_figure, F.update_ratio_figure, F.loss_figure):
        assert make(None) is None and make(empty) is None
    for make in (F.overfit_figure, F.lr_sweep_figure, F.lr_range_figure):
        assert make(None) is None and make({}) is None


def test_figures_leave_pyplot_alone():
    # In a fresh interpreter: building and saving figures never imports pyplot.
    code = (
        "import sys, tempfile\n"
        "sys.path.insert(0, '.')\n"
        "sys.path.insert(0, 'tests')\n"
        "from test_figures import make_report\n"
        "from nndoctor.reporters.figures import save_figures\n"
        "save_figures(make_report(), tempfile.mkdtemp())\n"
        "print('matplotlib.pyplot' in sys.modules)\n"
    )
    root = __file__.rsplit("/tests/", 1)[0]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# -- the thresholds the checks used, the verdict, the flagged layer ---------------------
def test_activation_band_is_the_one_the_check_judged_with():
    obs = make_observations()
    obs.check_thresholds = {"activation-std": {"low": 0.2, "high": 3.0}}  # a user's override
    ax = only_axes(F.activation_std_figure(obs))
    low, high = patch_y_span(labelled(ax.patches, "healthy band"))
    assert (low, high) == (pytest.approx(0.2), pytest.approx(3.0))
    report = make_report()
    report.observations.check_thresholds = {"activation-std": {"low": 0.1, "high": 4.0}}
    ax = only_axes(F.report_figures(report)["activation_std"])
    assert patch_y_span(labelled(ax.patches, "healthy band")) == (pytest.approx(0.1), pytest.approx(4.0))


def test_update_ratio_draws_the_check_thresholds_and_their_override():
    obs = make_observations()
    ax = only_axes(F.update_ratio_figure(obs))
    assert labelled(ax.lines, "update-ratio warns below").get_ydata()[0] == pytest.approx(1e-6)  # defaults
    assert labelled(ax.lines, "update-ratio warns above").get_ydata()[0] == pytest.approx(1e-1)
    obs.check_thresholds = {"update-ratio": {"low": 1e-4, "high": 1e-2}}
    ax = only_axes(F.update_ratio_figure(obs))
    assert labelled(ax.lines, "update-ratio warns below").get_ydata()[0] == pytest.approx(1e-4)
    assert labelled(ax.lines, "update-ratio warns above").get_ydata()[0] == pytest.approx(1e-2)


def test_a_finding_puts_its_verdict_in_the_title_and_marks_the_flagged_layer():
    figures = F.report_figures(make_report())  # one activation-std warning at fc2
    ax = only_axes(figures["activation_std"])
    assert ax.get_title().endswith("activation-std: warning")
    flagged = labelled(ax.patches, "flagged layer")
    xs = flagged.get_patch_transform().transform(flagged.get_path().vertices)[:, 0]
    assert (xs.min(), xs.max()) == (pytest.approx(LAYERS.index("fc2") - 0.5), pytest.approx(LAYERS.index("fc2") + 0.5))
    assert [t.get_color() for t in ax.get_xticklabels() if t.get_text() == "fc2"] == ["tab:red"]
    # the figures of checks without a finding say nothing
    assert "warning" not in only_axes(figures["update_ratio"]).get_title()
    assert "—" not in only_axes(figures["overfit"]).get_title()


def test_experiment_verdict_in_the_title():
    report = make_report()
    report.findings.append(Finding("overfit-tiny-batch", "error", "The model cannot overfit", "not fitted", "fix"))
    ax = only_axes(F.report_figures(report)["overfit"])
    assert ax.get_title() == "Overfit a tiny batch (8 samples) — overfit-tiny-batch: error"


def test_random_input_uses_a_log_axis_when_the_curves_span_decades():
    exp = make_experiments()["random_input"]
    assert only_axes(F.random_input_figure(exp)).get_yscale() == "linear"  # all within 2.3x
    wide = dict(exp, train_loss={"real": [2.3 * 0.5 ** i for i in range(21)],
                                 "noise": [2.3] * 21, "zeros": [2.3] * 21})
    assert only_axes(F.random_input_figure(wide)).get_yscale() == "log"


def test_one_figure_size_for_observation_and_experiment_figures():
    sizes = {name: tuple(fig.get_size_inches()) for name, fig in F.report_figures(make_report()).items()}
    assert set(sizes.values()) == {F.FIGURE_SIZE}, sizes


def test_overfit_target_is_the_loss_fraction_the_check_used():
    report = make_report()
    start = make_experiments()["overfit"]["runs"][0]["losses"][0]
    ax = only_axes(F.report_figures(report)["overfit"])
    assert labelled(ax.lines, "target").get_ydata()[0] == pytest.approx(0.1 * start)  # the default
    report.observations.check_thresholds = {"overfit-tiny-batch": {"loss_fraction": 0.5}}
    ax = only_axes(F.report_figures(report)["overfit"])
    assert labelled(ax.lines, "target").get_ydata()[0] == pytest.approx(0.5 * start)


# -- the overfit figure draws the loss's floor and the target the check judged by ---------
def _soft_target_overfit() -> "OverfitRun":
    """BCE on soft targets: the loss cannot fall below the targets' entropy (0.5 here); the
    user's run approaches it, so the target the check judges by sits above 0.5."""
    from nndoctor._probe_records import OverfitCurve, OverfitRun

    losses = [0.5 + 0.2 * 0.9 ** i for i in range(41)]  # 0.7 -> 0.503
    return OverfitRun(n_samples=8, max_steps=40, task="binary",
                      runs=[OverfitCurve(optimizer="Adam(lr=0.001)", is_user=True, losses=losses)],
                      loss_floor=0.5, loss_floor_reason="the targets' entropy (BCE with soft targets)")


@pytest.mark.parametrize("loss_fraction", [0.1, 0.3])
def test_overfit_figure_draws_the_floor_and_the_target_above_it(loss_fraction):
    from nndoctor.checks.experiments import OverfitTinyBatch

    run = _soft_target_overfit()
    ax = only_axes(F.overfit_figure(run, loss_fraction=loss_fraction))
    floor_line = labelled(ax.lines, "the loss's floor on this batch: 0.5 (the targets' entropy")
    np.testing.assert_allclose(floor_line.get_ydata(), [0.5, 0.5])
    start = run.runs[0].losses[0]
    target = labelled(ax.lines, "target").get_ydata()[0]
    assert target == pytest.approx(0.5 + loss_fraction * (start - 0.5))  # not loss_fraction * start
    assert "floor" in labelled(ax.lines, "target").get_label()
    # The line drawn is the one the check judged by: the first loss at or under it is the
    # step OverfitTinyBatch.fitted_at names.
    check = OverfitTinyBatch(loss_fraction=loss_fraction)
    fitted = check.fitted_at(run.runs[0], run.loss_floor)
    losses = ax.lines[0].get_ydata()
    assert fitted is not None and fitted == int(np.argmax(losses <= target + 1e-12))


def test_overfit_floor_in_a_whole_report_with_the_threshold_the_check_used():
    report = make_report()
    report.experiments = dict(report.experiments, overfit=_soft_target_overfit())
    report.observations.check_thresholds = {"overfit-tiny-batch": {"loss_fraction": 0.5}}
    ax = only_axes(F.report_figures(report)["overfit"])
    start = report.experiments["overfit"].runs[0].losses[0]
    assert labelled(ax.lines, "target").get_ydata()[0] == pytest.approx(0.5 + 0.5 * (start - 0.5))
    np.testing.assert_allclose(labelled(ax.lines, "the loss's floor").get_ydata(), [0.5, 0.5])


def test_overfit_figure_without_a_floor_draws_none():
    ax = only_axes(F.overfit_figure(make_experiments()["overfit"], loss_fraction=0.1))
    assert not [line for line in ax.lines if "floor" in line.get_label()]
    assert F.overfit_floor(make_experiments()["overfit"]) == (0.0, None)
    assert F.overfit_floor({"loss_floor": float("nan")}) == (0.0, None)
