"""The checkup experiments: each one fires on a real fault, stays silent on healthy
CNN / MLP / LSTM / transformer setups, and every threshold is tested at its edge.

Sizes are tiny on purpose (the whole file runs in well under a minute on 2 cores).
Models are built under fixed seeds, so every verdict here is deterministic.
"""

from __future__ import annotations

import math

import matplotlib.image as mpimg
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nndoctor._experiments import lr_suggestions, run_checkup
from nndoctor._observations import Observations
from nndoctor._report import Severity
from nndoctor.checks._base import SECTIONS
from nndoctor.checks.experiments import GradientCheck, LrSweep, OverfitTinyBatch, RandomInputLoss


MINE = ["overfit-tiny-batch", "random-input-loss", "lr-sweep", "gradient-check"]
K = 4


# ------------------------------------------------------------------------------ data
def blobs(n: int = 64, d: int = 20, *, seed: int = 0, shuffle_labels: bool = False):
    """Gaussian class blobs: labels are learnable from the inputs (and from 16 samples)."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(K, d, generator=g) * 1.5
    y = torch.randint(0, K, (n,), generator=g)
    x = centers[y] + torch.randn(n, d, generator=g)
    if shuffle_labels:  # the classic data-loader bug: labels shuffled on their own
        y = y[torch.randperm(n, generator=g)]
    return x, y


def images(n: int = 32, *, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    templates = torch.randn(K, 3, 8, 8, generator=g)
    y = torch.randint(0, K, (n,), generator=g)
    return templates[y] + 0.7 * torch.randn(n, 3, 8, 8, generator=g), y


def sequences(n: int = 32, *, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(K, 5, generator=g) * 1.5
    y = torch.randint(0, K, (n,), generator=g)
    return centers[y][:, None, :] + torch.randn(n, 6, 5, generator=g), y


def tokens(n: int = 32, *, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 8, (n, 6), generator=g)
    y = torch.randint(0, K, (n,), generator=g)
    x[:, 0] = y  # the label is the first token
    return x, y


# ---------------------------------------------------------------------------- models
def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, K))


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(16, K),
    )


class LSTMClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(5, 16, batch_first=True)
        self.head = nn.Linear(16, K)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


class TinyTransformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(8, 16)
        self.encoder = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.1, batch_first=True)
        self.head = nn.Linear(16, K)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x))[:, 0])


def lstm() -> nn.Module:
    torch.manual_seed(0)
    return LSTMClassifier()


def transformer() -> nn.Module:
    torch.manual_seed(0)
    return TinyTransformer()


class IgnoresInput(nn.Module):
    """The fault: `forward` never uses its input."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, K))

    def forward(self, x):
        return self.body(torch.zeros_like(x))


