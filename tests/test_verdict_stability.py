"""Verdicts that flipped from one run of the same healthy script to the next (issue 13,
"the same script gives the same verdicts 10 runs out of 10"), each beside the fault that
must still fire.

- An unseeded polynomial regression (a fresh random batch of x, x^2, x^3, x^4 features
  every step) has a loss that jumps between 13 and 71 within 20 steps. In one run of five
  its 20 watched losses showed no trend, and `loss-not-decreasing` and `update-ratio`
  warned; in the other four the same script's loss fell visibly. A trend that noise of
  that size could not show is inconclusive, not a warning.
- A Linear layer that scores attention over a tanh RNN's states (a seq2seq with
  attention, unseeded) outputs a std of 0.07-0.12: its input, a recurrent state, is
  small by design, so the value sits on the 0.1 edge of the warning and random inits
  fall either side of it.
- A bigram table trained with AdamW at 1e-2 removes 9% of the loss in the sweep's 25
  steps, steadily; x10 removes 60%. Short trials always favour the larger LR: that is a
  hint (info), not "your LR is too low", which needs a trial that does not move.
- A sweep the time budget cut short (a loaded machine measures slower steps) shows less
  progress at every LR; its "too low" / "too high" comparison would change with the
  machine's load, so it is inconclusive.
"""

from __future__ import annotations

import math
import random

import pytest

from nndoctor import Severity
from nndoctor._observations import Observations, ParamMeta, StepRecord
from nndoctor.checks._registry import REGISTRY
from nndoctor.checks._util import smallest_detectable_drop


def _scattered(seed: int, n: int = 20, level: float = 25.0, trend: float = 0.0) -> list[float]:
    """Losses of fresh heavy-tailed batches around ``level`` (log-normal, sigma 0.6), with
    ``trend`` the relative change from the first step to the last."""
    rng = random.Random(seed)
    return [level * (1 + trend * i / (n - 1)) * math.exp(rng.gauss(0.0, 0.6)) for i in range(n)]


def _loss_obs(values: list[float]) -> Observations:
    obs = Observations(model_class="Net")
    for i, v in enumerate(values):
        obs.steps.append(StepRecord(step=i, sampled=True, loss=v, backward_calls=1))
    return obs


def _run(check_id: str, obs: Observations) -> list:
    findings, _ = REGISTRY[check_id]().run(obs)
    return findings


# ------------------------------------------------------------- loss-not-decreasing
def test_smallest_detectable_drop_scales_with_the_scatter():
    quiet = [2.0 + 0.01 * ((i * 7) % 5 - 2) for i in range(20)]
    loud = [2.0 + 1.0 * ((i * 7) % 5 - 2) for i in range(20)]
    assert smallest_detectable_drop(loud) == pytest.approx(100 * smallest_detectable_drop(quiet), rel=1e-6)
    # a straight line has no scatter: any fall would show
    assert smallest_detectable_drop([3.0 - 0.1 * i for i in range(20)]) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("seed", range(12))
def test_a_loss_too_scattered_to_show_a_trend_never_warns(seed):
    """Twelve draws of the same flat, heavy-tailed loss: whatever the draw, no warning
    (silent when the draw happens to slope down, info when nothing shows)."""
    findings = _run("loss-not-decreasing", _loss_obs(_scattered(seed)))
    assert all(f.severity is Severity.INFO for f in findings), [f.message for f in findings]
    for f in findings:
        assert f.evidence["kind"] == "too_noisy" and f.evidence["detectable_drop"] > 0.2
        assert "Inconclusive" in f.message


def test_a_flat_loss_with_little_scatter_still_warns():
    flat = [2.0 + 0.05 * ((i * 7) % 5 - 2) for i in range(20)]
    (f,) = _run("loss-not-decreasing", _loss_obs(flat))
    assert f.severity is Severity.WARNING and f.evidence["detectable_drop"] < 0.2


def test_a_scattered_loss_that_climbs_is_still_an_error():
    climbing = [v * 10.0 ** (i / 19) for i, v in enumerate(_scattered(3))]
    (f,) = _run("loss-not-decreasing", _loss_obs(climbing))
    assert f.severity is Severity.ERROR and "diverges" in f.message


