"""Healthy designs that used to get an error from the experiments, each next to the fault
that must still fire (issue 13, "Deterministic verdicts" and "Healthy-code calibration"):

- a bigram language model cannot memorise a batch (its logits see only the current
  token): its curve falls, then levels off; only a curve that does not move is an error;
- a learning-rate warm-up: the copy trains at the scheduler's base LR when the watched
  LRs rise, and a slow but steady fall is not a fault;
- a forward whose depth is drawn with Python's ``random``: the gradient check pins
  Python's and numpy's draws too, and an irreproducible forward is inconclusive.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from torch import nn

from nndoctor import Severity
from nndoctor._experiments import run_checkup
from nndoctor.checks.experiments import GradientCheck, OverfitTinyBatch
from nndoctor.probes.context import ProbeContext
from nndoctor.probes.overfit import warmup_lr

VOCAB, BLOCK, BATCH = 12, 8, 16


# ----------------------------------------------------------------------------- helpers
def _record(*runs: list[float], warmup: bool = False, floor: float = 0.0) -> dict:
    names = ["AdamW(lr=0.01)", "Adam(lr=0.001)"]
    return {"overfit": {
        "n_samples": 8, "max_steps": 100, "task": "classification", "loss_floor": floor, "warmup": warmup,
        "lr_note": "a warm-up" if warmup else None,
        "runs": [{"optimizer": names[i], "is_user": i == 0, "losses": losses} for i, losses in enumerate(runs)],
    }}


def _judge(record: dict) -> list:
    findings, _ = OverfitTinyBatch().run(_obs(record))
    return findings


def _obs(experiments: dict):
    from nndoctor._observations import Observations

    obs = Observations()
    obs.experiments.update(experiments)
    return obs


def steady(start: float, end: float, n: int = 101) -> list[float]:
    """A loss falling at a constant rate (a small LR cut short by the step budget)."""
    return [start + (end - start) * i / (n - 1) for i in range(n)]


def levels_off(start: float, end: float, n: int = 101, by: int = 20) -> list[float]:
    """A loss that reaches ``end`` within ``by`` steps and stays there (a floor)."""
    return [start + (end - start) * (1 - math.exp(-5 * i / by)) for i in range(n)]


# ------------------------------------------------------- the verdict follows the curve
@pytest.mark.parametrize("curve, severity, verdict", [
    (steady(4.75, 3.08), Severity.INFO, "learns_slowly"),        # bigram at lr 0.01: 35%, still falling
    ([0.3 + 3.26 * math.exp(-i / 30) for i in range(101)], Severity.INFO, "learns_slowly"),  # converging
    (levels_off(4.75, 1.9), Severity.WARNING, "plateau"),         # 60% of the way, then flat: a floor
    (levels_off(4.75, 3.1), Severity.ERROR, "stalls"),            # 35% of the way, then flat: squashed
    (steady(4.75, 4.5), Severity.ERROR, "barely_moves"),          # 5%: a graph cut
    (steady(4.75, 5.5), Severity.ERROR, "rises"),                 # rises from the first step
], ids=["steady-fall", "converging", "plateau-after-most", "stall-early", "barely-moves", "rises"])
def test_overfit_verdict_follows_the_shape_of_the_curve(curve, severity, verdict):
    (f,) = _judge(_record(curve))
    assert f.severity is severity, f.message
    assert f.evidence["verdict"] == verdict


def test_the_best_run_speaks_for_the_model():
    """nanoGPT mid warm-up: its own LR barely moves the loss, Adam(1e-3) falls 88% of
    the way and is still falling: the model learns."""
    (f,) = _judge(_record(steady(4.19, 4.0), steady(4.19, 0.515)))
    assert f.severity is Severity.INFO and f.evidence["verdict"] == "learns_slowly"
    # the same first run with a retry that does not move either: a bug
    (g,) = _judge(_record(steady(4.19, 4.0), steady(4.19, 4.1)))
    assert g.severity is Severity.ERROR and g.evidence["verdict"] == "barely_moves"


def test_a_fitting_retry_is_info_during_a_warmup_and_a_warning_otherwise():
    frozen = [4.0] * 101  # the user's LR too small to move anything
    fits = levels_off(4.0, 0.1, by=10)
    (during,) = _judge(_record(frozen, fits, warmup=True))
    assert during.severity is Severity.INFO and "warm-up" in during.message
    (low_lr,) = _judge(_record(frozen, fits))  # the real fault: an LR far too low
    assert low_lr.severity is Severity.WARNING and "learning rate" in low_lr.message


def test_a_slow_run_at_a_lowered_lr_is_info_and_at_the_built_lr_a_warning():
    """Adam fits, yours falls steadily but slowly: during a schedule that has lowered the
    LR (nanoGPT's warm-up) that is expected; at the LR the optimizer was built with it is
    also what parameters missing from the optimizer look like, so it stays a warning."""
    slow, fits = steady(4.0, 2.8), levels_off(4.0, 0.1, by=10)
    record = _record(slow, fits)
    record["overfit"]["lr_lowered"] = True
    (f,) = _judge(record)
    assert f.severity is Severity.INFO and f.evidence["verdict"] == "learns_slowly"
    (g,) = _judge(_record(slow, fits))
    assert g.severity is Severity.WARNING and "every parameter is in the optimizer" in g.fix
    # a lowered LR under which the loss does not move at all is still the LR's fault
    record = _record([4.0] * 101, fits)
    record["overfit"]["lr_lowered"] = True
    (h,) = _judge(record)
    assert h.severity is Severity.WARNING


def test_a_hand_lowered_lr_is_recorded():
    from nndoctor.probes.overfit import measure

    model = nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt.param_groups[0]["lr"] = 2e-4  # nanoGPT's get_lr(it) during warm-up
    record = measure(_ctx_with(opt, model), max_steps=2)
    assert record.lr_lowered and "below the 0.001 it built the optimizer with" in record.lr_note
    assert record.runs[0].optimizer.startswith("AdamW(lr=0.0002")  # trained at the script's LR
    opt.param_groups[0]["lr"] = 1e-3
    assert not measure(_ctx_with(opt, model), max_steps=2).lr_lowered


def test_a_blown_up_run_with_a_learning_retry_says_lower_the_lr():
    (f,) = _judge(_record(steady(2.0, 2.2, 6) + [math.nan], steady(2.0, 0.6)))
    assert f.severity is Severity.WARNING and "too high" in f.message
    (g,) = _judge(_record(steady(2.0, 2.2, 6) + [math.nan], steady(2.0, 1.95)))
    assert g.severity is Severity.ERROR


# -------------------------------------------------- a bigram language model, end to end
class Bigram(nn.Module):
    """Karpathy-style bigram LM: the logits of each position are a row of a table indexed
    by the current token (it cannot memorise a batch: its floor is the conditional
    entropy of the next token given the current one)."""

    def __init__(self, cut: bool = False) -> None:
        super().__init__()
        self.table = nn.Embedding(VOCAB, VOCAB)
        self.scale = nn.Parameter(torch.ones(()))
        self.cut = cut

    def forward(self, idx):
        logits = self.table(idx)
        if self.cut:  # the fault: the table is cut from the graph, only a scalar learns
            logits = logits.detach() * (1 + 0 * self.scale)
        return logits.reshape(-1, VOCAB)


def _text_batch(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    # a noisy cyclic text: the next token is mostly the current one + 1
    start = torch.randint(0, VOCAB, (BATCH, 1), generator=gen)
    steps = 1 + (torch.rand(BATCH, BLOCK, generator=gen) < 0.3).long() * torch.randint(
        1, VOCAB, (BATCH, BLOCK), generator=gen)
    seq = (start + torch.cumsum(steps, 1)) % VOCAB
    return seq[:, :-1], seq[:, 1:].reshape(-1)


def _bigram_checkup(model: nn.Module, lr: float, seed: int = 0):
    x, y = _text_batch(seed)

    class Flat(nn.Module):  # the batch dim of the targets is the flattened positions
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, idx):
            return self.inner(idx)

    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    # one sequence per sample: the loss flattens (batch, time) itself
    loss_fn = lambda out, t: nn.functional.cross_entropy(out, t.reshape(-1))  # noqa: E731
    return run_checkup(Flat(model), (x, y.reshape(BATCH, -1)), optimizer=opt, loss_fn=loss_fn,
                       select=["overfit-tiny-batch"], interventions=0)


@pytest.mark.parametrize("lr, verdict", [(1e-2, "learns_slowly"), (1e-1, "plateau")])
def test_bigram_model_is_not_an_error(lr, verdict):
    """At lr 0.01 (ng-video-lecture's) the loss still falls when the steps run out; at
    0.1 it reaches the bigram's floor and levels off there: info, then a warning."""
    for seed in range(3):
        torch.manual_seed(seed)
        report = _bigram_checkup(Bigram(), lr=lr, seed=seed)
        assert not report.errors, [(f.check, f.message) for f in report.errors]
        (f,) = report.by_check("overfit-tiny-batch")
        assert f.evidence["verdict"] == verdict


def test_bigram_with_its_table_cut_from_the_graph_is_an_error():
    torch.manual_seed(0)
    report = _bigram_checkup(Bigram(cut=True), lr=1e-2)
    (f,) = report.by_check("overfit-tiny-batch")
    assert f.severity is Severity.ERROR and f.evidence["verdict"] == "barely_moves"


# ------------------------------------------------------------------------- warm-up LR
def _ctx_with(opt: torch.optim.Optimizer, model: nn.Module, history=None) -> ProbeContext:
    ctx = ProbeContext(model, (torch.randn(8, 4), torch.randint(0, 3, (8,))), opt, nn.CrossEntropyLoss())
    if history is not None:
        ctx.lr_history = history
    return ctx


def _warmup_optimizer(steps: int):
    model = nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / 100))
    seen = []
    for _ in range(steps):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return model, opt, seen