class WrongScale(torch.autograd.Function):
    """y = x * w with a backward that doubles the gradient of x."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x * w

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        return grad * w * 2, (grad * x).sum(0)


class GoodScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x * w

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        return grad * w, (grad * x).sum(0)


class Scale(nn.Module):
    def __init__(self, function: type) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.linspace(0.5, 1.5, 32))
        self.function = function

    def forward(self, x):
        return self.function.apply(x, self.w)


class DetachedNorm(nn.Module):
    """A custom layer whose backward is wrong: the norm is detached (stop-gradient bug)."""

    def forward(self, x):
        return x / x.norm(dim=1, keepdim=True).detach()


class RealNorm(nn.Module):
    def forward(self, x):
        return x / x.norm(dim=1, keepdim=True)


def mlp_with(layer: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 32), nn.Tanh(), layer, nn.Linear(32, K))


class TokenScaler(nn.Module):
    """A custom layer that receives token ids (no input gradient, no parameters)."""

    def forward(self, ids):
        return ids * 1


class TokenModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ids = TokenScaler()
        self.embed = nn.Embedding(8, 16)
        self.head = nn.Linear(16, K)

    def forward(self, x):
        return self.head(self.embed(self.ids(x)).mean(1))


def adam(model: nn.Module, lr: float = 1e-3) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=lr)


def bad_ids(report, min_severity: str = "warning") -> set[str]:
    return {f.check for f in report.findings if f.severity.rank >= Severity.parse(min_severity).rank}


# ======================================================================== healthy
HEALTHY = {
    "mlp-adam": (mlp, lambda: blobs(32), lambda m: adam(m)),
    "mlp-sgd-momentum": (mlp, lambda: blobs(32), lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)),
    "cnn-adam": (cnn, lambda: images(32), lambda m: adam(m)),
    "lstm-adam": (lstm, lambda: sequences(32), lambda m: adam(m, 3e-3)),
    "transformer-adamw": (transformer, lambda: tokens(32), lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3)),
}


@pytest.fixture(scope="module", params=sorted(HEALTHY))
def healthy_report(request):
    make_model, make_batch, make_opt = HEALTHY[request.param]
    model = make_model()
    return request.param, run_checkup(model, make_batch(), optimizer=make_opt(model), select=MINE)


def test_healthy_setups_are_silent(healthy_report):
    name, report = healthy_report
    assert set(report.checks_run) == set(MINE), (name, report.checks_skipped)
    assert bad_ids(report, "info") == set(), (name, [f.message for f in report.findings])


# ====================================================================== overfit
def test_overfit_fires_when_output_ignores_input():
    x, y = blobs(32)
    report = run_checkup(IgnoresInput(), (x, y), select=["overfit-tiny-batch"])
    (finding,) = report.by_check("overfit-tiny-batch")
    assert finding.severity is Severity.ERROR
    assert "barely moves" in finding.message
    assert finding.evidence["n_samples"] == 8
    assert len(finding.evidence["curve"]) >= 10 and finding.evidence["final_accuracy"] < 1.0


def test_overfit_blames_the_optimizer_when_adam_fits():
    model = mlp()
    x, y = blobs(32)
    report = run_checkup(model, (x, y), optimizer=torch.optim.SGD(model.parameters(), lr=1e-6), select=["overfit-tiny-batch"])
    (finding,) = report.by_check("overfit-tiny-batch")
    assert finding.severity is Severity.WARNING
    assert "Adam(lr=0.001) fits" in finding.message and "SGD(lr=1e-06)" in finding.message
    assert finding.evidence["retry_fitted_at"] is not None
    runs = report.experiments["overfit"]["runs"]
    assert [r["is_user"] for r in runs] == [True, False]


def test_overfit_regression_uses_the_loss_only():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32), nn.Tanh(), nn.Linear(32, 1))
    x, _ = blobs(32)
    target = x[:, :1] * 2 + 1
    report = run_checkup(model, (x, target), loss_fn=nn.MSELoss(), select=["overfit-tiny-batch"])
    data = report.experiments["overfit"]
    assert data["task"] == "regression" and data["runs"][0]["accuracies"] is None
    assert report.by_check("overfit-tiny-batch") == []


# ================================================================ random inputs
def test_random_input_fires_when_output_ignores_input():
    report = run_checkup(IgnoresInput(), blobs(32), select=["random-input-loss"])
    (finding,) = report.by_check("random-input-loss")
    assert finding.severity is Severity.ERROR
    assert "do not depend on its input" in finding.message
    assert max(finding.evidence["output_change"].values()) == 0.0


def test_random_input_fires_when_the_data_is_all_zeros():
    x, y = blobs(32)
    report = run_checkup(mlp(), (torch.zeros_like(x), y), select=["random-input-loss"])
    (finding,) = report.by_check("random-input-loss")
    assert finding.severity is Severity.ERROR
    assert "all-zero inputs" in finding.message and finding.evidence["train_gain"] < 0.1


def test_random_input_warns_when_labels_are_shuffled_apart_from_inputs():
    x, y = blobs(128, shuffle_labels=True)
    model = mlp()
    # the pairing experiment: 64 training + 64 held-out samples, against permuted labels
    # (fewer than 48 a side: inconclusive, and silent)
    report = run_checkup(model, (x, y), optimizer=adam(model), select=["random-input-loss", "overfit-tiny-batch"])
    (finding,) = report.by_check("random-input-loss")
    assert finding.severity is Severity.WARNING
    assert "held-out" in finding.message and finding.evidence["p_value"] >= 0.1
    assert finding.evidence["n_holdout"] == 64 and finding.evidence["fit_fraction"] <= 0.4
    # memorisation still works: overfitting the batch cannot see this fault
    assert report.by_check("overfit-tiny-batch") == []


def test_random_input_same_batch_with_real_labels_is_silent():
    x, y = blobs(64)
    model = mlp()
    report = run_checkup(model, (x, y), optimizer=adam(model), select=["random-input-loss"])
    assert report.by_check("random-input-loss") == []
    hold = report.experiments["random_input"]["holdout_loss"]
    assert min(hold["real"]) < 0.5 * hold["real"][0]


# ====================================================================== LR sweep
def test_lr_sweep_flags_a_far_too_low_lr():
    model = mlp()
    report = run_checkup(model, blobs(32), optimizer=torch.optim.SGD(model.parameters(), lr=1e-6), select=["lr-sweep"])
    (finding,) = report.by_check("lr-sweep")
    assert finding.severity is Severity.WARNING and "too low" in finding.message
    assert finding.evidence["decades_below"] >= 2
    rng = report.experiments["lr_range"]
    assert set(rng["suggestions"]) == {"steep", "valley", "minimum/10"}
    assert rng["spread_decades"] == pytest.approx(
        math.log10(max(rng["suggestions"].values()) / min(rng["suggestions"].values()))
    )


def test_lr_sweep_x10_clearly_better_when_x1_stalls():
    model = mlp()
    report = run_checkup(model, blobs(32), optimizer=torch.optim.Adam(model.parameters(), lr=1e-4), select=["lr-sweep"])
    (finding,) = report.by_check("lr-sweep")
    assert finding.evidence["better"] == "x10", finding.message
    assert finding.evidence["noise_ratio"] >= 3 and finding.evidence["gain"] >= 0.1


def test_lr_sweep_error_when_the_lr_diverges():
    model = mlp()
    report = run_checkup(model, blobs(32), optimizer=torch.optim.SGD(model.parameters(), lr=10.0), select=["lr-sweep"])
    (finding,) = report.by_check("lr-sweep")
    assert finding.severity is Severity.ERROR and finding.evidence["better"] == "x0.1"
    assert "diverges" in finding.message


def test_lr_range_stops_at_four_times_the_best_loss():
    model = mlp()
    sgd = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    report = run_checkup(model, blobs(32), optimizer=sgd, select=["lr-sweep"])
    rng = report.experiments["lr_range"]
    assert rng["stopped_early"] and rng["diverged_at"] is not None
    assert len(rng["lrs"]) < 100
    assert rng["smoothed"][-1] > 4 * min(rng["smoothed"][:-1])
    assert all(b > a for a, b in zip(rng["lrs"], rng["lrs"][1:]))


def test_lr_suggestion_estimators_on_a_known_curve():
    lrs = [10 ** (-6 + 6 * i / 99) for i in range(100)]
    # a loss that falls fastest at 1e-3 (log-LR -3) and bottoms out at 1e-1
    losses = [2.0 - math.tanh(2 * (math.log10(lr) + 3)) + (max(0.0, math.log10(lr) + 1) ** 2) * 5 for lr in lrs]
    out = lr_suggestions(lrs, losses)
    assert out["suggestions"]["steep"] == pytest.approx(1e-3, rel=0.2)
    assert out["suggestions"]["minimum/10"] == pytest.approx(lrs[min(range(10, 95), key=lambda i: losses[i])] / 10)
    assert 1e-4 < out["suggestions"]["valley"] < 1e-1
    assert out["suggested_lr"] == sorted(out["suggestions"].values())[1]


# ================================================================ gradient check
def test_gradcheck_names_a_custom_function_with_a_wrong_backward():
    report = run_checkup(mlp_with(Scale(WrongScale)), blobs(16), select=["gradient-check"])
    findings = report.by_check("gradient-check")
    assert findings, report.experiments["gradcheck"]
    messages = " ".join(f.message for f in findings)
    assert "WrongScale" in messages and findings[0].where == "2"
    units = report.experiments["gradcheck"]["units"]
    assert {u["kind"] for u in units} == {"module", "function"}
    assert not any(GradientCheck().unit_passed(u) for u in units)  # the check judges the records


def test_gradcheck_passes_a_correct_custom_function():
    report = run_checkup(mlp_with(Scale(GoodScale)), blobs(16), select=["gradient-check"])
    assert report.by_check("gradient-check") == []
    units = report.experiments["gradcheck"]["units"]
    assert units and all(GradientCheck().unit_passed(u) for u in units)
    assert report.experiments["gradcheck"]["model"]["max_rel_error"] < 1e-6


def test_gradcheck_names_a_custom_module_with_a_wrong_backward():
    report = run_checkup(mlp_with(DetachedNorm()), blobs(16), select=["gradient-check"])
    (finding,) = report.by_check("gradient-check")
    assert finding.where == "2" and "DetachedNorm" in finding.message
    model = report.experiments["gradcheck"]["model"]
    assert model["max_rel_error"] > 1e-3  # the whole-model check sees it too


def test_gradcheck_whole_model_localises_without_custom_units():
    # A backward hook that scales the gradient flowing out of a stock layer: no custom
    # module or Function, only (b) sees it; the wrong gradients are the upstream layer's.
    model = mlp_with(nn.Identity())
    model[3].register_full_backward_hook(lambda module, grad_in, grad_out: (grad_in[0] * 1.5,))
    report = run_checkup(model, blobs(16), select=["gradient-check"])
    (finding,) = report.by_check("gradient-check")
    assert finding.where == "0" and "`0.weight`" in finding.message
    assert "3.weight" not in finding.message
    assert report.experiments["gradcheck"]["units"] == []


class NoGradBackbone(nn.Module):
    """A frozen feature extractor run under no_grad (its parameters still require grad)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(20, 32), nn.Tanh())
        self.head = nn.Linear(32, K)

    def forward(self, x):
        with torch.no_grad():
            features = self.backbone(x)
        return self.head(features)