# -------------------------------------------------------- update-ratio, linear model
def _linear_obs(values: list[float], tensors: int = 1) -> Observations:
    obs = _loss_obs(values)
    names = [f"w{i}" for i in range(tensors)]
    for n in names:
        obs.params[n] = ParamMeta(n, n, (1, 4), 4, True, True, "linear", "weight", 4, 0.3, 0.0, False)
    for rec in obs.steps:
        rec.update_norms = {n: 0.3 for n in names}
        rec.weight_norms = {n: 1.0 for n in names}
    return obs


@pytest.mark.parametrize("seed", range(6))
def test_a_linear_model_whose_scattered_loss_does_not_rise_is_info(seed):
    (f,) = _run("update-ratio", _linear_obs(_scattered(seed)))
    assert f.severity is Severity.INFO and f.evidence["kind"] == "linear_model", f.message


def test_a_linear_model_whose_loss_climbs_still_warns():
    climbing = [25.0 * 1.15 ** i * (1 + 0.05 * ((i * 7) % 3 - 1)) for i in range(20)]
    (f,) = _run("update-ratio", _linear_obs(climbing))
    assert f.severity is Severity.WARNING and "too high" in f.message


def test_a_deeper_model_with_a_scattered_loss_still_warns():
    (f,) = _run("update-ratio", _linear_obs(_scattered(1), tensors=2))
    assert f.severity is Severity.WARNING


# ------------------------------------------------- activation-std after a recurrent layer
def _seq2seq_obs(attn_std: float, after_std: float | None = None, first: str = "rnn") -> Observations:
    """encoder RNN -> attention Linear (-> a further Linear) -> output Linear, as a tanh
    seq2seq with attention calls them; ``first`` is the encoder's module category."""
    from nndoctor._observations import ActivationRecord, ModuleMeta

    obs = Observations(model_class="Seq2Seq")
    layers = [("enc", "RNN" if first == "rnn" else "Linear", "recurrent" if first == "rnn" else "linear", 0.2),
              ("attn", "Linear", "linear", attn_std)]
    if after_std is not None:
        layers.append(("proj", "Linear", "linear", after_std))
    layers.append(("out", "Linear", "linear", 1.0))
    obs.modules[""] = ModuleMeta("", "Seq2Seq", "container", False, 0, True)
    for path, cls, cat, _ in layers:
        obs.modules[path] = ModuleMeta(path, cls, cat, True, 10, True)
    obs.forward_order = [p for p, *_ in layers] + [""]
    for i in range(6):
        rec = StepRecord(step=i, sampled=True, loss=2.0 - 0.1 * i, training=True, backward_calls=1)
        rec.activations = [ActivationRecord(p, k, 0.0, s, 1000, False, False, 1) for k, (p, _, _, s) in enumerate(layers)]
        obs.steps.append(rec)
    return obs


@pytest.mark.parametrize("attn_std", [0.07, 0.0917, 0.12])
def test_a_layer_reading_recurrent_states_is_info_on_either_side_of_the_edge(attn_std):
    """The attention Linear's std across unseeded runs (0.07-0.12, the warning's edge at
    0.1): the verdict no longer depends on which side of it the init fell."""
    findings = _run("activation-std", _seq2seq_obs(attn_std))
    assert all(f.severity is Severity.INFO for f in findings), [f.message for f in findings]
    if attn_std < 0.1:
        (f,) = findings
        assert f.evidence["kind"] == "after_recurrent" and f.evidence["fed_by"] == {"attn": "enc"}


def test_a_signal_that_keeps_shrinking_after_the_recurrent_layer_still_warns():
    findings = _run("activation-std", _seq2seq_obs(0.07, after_std=0.005))
    (warning,) = [f for f in findings if f.severity is Severity.WARNING]
    assert warning.evidence["layers"] == ["proj"]
    (info,) = [f for f in findings if f.severity is Severity.INFO]
    assert info.evidence["layers"] == ["attn"]