def test_a_rising_lr_with_a_scheduler_base_trains_the_copy_at_the_base_lr():
    model, opt, seen = _warmup_optimizer(5)
    scale, note, warm = warmup_lr(_ctx_with(opt, model, seen))
    assert warm and scale == pytest.approx(1e-3 / opt.param_groups[0]["lr"])
    assert "base learning rate 0.001" in note


def test_a_hand_set_rising_lr_is_noted_as_a_warmup():
    model = nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4)  # nanoGPT: no scheduler, no initial_lr
    scale, note, warm = warmup_lr(_ctx_with(opt, model, [1e-5 * (i + 1) for i in range(20)]))
    assert warm and scale == 1.0 and "warm-up" in note


def test_a_decaying_scheduler_keeps_the_current_lr():
    model, opt, _ = _warmup_optimizer(1)
    opt.param_groups[0]["lr"] = 1e-6  # a decay far below the base: the LR the script trains at
    for history in (None, [1e-3, 5e-4, 1e-6]):
        scale, note, warm = warmup_lr(_ctx_with(opt, model, history))
        assert scale == 1.0 and not warm
        assert "below its base" in note


def test_the_probe_trains_at_the_base_lr_during_a_warmup():
    model, opt, seen = _warmup_optimizer(3)
    ctx = _ctx_with(opt, model, seen)
    from nndoctor.probes.overfit import measure

    record = measure(ctx, max_steps=3)
    assert record.warmup and record.runs[0].optimizer.startswith("AdamW(lr=0.001")
    assert opt.param_groups[0]["lr"] == pytest.approx(seen[-1] * 4 / 3)  # the user's optimizer untouched