def test_gradcheck_leaves_unreached_parameters_to_frozen_layer():
    torch.manual_seed(0)
    report = run_checkup(NoGradBackbone(), blobs(16), select=["gradient-check"])
    assert report.checks_run == ["gradient-check"] and report.by_check("gradient-check") == []
    assert report.experiments["gradcheck"]["model"]["no_gradient"] == ["backbone.0.weight", "backbone.0.bias"]


def test_gradcheck_real_norm_is_silent():
    report = run_checkup(mlp_with(RealNorm()), blobs(16), select=["gradient-check"])
    assert report.by_check("gradient-check") == []
    (unit,) = report.experiments["gradcheck"]["units"]
    assert GradientCheck().unit_passed(unit) and unit.method == "gradcheck" and unit.mismatch is None


def test_gradcheck_skips_token_id_unit_but_checks_the_model():
    torch.manual_seed(0)
    report = run_checkup(TokenModel(), tokens(16), select=["gradient-check"])
    assert "gradient-check" in report.checks_run
    (unit,) = report.experiments["gradcheck"]["units"]
    assert "integer (token ids)" in unit["skipped"]
    assert report.experiments["gradcheck"]["model"]["max_rel_error"] < 1e-6


# ====================================================================== chance
def test_init_probe_records_plain_data_for_chance_level_loss():
    model = mlp()
    with torch.no_grad():
        model[3].bias.copy_(torch.tensor([3.0, 0.0, 0.0, 0.0]))
    x, y = blobs(32)
    report = run_checkup(model, (x, y), select=["chance-level-loss"])
    init = report.experiments["init"]
    assert init["n_classes"] == K and init["loss_kind"] == "cross_entropy"
    assert init["final_bias"] == [3.0, 0.0, 0.0, 0.0] and init["final_layer"] == "3"
    counts = torch.bincount(y, minlength=K).double() / len(y)
    assert init["label_prior"] == pytest.approx(counts.tolist())
    assert init["predicted_prior"][0] > 0.6 and sum(init["predicted_prior"]) == pytest.approx(1.0)
    torch.manual_seed(0)  # the probe's seed: the same dropout mask, so the same loss
    with torch.no_grad():
        assert init["loss"] == pytest.approx(float(F.cross_entropy(model(x), y)), rel=1e-6)
    assert init["mode"] == "train"
    assert report.observations.experiments["init"] is init