def test_the_same_small_layer_after_a_linear_encoder_still_warns():
    (f,) = _run("activation-std", _seq2seq_obs(0.07, first="linear"))
    assert f.severity is Severity.WARNING and f.evidence["layers"] == ["attn"]


# ------------------------------------------------------------------------- lr-sweep
def _line(start: float, end: float, steps: int = 25, wobble: float = 0.0) -> list[float]:
    """A loss falling at a constant rate, with an alternating wobble of ``wobble``."""
    return [start + (end - start) * i / steps + (wobble if i % 2 else -wobble) * (i > 0) for i in range(steps + 1)]


def _sweep_obs(low: list[float], one: list[float], high: list[float], *, base_lr: float = 0.01,
               shortened_from: int | None = None, range_test: dict | None = None) -> Observations:
    obs = Observations()
    obs.experiments["lr_sweep"] = {
        "base_lr": base_lr, "optimizer": "AdamW", "steps": len(one) - 1, "n_samples": 16,
        "shortened_from": shortened_from, "trials": {
            "0.1": {"lr": base_lr / 10, "losses": low}, "1": {"lr": base_lr, "losses": one},
            "10": {"lr": base_lr * 10, "losses": high}}}
    if range_test is not None:
        obs.experiments["lr_range"] = range_test
    return obs


def test_x10_faster_while_x1_falls_steadily_is_a_hint():
    """The bigram table's sweep (AdamW 1e-2): x1 removes 9% in 25 steps, x10 60%."""
    (f,) = _run("lr-sweep", _sweep_obs(_line(4.75, 4.71), _line(4.75, 4.34), _line(4.75, 1.88)))
    assert f.severity is Severity.INFO and f.evidence["kind"] == "x1_learning", f.message
    assert f.evidence["better"] == "x10" and "hint" in f.message


def test_x10_faster_while_x1_crawls_still_warns():
    (f,) = _run("lr-sweep", _sweep_obs(_line(4.75, 4.749), _line(4.75, 4.70), _line(4.75, 1.88)))
    assert f.severity is Severity.WARNING and "too low" in f.message


def test_x1_falling_within_its_own_noise_still_warns():
    """5% removed, but the tail jumps by 0.2 a step (dropout): not clearly falling."""
    one = _line(2.0, 1.9, wobble=0.1)
    (f,) = _run("lr-sweep", _sweep_obs(_line(2.0, 1.99), one, _line(2.0, 0.8, wobble=0.01)))
    assert f.severity is Severity.WARNING and "too low" in f.message


@pytest.mark.parametrize("low, one, high, better", [
    (_line(4.75, 4.749, 10), _line(4.75, 4.74, 10), _line(4.75, 3.0, 10), "x10"),
    (_line(2.0, 0.8, 10), _line(2.0, 1.9, 10), _line(2.0, 2.5, 10), "x0.1"),
], ids=["x10-better", "x01-better"])
def test_a_sweep_cut_short_by_the_budget_is_inconclusive(low, one, high, better):
    """The same trials judged at full length give a warning; cut from 25 to 10 steps by
    the budget (a loaded machine), the comparison is inconclusive."""
    (full,) = _run("lr-sweep", _sweep_obs(low, one, high))
    assert full.severity is Severity.WARNING and full.evidence["better"] == better
    (cut,) = _run("lr-sweep", _sweep_obs(low, one, high, shortened_from=25))
    assert cut.severity is Severity.INFO and cut.evidence["kind"] == "shortened"
    assert cut.evidence["better"] == better and "Inconclusive" in cut.message and "10 steps (of 25)" in cut.message


def test_a_divergence_in_a_shortened_sweep_is_still_an_error():
    """AdamW at lr 20 on a loaded machine: its sweep cut to 17 steps still diverges."""
    low, one, high = _line(9.82, 137.0, 17), _line(9.82, 1310.0, 17), _line(9.82, math.inf, 17)
    (f,) = _run("lr-sweep", _sweep_obs(low, one, high, base_lr=20.0, shortened_from=25))
    assert f.severity is Severity.ERROR and "diverges" in f.message and f.evidence["better"] == "x0.1"