# --------------------------------------------------- a depth drawn by Python's random
class RandomDepth(nn.Module):
    """jcjohnson's dynamic_net: the hidden layer is applied 0-3 times, the count drawn
    with ``random.randint`` on every forward (numpy adds a draw of its own)."""

    def __init__(self, wrong_backward: bool = False) -> None:
        super().__init__()
        self.inp, self.mid, self.out = nn.Linear(10, 16), nn.Linear(16, 16), nn.Linear(16, 3)
        self.wrong_backward = wrong_backward

    def forward(self, x):
        h = self.inp(x).clamp(min=0)
        for _ in range(random.randint(0, 3)):
            h = self.mid(h).clamp(min=0)
        h = h * float(1 + np.random.randint(0, 3))
        if self.wrong_backward:
            h = DoubledBackward.apply(h)
        return self.out(h)


class DoubledBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 1.0

    @staticmethod
    def backward(ctx, grad):
        return grad * 2.0  # the fault: the identity's gradient is 1


class Counter(nn.Module):
    """A forward that changes with every call (a call counter): not reproducible."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(10, 3)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.fc(x) * (1 + 0.01 * (self.calls % 7))


def _gradcheck(model: nn.Module, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(8, 10, generator=gen), torch.randint(0, 3, (8,), generator=gen)
    return run_checkup(model, (x, y), optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                       loss_fn=nn.CrossEntropyLoss(), select=["gradient-check"], interventions=0)


def test_random_depth_net_passes_the_gradient_check_every_time():
    for seed in range(5):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        report = _gradcheck(RandomDepth(), seed)
        assert "gradient-check" in report.checks_run
        assert not report.by_check("gradient-check"), [f.message for f in report.findings]
        model = report.experiments["gradcheck"].model
        assert model.nondeterministic is None and model.max_rel_error < 1e-6


def test_random_depth_net_with_a_wrong_backward_still_fails():
    random.seed(0)
    torch.manual_seed(0)
    (f,) = _gradcheck(RandomDepth(wrong_backward=True)).by_check("gradient-check")
    assert f.severity is Severity.ERROR and "DoubledBackward" in f.message


def test_the_checkup_leaves_python_and_numpy_draws_alone():
    random.seed(7)
    np.random.seed(7)
    expected = (random.random(), float(np.random.rand()))
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(0)
    _gradcheck(RandomDepth())
    assert (random.random(), float(np.random.rand())) == expected


def test_an_irreproducible_forward_is_inconclusive_not_an_error():
    torch.manual_seed(0)
    report = _gradcheck(Counter())
    (f,) = report.by_check("gradient-check")
    assert f.severity is Severity.INFO and f.evidence["reason"] == "nondeterministic"
    assert "Inconclusive" in f.message


def test_gradient_check_reads_a_nondeterministic_record():
    record = {"gradcheck": {"units": [], "model": {"dtype": "float64", "loss": 1.0,
                                                  "nondeterministic": "two evaluations differ"}}}
    (f,), _ = GradientCheck().run(_obs(record))
    assert f.severity is Severity.INFO and "two evaluations differ" in f.message


# ------------------------------------------- update-ratio: a linear model on raw features
def _ratio_obs(tensors: int, loss_falls: bool):
    from nndoctor._observations import Observations, ParamMeta, StepRecord

    obs = Observations(model_class="Net")
    names = [f"w{i}" for i in range(tensors)]
    for n in names:
        obs.params[n] = ParamMeta(n, n, (1, 4), 4, True, True, "linear", "weight", 4, 0.3, 0.0, False)
    for i in range(20):
        obs.steps.append(StepRecord(step=i, sampled=True, loss=(18.0 - 0.3 * i) if loss_falls else 15.0,
                                    backward_calls=1, update_norms={n: 0.2 for n in names},
                                    weight_norms={n: 1.0 for n in names}))
    return obs


@pytest.mark.parametrize("tensors, falls, severity", [
    (1, True, "info"),       # a linear model converging with large steps (pytorch/examples regression)
    (1, False, "warning"),   # the same steps while the loss stands still: too high
    (2, True, "warning"),    # a deeper model: the rule of thumb applies
])
def test_update_ratio_of_a_linear_model_follows_its_loss(tensors, falls, severity):
    from nndoctor.checks._registry import REGISTRY

    findings, _ = REGISTRY["update-ratio"]().run(_ratio_obs(tensors, falls))
    assert [f.severity.value for f in findings] == [severity], [f.message for f in findings]


def test_polynomial_regression_on_raw_features_is_not_a_warning():
    """Smooth-L1 fit of a degree-4 polynomial on x, x^2, x^3, x^4 (x ~ N(0, 1)), SGD at
    lr 0.1, a fresh batch every step: large relative steps, a falling loss."""
    from nndoctor import Doctor

    g = torch.Generator().manual_seed(0)
    true_w, true_b = torch.randn(4, 1, generator=g) * 0.5, torch.randn(1, generator=g) * 5
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    doctor = Doctor(model, optimizer=opt, select=["update-ratio"], sample_every=1)
    with doctor.watch():
        for _ in range(20):
            x = torch.randn(32, 1, generator=g)
            feats = torch.cat([x ** i for i in range(1, 5)], 1)
            opt.zero_grad()
            nn.functional.smooth_l1_loss(model(feats), feats @ true_w + true_b).backward()
            opt.step()
    findings = doctor.report().by_check("update-ratio")
    assert all(f.severity is Severity.INFO for f in findings), [f.message for f in findings]


def test_the_doctor_passes_the_watched_lrs_so_a_warmup_is_seen_end_to_end():
    """A watch over a hand-set warm-up (nanoGPT's get_lr) hands the LRs it saw to the
    checkup: the overfit record notes the warm-up; without the history it would not."""
    from nndoctor import Doctor

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    doctor = Doctor(model, optimizer=opt, loss_fn=nn.CrossEntropyLoss())
    with doctor.watch():
        for it in range(6):
            opt.param_groups[0]["lr"] = 1e-3 * (it + 1) / 100  # warm-up, rising every step
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    report = doctor.checkup((x, y), select=["overfit-tiny-batch"])
    record = report.observations.experiments["overfit"]
    assert record.warmup and "rising" in record.lr_note
    report = doctor.checkup((x, y), select=["overfit-tiny-batch"], lr_history=[])
    assert not report.observations.experiments["overfit"].warmup


def test_a_nearly_fitted_run_with_a_fitting_retry_is_info_and_a_half_way_one_a_warning():
    """minGPT's adder: AdamW(5e-4) covers ~97% of the way to the target in 100 steps and is
    still falling while Adam(1e-3) fits: a few more steps, not a fault. A run that stops
    half-way (parameters missing from the optimizer) keeps its warning."""
    nearly = steady(2.32, 0.30)  # target 0.232: 97% of the way, still falling
    fits = levels_off(2.32, 0.05, by=60)
    (f,) = _judge(_record(nearly, fits))
    assert f.severity is Severity.INFO and f.evidence["verdict"] == "nearly_fitted"
    assert f.evidence["progress_to_target"] > 0.9
    half = steady(2.32, 1.2)  # about half the way
    (g,) = _judge(_record(half, fits))
    assert g.severity is Severity.WARNING and g.evidence["verdict"] == "optimizer_settings"