def test_chance_level_loss_is_judged_from_the_init_probe():
    model = mlp()
    with torch.no_grad():
        model[3].weight.mul_(30)  # confidently wrong logits at init
    report = run_checkup(model, blobs(32), select=["chance-level-loss"])
    assert report.checks_run == ["chance-level-loss"]
    assert report.by_check("chance-level-loss")
    silent = run_checkup(mlp(), blobs(32), select=["chance-level-loss"])
    assert silent.checks_run == ["chance-level-loss"] and not silent.findings


def test_checkup_under_no_grad_still_trains_its_copies():
    model = mlp()
    with torch.no_grad():
        report = run_checkup(model, blobs(32), optimizer=adam(model), select=["overfit-tiny-batch"])
    assert report.checks_run == ["overfit-tiny-batch"] and not report.findings


# =================================================================== skips, API
def test_skips_carry_reasons():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, K))
    for p in model.parameters():
        p.requires_grad_(False)
    report = run_checkup(model, blobs(16), select=MINE)
    skipped = {s["check"]: s["reason"] for s in report.checks_skipped}
    assert set(skipped) == set(MINE)
    assert all("no trainable parameters" in r for r in skipped.values()), skipped


def test_checks_skip_without_experiment_data():
    for cls in (OverfitTinyBatch, RandomInputLoss, LrSweep, GradientCheck):
        findings, reason = cls().run(Observations())
        assert findings == [] and "did not run" in reason