def test_a_range_test_cut_short_gives_no_verdict():
    flat = _line(2.0, 2.0)
    rng = {"suggestions": {"steep": 1e-2, "valley": 2e-2, "minimum/10": 3e-2}, "spread_decades": 0.5,
           "suggested_lr": 2e-2, "diverged_at": None}
    (full,) = _run("lr-sweep", _sweep_obs(flat, flat, flat, base_lr=1e-6, range_test=rng))
    assert full.severity is Severity.WARNING and full.evidence["better"] == "range-test"
    assert _run("lr-sweep", _sweep_obs(flat, flat, flat, base_lr=1e-6, range_test={**rng, "shortened_from": 100})) == []


def test_the_checkup_marks_a_probe_the_budget_shortened():
    """End to end: a budget too small for the full sweep cuts it, and the record says so."""
    import torch
    from torch import nn

    from nndoctor._experiments import run_checkup

    import time

    class Slow(nn.Module):  # a step that really costs its time (the planner times a copy)
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))

        def forward(self, x):
            time.sleep(0.04)
            return self.net(x)

    torch.manual_seed(0)
    model = Slow()
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    # 3 s cannot afford 3 x 25 sweep steps of >= 0.04 s (plus their evaluations)
    report = run_checkup(model, (x, y), optimizer=opt, select=["lr-sweep"], time_budget=3.0, step_seconds=0.04)
    record = report.experiments["lr_sweep"]
    assert record["shortened_from"] == 25 and record["steps"] < 25
    full = run_checkup(model, (x, y), optimizer=opt, select=["lr-sweep"])
    assert full.experiments["lr_sweep"]["shortened_from"] is None


# ---------------------------------------------------------------- random-input-loss
def _random_input_obs(shortened_from: int | None, change: float = 0.5) -> Observations:
    """Real inputs no better than zeros after the training (the warning's evidence)."""
    obs = Observations()
    obs.experiments["random_input"] = {
        "output_change": {"noise": change, "zeros": change}, "steps": 10 if shortened_from else 30,
        "n_train": 16, "n_holdout": 16, "shortened_from": shortened_from,
        "train_loss": {"real": [1.0, 0.97], "noise": [1.0, 0.5], "zeros": [1.0, 0.97]},
        "holdout_loss": {"real": [1.0, 0.99], "noise": [1.0, 0.9], "zeros": [1.0, 0.9]},
    }
    return obs


def test_a_random_input_training_cut_short_is_inconclusive():
    (full,) = _run("random-input-loss", _random_input_obs(None))
    assert full.severity is Severity.ERROR and "all-zero inputs" in full.message
    (cut,) = _run("random-input-loss", _random_input_obs(30))
    assert cut.severity is Severity.INFO and cut.evidence["kind"] == "shortened" and "10 steps (of 30)" in cut.message


def test_outputs_that_ignore_the_input_are_judged_without_training_even_when_cut():
    (f,) = _run("random-input-loss", _random_input_obs(30, change=0.0))
    assert f.severity is Severity.ERROR and "do not depend" in f.message


# ------------------------------------------------ overfit: a language model's first plateau
def _plateau_obs(label_entropy: float | None, output_change: dict | None) -> Observations:
    """word_language_model's LSTM with Adam(1e-3): 9.82 -> 4.66, flat for the last 30 steps."""
    curve = [4.66 + (9.82 - 4.66) * math.exp(-i / 12) for i in range(101)]
    obs = Observations()
    obs.experiments["overfit"] = {
        "n_samples": 8, "max_steps": 100, "task": "classification", "label_entropy": label_entropy,
        "runs": [{"optimizer": "Adam(lr=0.001)", "is_user": False, "losses": curve}]}
    if output_change is not None:
        obs.experiments["random_input"] = {"output_change": output_change, "steps": 30}
    return obs