def test_missing_loss_fn_is_a_clear_error():
    x, _ = blobs(16)
    with pytest.raises(ValueError, match="loss_fn"):
        run_checkup(mlp(), (x, torch.randn(16, K)))


def test_select_ignore_and_unknown_option():
    report = run_checkup(mlp(), blobs(16), select="lr-sweep,gradient-check", ignore=["lr-sweep"])
    assert report.checks_run == ["gradient-check"] and set(report.experiments) == {"gradcheck"}
    with pytest.raises(TypeError, match="unknown options"):
        run_checkup(mlp(), blobs(16), overfit_stepz=3)


def test_dict_and_tuple_inputs():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(20, K), nn.Linear(20, K)

        def forward(self, left, right):
            return self.a(left) + self.b(right)

    torch.manual_seed(0)
    x, y = blobs(16)
    for inputs in ((x, x * 0.5), {"left": x, "right": x * 0.5}):
        report = run_checkup(Two(), (inputs, y), select=["overfit-tiny-batch", "random-input-loss"])
        assert set(report.checks_run) == {"overfit-tiny-batch", "random-input-loss"}, report.checks_skipped


def test_figures_are_written(tmp_path):
    model = mlp()
    report = run_checkup(model, blobs(32), optimizer=adam(model), select=MINE, figures_dir=tmp_path)
    figures = report.experiments["figures"]
    assert set(figures) == {"overfit", "lr_sweep", "lr_range", "random_input"}
    for path in figures.values():
        image = mpimg.imread(path)
        assert image.shape[:2] == (500, 1000)  # the one figure size of every nndoctor figure
        assert image[..., :3].std() > 0.01  # not a blank canvas


# ============================================================ thresholds (pure)
def obs_with(**experiments) -> Observations:
    obs = Observations()
    obs.experiments.update(experiments)
    return obs


@pytest.mark.parametrize(
    "final,fires",
    [(0.2, False), (0.2001, True)],
    ids=["at-loss_fraction", "just-above"],
)
def test_threshold_overfit_loss_fraction(final, fires):
    runs = [{"optimizer": "Adam(lr=0.001)", "losses": [2.0, 1.0, final], "accuracies": None}]
    findings, _ = OverfitTinyBatch().run(obs_with(overfit={"runs": runs, "n_samples": 8}))
    assert bool(findings) is fires


@pytest.mark.parametrize("acc,fires", [(1.0, False), (0.875, True)], ids=["all-right", "one-wrong"])
def test_threshold_overfit_min_accuracy(acc, fires):
    runs = [{"optimizer": "SGD", "losses": [2.0, 1.5, 1.2], "accuracies": [0.25, 0.5, acc]}]
    findings, _ = OverfitTinyBatch().run(obs_with(overfit={"runs": runs, "n_samples": 8}))
    assert bool(findings) is fires


@pytest.mark.parametrize("steps,fires", [(100, False), (101, True)], ids=["within-budget", "past-budget"])
def test_threshold_overfit_max_steps(steps, fires):
    losses = [2.0] * steps + [0.1]  # reaches the target at step `steps`
    runs = [{"optimizer": "SGD", "losses": losses, "accuracies": None}]
    findings, _ = OverfitTinyBatch().run(obs_with(overfit={"runs": runs, "n_samples": 8}))
    assert bool(findings) is fires


def random_data(change=0.5, real_end=0.1, zeros_end=1.0, noise_end=0.2, hold_real=(1.0, 0.5), hold_base=(1.0, 0.9)):
    return {
        "output_change": {"noise": change, "zeros": change},
        "steps": 30,
        "n_train": 16,
        "n_holdout": 16,
        "train_loss": {"real": [1.0, real_end], "noise": [1.0, noise_end], "zeros": [1.0, zeros_end]},
        "holdout_loss": {"real": list(hold_real), "noise": list(hold_base), "zeros": list(hold_base)},
    }


@pytest.mark.parametrize("change,fires", [(1e-6, False), (9.9e-7, True)], ids=["at", "below"])
def test_threshold_random_input_min_output_change(change, fires):
    findings, _ = RandomInputLoss().run(obs_with(random_input=random_data(change=change)))
    assert any("do not depend" in f.message for f in findings) is fires


EPS = 1e-9  # thresholds are tested just either side of the edge (float rounding)


@pytest.mark.parametrize("real_end,fires", [(0.9 - EPS, False), (0.9 + EPS, True)], ids=["gain-above", "gain-below"])
def test_threshold_random_input_min_train_gain(real_end, fires):
    findings, _ = RandomInputLoss().run(obs_with(random_input=random_data(real_end=real_end)))
    assert any("all-zero inputs" in f.message for f in findings) is fires


@pytest.mark.parametrize("noise_end,fires", [(0.9 - EPS, True), (0.9 + EPS, False)], ids=["noise-learns", "nothing-learns"])
def test_random_input_train_gain_needs_noise_to_learn(noise_end, fires):
    # real no better than zeros: conclusive only if the model learns from noise at all
    data = random_data(real_end=0.97, noise_end=noise_end)
    findings, _ = RandomInputLoss().run(obs_with(random_input=data))
    assert any("all-zero inputs" in f.message for f in findings) is fires


@pytest.mark.parametrize("real_end,fires", [(0.92 - EPS, False), (0.92 + EPS, True)], ids=["half-above", "half-below"])
def test_threshold_random_input_max_share_of_noise_gain(real_end, fires):
    # noise gains 16% of the start; real inputs must gain under half of that (8%) to count as
    # "no advantage over zeros"
    data = random_data(real_end=real_end, noise_end=0.84)
    findings, _ = RandomInputLoss().run(obs_with(random_input=data))
    assert any("all-zero inputs" in f.message for f in findings) is fires