def test_a_plateau_at_the_batch_token_entropy_of_a_model_that_reads_its_input_is_info():
    (f,) = _run("overfit-tiny-batch", _plateau_obs(4.6, {"noise": 0.4, "zeros": 0.3}))
    assert f.severity is Severity.INFO and f.evidence["verdict"] == "label_prior_plateau", f.message
    assert f.evidence["label_entropy"] == 4.6 and "4.66" in f.message


@pytest.mark.parametrize("entropy, change", [
    (4.6, None),                           # no random-input experiment: the input may be cut off
    (4.6, {"noise": 0.0, "zeros": 0.0}),   # the outputs ignore the input: a bug's plateau
    (3.0, {"noise": 0.4, "zeros": 0.3}),   # levelled off far above the token entropy
    (None, {"noise": 0.4, "zeros": 0.3}),  # not a classification loss
], ids=["no-random-input", "input-ignored", "above-prior", "no-prior"])
def test_other_plateaus_keep_the_warning(entropy, change):
    (f,) = _run("overfit-tiny-batch", _plateau_obs(entropy, change))
    assert f.severity is Severity.WARNING and f.evidence["verdict"] == "plateau", f.message


def test_the_overfit_probe_records_the_token_entropy_without_ignored_targets():
    import torch
    from torch import nn

    from nndoctor._experiments import run_checkup

    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 8), nn.Flatten(), nn.Linear(32, 10))
    x = torch.randint(0, 10, (8, 4))
    y = torch.tensor([1, 1, 2, 3, -1, -1, -1, -1])  # four ignored: the entropy of {1, 1, 2, 3}
    report = run_checkup(model, (x, y), loss_fn=nn.CrossEntropyLoss(ignore_index=-1),
                         select=["overfit-tiny-batch"], interventions=0)
    expected = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert report.experiments["overfit"]["label_entropy"] == pytest.approx(expected)


# ------------------------------------------- a scattered divergence is still a divergence
LINEAR_EVAL_X100 = [2.36, 28.79, 48.74, 42.9, 90.9, 47.24, 23.16, 33.89]  # the zoo's linear probe at 100x LR


def test_a_loss_that_jumps_away_from_its_start_for_good_is_an_error_however_it_scatters():
    (f,) = _run("loss-not-decreasing", _loss_obs(LINEAR_EVAL_X100))
    assert f.severity is Severity.ERROR and f.evidence["left_start"] and "never comes back" in f.message


def test_a_linear_model_whose_loss_jumped_away_from_its_start_still_warns():
    (f,) = _run("update-ratio", _linear_obs(LINEAR_EVAL_X100))
    assert f.severity is Severity.WARNING and "too high" in f.message


def test_a_healthy_scattered_loss_returns_below_its_jump_margin():
    """The regression run that warned: its later losses go back below its first."""
    losses = [24.1, 23.6, 33.8, 22.0, 40.5, 17.3, 12.8, 71.1, 18.0, 14.7, 39.6, 27.2, 49.3, 19.4, 29.9,
              15.3, 28.6, 25.4, 37.0, 21.9]
    (f,) = _run("loss-not-decreasing", _loss_obs(losses))
    assert f.severity is Severity.INFO and f.evidence["kind"] == "too_noisy"
    (g,) = _run("update-ratio", _linear_obs(losses))
    assert g.severity is Severity.INFO and g.evidence["kind"] == "linear_model"


def test_the_regression_run_that_warned_on_the_final_code_is_inconclusive():
    """A second draw of the unseeded regression: losses 17.7-38.9, a median fall of 17% that
    20 steps cannot resolve (a fall of 34% would be needed): inconclusive, not a warning."""
    losses = [26.86, 29.63, 17.71, 20.62, 25.9, 28.64, 32.9, 33.39, 26.15, 27.89, 38.86, 18.25, 25.31, 26.45,
              20.16, 24.97, 22.86, 20.86, 18.34, 35.88]
    (f,) = _run("loss-not-decreasing", _loss_obs(losses))
    assert f.severity is Severity.INFO and f.evidence["kind"] == "too_noisy", f.message
    assert 0.3 < f.evidence["detectable_drop"] < 0.4