@pytest.mark.parametrize("real_end,fires", [(0.7 - EPS, True), (0.7 + EPS, False)], ids=["fitted", "not-fitted"])
def test_threshold_random_input_min_fit_for_holdout(real_end, fires):
    data = random_data(real_end=real_end, hold_real=(1.0, 0.95))  # no held-out gain at all
    findings, _ = RandomInputLoss().run(obs_with(random_input=data))
    assert any("held-out" in f.message for f in findings) is fires


@pytest.mark.parametrize("best,fires", [(0.85 - EPS, False), (0.85 + EPS, True)], ids=["gain-above", "gain-below"])
def test_threshold_random_input_min_holdout_gain(best, fires):
    findings, _ = RandomInputLoss().run(obs_with(random_input=random_data(hold_real=(1.0, best))))
    assert any("held-out" in f.message for f in findings) is fires


def sweep(low, one, high, base_lr=1e-3):
    def curve(end):  # 25 steps from 1.0 to `end`, flat (noise-free) tail
        return [1.0] + [1.0 - (1.0 - end) * min(1, i / 10) for i in range(1, 26)]

    return {
        "base_lr": base_lr,
        "optimizer": "SGD",
        "steps": 25,
        "trials": {
            "0.1": {"lr": base_lr / 10, "losses": curve(low)},
            "1": {"lr": base_lr, "losses": curve(one)},
            "10": {"lr": base_lr * 10, "losses": curve(high)},
        },
    }


@pytest.mark.parametrize("high,fires", [(0.85 + EPS, False), (0.85 - EPS, True)], ids=["gain-below", "gain-above"])
def test_threshold_lr_sweep_min_gain(high, fires):
    # x1 removes 5% of the loss (stalled); x10 removes 15% -/+ EPS: a gain of 0.1 -/+ EPS
    findings, _ = LrSweep().run(obs_with(lr_sweep=sweep(0.99, 0.95, high)))
    assert bool(findings) is fires


@pytest.mark.parametrize("amplitude,fires", [(0.046, True), (0.052, False)], ids=["beyond-3-sigma", "within-3-sigma"])
def test_threshold_lr_sweep_min_noise_ratio(amplitude, fires):
    data = sweep(0.99, 0.95, 0.7)
    tail = data["trials"]["10"]["losses"]
    for i in range(len(tail) - 5, len(tail)):  # a zig-zag tail: step-to-step noise
        tail[i] += amplitude if i % 2 else -amplitude
    p1, _, n1 = LrSweep.trial_stats(data["trials"]["1"]["losses"])
    p10, _, n10 = LrSweep.trial_stats(tail)
    ratio = (p10 - p1) / math.hypot(n1, n10)
    assert (ratio >= 3) is fires and 2.5 < ratio < 3.5  # the two cases straddle 3
    findings, _ = LrSweep().run(obs_with(lr_sweep=data))
    assert bool(findings) is fires


@pytest.mark.parametrize("one,fires", [(0.9 + EPS, True), (0.9 - EPS, False)], ids=["stalled", "not-stalled"])
def test_threshold_lr_sweep_stalled_progress(one, fires):
    findings, _ = LrSweep().run(obs_with(lr_sweep=sweep(0.99, one, 0.3)))
    assert bool(findings) is fires


def range_data(suggestions, diverged_at=None):
    values = list(suggestions.values())
    return {
        "suggestions": suggestions,
        "spread_decades": math.log10(max(values) / min(values)),
        "suggested_lr": sorted(values)[1],
        "diverged_at": diverged_at,
    }


FLAT = (1.0, 1.0, 1.0)  # no trial moves: only the range test can judge


@pytest.mark.parametrize("lowest,fires", [(1e-4 * (1 - 1e-6), False), (1e-4 * (1 + 1e-6), True)], ids=["under-2-decades", "over-2-decades"])
def test_threshold_lr_sweep_range_decades(lowest, fires):
    rng = range_data({"steep": lowest, "valley": 1e-3, "minimum/10": 3e-3})
    findings, _ = LrSweep().run(obs_with(lr_sweep=sweep(*FLAT, base_lr=1e-6), lr_range=rng))
    assert bool(findings) is fires


@pytest.mark.parametrize("top,fires", [(10 ** -2.5 * (1 - 1e-6), True), (10 ** -2.5 * (1 + 1e-6), False)], ids=["agree", "disagree"])
def test_threshold_lr_sweep_max_spread_decades(top, fires):
    rng = range_data({"steep": 1e-4, "valley": 1e-3, "minimum/10": top})
    findings, _ = LrSweep().run(obs_with(lr_sweep=sweep(*FLAT, base_lr=1e-7), lr_range=rng))
    assert bool(findings) is fires


def test_lr_range_divergence_point_flags_a_too_high_lr():
    rng = range_data({"steep": 1e-3, "valley": 1e-3, "minimum/10": 2e-3}, diverged_at=0.5)
    (finding,) = LrSweep().run(obs_with(lr_sweep=sweep(*FLAT, base_lr=1.0), lr_range=rng))[0]
    assert "too high" in finding.message and finding.evidence["diverged_at"] == 0.5


@pytest.mark.parametrize("err,fires", [(1e-3, False), (1.01e-3, True)], ids=["at", "above"])
def test_threshold_gradient_check_max_relative_error(err, fires):
    data = {
        "units": [],
        "model": {"dtype": "float64", "max_rel_error": err, "directions": 5, "localized": [{"param": "3.weight", "module": "3", "rel_error": err}]},
    }
    findings, _ = GradientCheck().run(obs_with(gradcheck=data))
    assert bool(findings) is fires


def test_thresholds_gradcheck_tolerances_reach_torch_gradcheck():
    # atol/rtol are handed to torch.autograd.gradcheck: a 0.5% error passes at rtol 1e-2 only
    class Off(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 1.0

        @staticmethod
        def backward(ctx, grad):
            return grad * 1.005

    class Layer(nn.Module):
        def forward(self, x):
            return Off.apply(x)

    model = mlp_with(Layer())
    strict = run_checkup(model, blobs(16), select=["gradient-check"])
    loose = run_checkup(
        model, blobs(16), select=["gradient-check"],
        thresholds={"gradient-check": {"gradcheck_rtol": 1e-2, "gradcheck_atol": 1e-2, "max_relative_error": 1e-2}},
    )
    assert strict.by_check("gradient-check") and not loose.by_check("gradient-check")


def test_check_classes_follow_the_unit_rules():
    for cls in (OverfitTinyBatch, RandomInputLoss, LrSweep, GradientCheck):
        assert list(cls.sections()) == list(SECTIONS), cls
        assert cls.kind == "experiment" and cls.citations
        assert all(t.meaning for t in cls.thresholds)


def test_time_budget_skips_the_probes_not_started_in_time():
    x, y = blobs(32)
    model = mlp()
    report = run_checkup(model, (x, y), optimizer=adam(model), time_budget=0.0)
    reasons = {s["check"]: s["reason"] for s in report.checks_skipped}
    # the first experiment that trains (the LR sweep) always starts (the budget is checked
    # between probes), the rest are skipped
    assert "time budget" in reasons["gradient-check"] and "time budget" in reasons["overfit-tiny-batch"]
    assert "lr-sweep" not in reasons


@pytest.mark.parametrize("real_end,severity", [(0.99 + EPS, "error"), (0.99 - 1e-6, "warning")],
                         ids=["no-gain", "small-gain"])
def test_threshold_random_input_max_gain_for_error(real_end, severity):
    # zeros end at 1.0 (the start): a gain of at most 1% of the start is "no advantage"
    data = random_data(real_end=real_end, noise_end=0.5)
    findings, _ = RandomInputLoss().run(obs_with(random_input=data))
    [found] = [f for f in findings if "all-zero inputs" in f.message]
    assert found.severity.value == severity
