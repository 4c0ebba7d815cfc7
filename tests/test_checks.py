"""Each passive check on hand-built observations (no model, no torch): one case where
it fires, one where it stays silent, and one at its threshold — as a data table."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import pytest

from nndoctor._observations import (
    ActivationRecord,
    InputRecord,
    LabelRecord,
    LossGraph,
    LossValueRecord,
    ModuleMeta,
    NonFiniteEvent,
    Observations,
    ParamMeta,
    StepRecord,
)
from nndoctor.checks import REGISTRY


# ------------------------------------------------------------------ builders
def base(n_steps=10, sampled=True) -> Observations:
    obs = Observations(model_class="Net", n_parameters=100, n_trainable=100)
    for path, cat, leaf in [("", "container", False), ("fc1", "linear", True), ("act", "relu", True),
                            ("fc2", "linear", True), ("fc3", "linear", True)]:
        obs.modules[path] = ModuleMeta(path, cat.title(), cat, leaf, 10 if cat == "linear" else 0, True)
    for mod, fan_in in [("fc1", 16), ("fc2", 32), ("fc3", 32)]:
        obs.params[f"{mod}.weight"] = ParamMeta(f"{mod}.weight", mod, (32, fan_in), 32 * fan_in, True, True,
                                                "linear", "weight", fan_in, 0.58 / math.sqrt(fan_in), 0.0, False)
        obs.params[f"{mod}.bias"] = ParamMeta(f"{mod}.bias", mod, (32,), 32, True, True, "linear", "bias")
    obs.forward_order = ["fc1", "act", "fc2", "fc3", ""]
    obs.called_modules = {"fc1", "act", "fc2", "fc3", ""}
    obs.has_optimizer = True
    for i in range(n_steps):
        obs.steps.append(StepRecord(step=i, sampled=sampled, loss=2.0 - 0.1 * i, training=True, backward_calls=1,
                                    grad_norms={n: 0.1 for n in obs.params}))
    return obs


def with_acts(obs: Observations, std: dict[str, float]) -> Observations:
    for rec in obs.steps:
        rec.activations = [ActivationRecord(p, i, 0.0, s, 1000, False, False, 32) for i, (p, s) in enumerate(std.items())]
    return obs


def with_acts_spatial1() -> Observations:
    obs = with_acts(base(), {"fc1": 0.01, "act": 0.5, "fc2": 0.6, "fc3": 1.0})
    for rec in obs.steps:
        rec.activations[0].spatial = 1  # e.g. a squeeze-excitation conv on a pooled map
    return obs


def early_then_small() -> Observations:
    obs = base()
    for rec in obs.steps:
        r = 0.5 if rec.step < 5 else 1e-3
        rec.weight_norms = {n: 10.0 for n in obs.params}
        rec.update_norms = {n: 10.0 * r for n in obs.params}
    return obs


def losses(values) -> Observations:
    obs = base(len(values))
    for rec, v in zip(obs.steps, values):
        rec.loss = v
    return obs


def graph(kind, fed_by=None, k=10, multi=False, reduction="mean") -> Callable[[float], Observations]:
    def build(loss0=math.log(10)):
        obs = base()
        obs.steps[0].loss = loss0
        obs.steps[0].loss_graph = LossGraph(kind=kind, fed_by=fed_by, n_classes=k, multi_term=multi, reduction=reduction)
        return obs
    return build


def loss_values(case: str) -> Observations:
    """The loss input judged by its values, on every sampled step (issue 10, 4b)."""
    obs = base()
    for rec in obs.steps:
        if case in ("relu", "healthy-ce"):
            relu_ = case == "relu"
            rec.loss_graph = LossGraph(kind="cross_entropy", fed_by="log_softmax", n_classes=4, norm_dim=1,
                                       upstream="ReluBackward0" if relu_ else "AddmmBackward0", input_shape=(32, 4))
            rec.loss_values = LossValueRecord("classes", 32, 4, row_norm_error=0.0, col_norm_error=2.0,
                                              logits_min=0.0 if relu_ else None,
                                              logits_zero_fraction=0.5 if relu_ else None)
        elif case in ("wrong-dim", "wrong-dim-values-only"):
            rec.loss_graph = LossGraph(kind="nll", fed_by="log_softmax", n_classes=4, input_shape=(32, 4),
                                       norm_dim=0 if case == "wrong-dim" else None)
            rec.loss_values = LossValueRecord("classes", 32, 4, row_norm_error=2.3, col_norm_error=0.0)
        elif case in ("indices", "real-targets", "two-values"):
            rec.loss_graph = LossGraph(kind="mse", input_shape=(32, 1), target_shape=(32, 1))
            rec.loss_values = LossValueRecord("regression", 32, 1, output_std=0.5, target_std=1.1,
                                              target_integer=case != "real-targets", target_min=0.0,
                                              target_max=3.0 if case == "indices" else 1.0,
                                              target_classes={"indices": 4, "two-values": 2}.get(case, 30))
        elif case in ("broadcast", "same-shape"):
            rec.loss_graph = LossGraph(kind="mse", input_shape=(32, 32) if case == "broadcast" else (32, 1),
                                       broadcast_from=(32, 1) if case == "broadcast" else None)
    return obs


def predictions(case: str) -> Observations:
    """What the loss was fed on 8 sampled steps (prediction-collapse)."""
    obs = base(8)
    for rec in obs.steps:
        late = rec.step >= 4
        if case in ("imbalance", "imbalance-weighted", "minority-never-seen"):
            pos = 0.0 if case == "minority-never-seen" else (1 / 32 if rec.step % 2 else 0.0)
            rec.loss_values = LossValueRecord("binary", 32, 1, predicted_positive_rate=0.0 if late else 0.3,
                                              positive_rate=pos, predicted_share=1.0 if late else 0.7,
                                              predicted_class=0, target_share=1 - pos, target_class=0,
                                              pos_weight=case == "imbalance-weighted")
        elif case in ("one-class", "early-collapse", "balanced", "from-start"):
            collapsed = (case == "one-class" and late) or (case == "early-collapse" and not late) or case == "from-start"
            rec.loss_values = LossValueRecord("classes", 32, 4, predicted_share=0.97 if collapsed else 0.4,
                                              predicted_class=2, target_share=0.3, target_class=rec.step % 4,
                                              predicted_classes=1 if collapsed else 4, target_classes=4)
        elif case in ("constant-output", "regression"):
            rec.loss_values = LossValueRecord("regression", 32, 1, output_std=1e-4 if case == "constant-output" and late else 0.8,
                                              target_std=1.0, target_integer=False, target_min=-2.0, target_max=2.0,
                                              target_classes=5)
    return obs


def relu(dead, units=100, samples=64) -> Observations:
    obs = base()
    obs.relu_units = {"act": {"units": units, "dead": dead, "samples": samples}}
    return obs


def saturated(frac) -> Observations:
    obs = base()
    obs.modules["act"].category = "tanh"
    for rec in obs.steps:
        rec.activations = [ActivationRecord("act", 0, 0.0, 0.9, 100, False, False, 8, saturated_fraction=frac)]
    return obs


def grad_norms(norm_at: Callable[[int], float], n=10) -> Observations:
    obs = base(n)
    for rec in obs.steps:
        rec.grad_norms = {k: 0.0 for k in obs.params}
        rec.grad_norms["fc1.weight"] = norm_at(rec.step)  # the whole norm in one tensor: exact
    return obs


def vanishing(ratio) -> Observations:
    obs = base()
    for rec in obs.steps:
        rec.grad_norms = {"fc1.weight": ratio * math.sqrt(32 * 16), "fc2.weight": 0.5 * math.sqrt(32 * 32),
                          "fc3.weight": 1.0 * math.sqrt(32 * 32)}
    return obs


def stale(norm) -> Observations:
    obs = base()
    obs.updates_seen = 9
    for rec in obs.steps[1:]:
        rec.stale_grad_norm = norm
    return obs


def updates(ratio) -> Observations:
    obs = base()
    for rec in obs.steps:
        rec.weight_norms = {n: 10.0 for n in obs.params}
        rec.update_norms = {n: 10.0 * ratio for n in obs.params}
    return obs


def init_scale(scale) -> Observations:
    obs = base()
    for m in obs.params.values():
        if m.role == "weight":
            m.init_std = scale / math.sqrt(m.fan_in)
    return obs


def inputs(mean, std, lo=-3.0, hi=3.0) -> Observations:
    obs = base()
    for rec in obs.steps:
        rec.input = InputRecord("float32", (32, 16), mean, std, lo, hi, 0.0, (rec.step, rec.step))
    return obs


def labels(counts_per_batch, k=4) -> Observations:
    obs = base(len(counts_per_batch))
    obs.steps[0].loss_graph = LossGraph("cross_entropy", "log_softmax", k)
    for rec, counts in zip(obs.steps, counts_per_batch):
        rec.labels = LabelRecord(sum(counts.values()), counts, min(counts), max(counts), (rec.step, 0.0))
    return obs


def repeated(n_same) -> Observations:
    obs = base(5)
    for rec in obs.steps:
        fp = (0.0, 0.0) if rec.step <= n_same else (float(rec.step), 1.0)
        rec.input = InputRecord("float32", (32, 16), 0.0, 1.0, -3, 3, 0.0, fp)
    return obs


def frozen_case(kind) -> Observations:
    obs = base()
    if kind == "not-in-optimizer":
        obs.params["fc1.weight"].in_optimizer = False
    elif kind == "most-not-in-optimizer":
        for name in ("fc1.weight", "fc2.weight", "fc2.bias"):
            obs.params[name].in_optimizer = False
    elif kind == "cut":
        for rec in obs.steps:
            rec.grad_norms.pop("fc1.weight")
            rec.grads_missing = ["fc1.weight"]
    elif kind == "requires-grad-false":
        obs.params["fc1.weight"].requires_grad = False
        for rec in obs.steps:
            rec.grad_norms.pop("fc1.weight")
    elif kind == "frozen-between":  # fc2 frozen between the trainable fc1 and fc3, not in the optimizer
        for name in ("fc2.weight", "fc2.bias"):
            obs.params[name].requires_grad = False
            obs.params[name].in_optimizer = False
            for rec in obs.steps:
                rec.grad_norms.pop(name)
    elif kind == "wiped":  # zero_grad() between backward() and step()
        for rec in obs.steps:
            rec.grad_norms_at_backward = dict(rec.grad_norms)
            rec.grads_missing = list(rec.grad_norms)
            rec.grad_norms = {}
    elif kind == "wiped-to-zero":  # zero_grad(set_to_none=False) between backward() and step()
        for rec in obs.steps:
            rec.grad_norms_at_backward = dict(rec.grad_norms)
            rec.grad_norms = {n: 0.0 for n in rec.grad_norms}
    elif kind == "loss-leaf":  # torch.tensor(loss.item(), requires_grad=True)
        for rec in obs.steps:
            rec.grads_missing = list(rec.grad_norms)
            rec.grad_norms = {}
        obs.steps[0].loss_graph = LossGraph(kind="other", leaf=True)
    elif kind in ("lr-decayed", "lr-zero"):
        lr0 = 0.0 if kind == "lr-zero" else 0.1
        for rec in obs.steps:
            rec.lr = lr0 * 0.01 ** rec.step
            rec.update_norms = {n: (0.01 if rec.lr > 1e-9 else 0.0) for n in obs.params}
        obs.updates_seen = len(obs.steps)
        obs.params_changed = {n: kind != "lr-zero" for n in obs.params}
    return obs


def unused(kind) -> Observations:
    obs = base()
    if kind == "never-called":
        obs.modules["aux"] = ModuleMeta("aux", "Linear", "linear", True, 50, True)
    elif kind == "unregistered":
        obs.unregistered_modules = [{"class": "Linear", "parameters": 1056, "in_optimizer": False}]
    elif kind == "functional-use":
        obs.modules["aux"] = ModuleMeta("aux", "Linear", "linear", True, 50, True)
        obs.params["aux.weight"] = ParamMeta("aux.weight", "aux", (5, 10), 50, True, True, "linear", "weight", 10)
        for rec in obs.steps:
            rec.grad_norms["aux.weight"] = 0.2
    return obs


def mode(training) -> Observations:
    obs = base()
    obs.modules["drop"] = ModuleMeta("drop", "Dropout", "dropout", True, 0, True)
    for rec in obs.steps:
        rec.training = training
    return obs


def nan_forward(own_params_bad=False) -> Observations:
    obs = base()
    obs.nonfinite = [NonFiniteEvent("forward", 3, "fc2", "nan/inf", {
        "producer_found": True, "first_bad_layer": "fc2", "class": "Linear", "own_code": False,
        "params_nonfinite": own_params_bad, "output_index": None, "passed_on_by": ["fc3"]})]
    return obs


def nan_loss() -> Observations:
    obs = base()
    obs.steps[4].loss = math.inf
    obs.steps[4].activations = [ActivationRecord("fc1", 0, 0.0, 1.0, 10, False, False, 2)]
    obs.nonfinite = [NonFiniteEvent("loss", 4, None, "inf", {"loss": math.inf})]
    return obs


# ------------------------------------------------------------------ the table
@dataclass
class Row:
    check: str
    case: str
    obs: Callable[[], Observations]
    fires: bool
    severity: str | None = None
    where: str | None = field(default=None)


ROWS = [
    # activation-std: band 0.5-2, far 5 -> warn below 0.1 / above 10; error below 1e-4 / above 1e3
    Row("activation-std", "fires-vanishing", lambda: with_acts(base(), {"fc1": 0.8, "act": 0.5, "fc2": 0.05, "fc3": 1.0}), True, "warning", "fc2"),
    Row("activation-std", "fires-collapsed", lambda: with_acts(base(), {"fc1": 1e-5, "act": 0.5, "fc2": 0.6, "fc3": 1.0}), True, "error", "fc1"),
    Row("activation-std", "silent", lambda: with_acts(base(), {"fc1": 0.8, "act": 0.3, "fc2": 1.5, "fc3": 1e-6}), False),
    Row("activation-std", "silent-1x1-maps", lambda: with_acts_spatial1(), False),
    Row("activation-std", "at-threshold", lambda: with_acts(base(), {"fc1": 0.1, "act": 0.5, "fc2": 10.0, "fc3": 1.0}), False),
    Row("dead-relu", "fires", lambda: relu(dead=60), True, "warning", "act"),
    Row("dead-relu", "fires-all-dead", lambda: relu(dead=100), True, "error", "act"),
    Row("dead-relu", "silent", lambda: relu(dead=10), False),
    Row("dead-relu", "at-threshold", lambda: relu(dead=50), False),
    Row("saturated-activation", "fires", lambda: saturated(0.8), True, "warning", "act"),
    Row("saturated-activation", "silent", lambda: saturated(0.1), False),
    Row("saturated-activation", "at-threshold", lambda: saturated(0.5), False),
    Row("nan-trace", "fires-forward-producer", lambda: nan_forward(), True, "error", "fc2"),
    Row("nan-trace", "fires-loss", nan_loss, True, "error", "loss"),
    Row("nan-trace", "silent", base, False),
    Row("exploding-gradient", "fires-growth", lambda: grad_norms(lambda s: 1.0 if s < 3 else 500.0), True, "warning"),
    Row("exploding-gradient", "fires-absolute", lambda: grad_norms(lambda s: 1.0 if s < 3 else 2e6), True, "error"),
    Row("exploding-gradient", "silent", lambda: grad_norms(lambda s: 1.0 + 0.1 * s), False),
    Row("exploding-gradient", "at-threshold", lambda: grad_norms(lambda s: 1.0 if s < 3 else 100.0), False),
    Row("vanishing-gradient", "fires", lambda: vanishing(1e-5), True, "warning", "fc1"),
    Row("vanishing-gradient", "silent", lambda: vanishing(0.3), False),
    Row("vanishing-gradient", "at-threshold", lambda: vanishing(1e-3), False),
    Row("grad-not-zeroed", "fires", lambda: stale(3.0), True, "error"),
    Row("grad-not-zeroed", "silent", lambda: stale(0.0), False),
    Row("update-ratio", "fires-high", lambda: updates(0.3), True, "warning", "fc1"),
    Row("update-ratio", "fires-broken", lambda: updates(2.0), True, "error"),
    Row("update-ratio", "fires-low", lambda: updates(1e-8), True, "warning"),
    Row("update-ratio", "silent", lambda: updates(1e-3), False),
    Row("update-ratio", "fires-early-updates-only", early_then_small, True, "warning"),
    Row("update-ratio", "at-threshold", lambda: updates(0.1), False),
    Row("weight-init", "fires-large", lambda: init_scale(10.0), True, "warning"),
    Row("weight-init", "fires-small", lambda: init_scale(0.01), True, "warning"),
    Row("weight-init", "silent", lambda: init_scale(0.58), False),
    Row("weight-init", "at-threshold", lambda: init_scale(4.0), False),
    Row("frozen-layer", "fires-not-in-optimizer", lambda: frozen_case("not-in-optimizer"), True, "warning", "fc1"),
    Row("frozen-layer", "fires-most-not-in-optimizer", lambda: frozen_case("most-not-in-optimizer"), True, "error", "fc1"),
    Row("frozen-layer", "fires-graph-cut", lambda: frozen_case("cut"), True, "error", "fc1"),
    Row("frozen-layer", "info-deliberately-frozen", lambda: frozen_case("requires-grad-false"), True, "info", "fc1"),
    Row("frozen-layer", "silent", base, False),
    Row("frozen-layer", "fires-frozen-between-trainable", lambda: frozen_case("frozen-between"), True, "warning", "fc2"),
    Row("frozen-layer", "fires-grads-wiped-before-step", lambda: frozen_case("wiped"), True, "error", "fc1"),
    Row("frozen-layer", "fires-grads-zeroed-before-step", lambda: frozen_case("wiped-to-zero"), True, "error", "fc1"),
    Row("frozen-layer", "fires-loss-detached", lambda: frozen_case("loss-leaf"), True, "error", "fc1"),
    Row("frozen-layer", "fires-lr-decayed", lambda: frozen_case("lr-decayed"), True, "warning"),
    Row("frozen-layer", "fires-lr-zero", lambda: frozen_case("lr-zero"), True, "warning", "fc1"),
    Row("unused-parameter", "fires-never-called", lambda: unused("never-called"), True, "warning", "aux"),
    Row("unused-parameter", "fires-unregistered", lambda: unused("unregistered"), True, "error"),
    Row("unused-parameter", "silent-functional-use", lambda: unused("functional-use"), False),
    Row("train-eval-mode", "fires", lambda: mode(False), True, "warning"),
    Row("train-eval-mode", "silent", lambda: mode(True), False),
    Row("input-normalization", "fires-0-255", lambda: inputs(120.0, 70.0, 0.0, 255.0), True, "warning"),
    Row("input-normalization", "fires-all-zero", lambda: inputs(0.0, 0.0, 0.0, 0.0), True, "error"),
    Row("input-normalization", "fires-constant", lambda: inputs(0.5, 0.0, 0.5, 0.5), True, "error"),
    Row("input-normalization", "silent", lambda: inputs(0.0, 1.0), False),
    Row("input-normalization", "at-threshold", lambda: inputs(10.0, 10.0, -20.0, 40.0), False),
    Row("label-distribution", "fires-out-of-range", lambda: labels([{0: 10, 7: 6}] * 4), True, "error"),
    Row("label-distribution", "fires-single-class-batches", lambda: labels([{0: 16}, {0: 16}, {1: 16}, {1: 16}]), True, "warning"),
    Row("label-distribution", "fires-imbalance-as-info", lambda: labels([{0: 30, 1: 2}] * 6), True, "info"),
    Row("label-distribution", "silent", lambda: labels([{0: 4, 1: 4, 2: 4, 3: 4}] * 4), False),
    Row("label-distribution", "at-threshold", lambda: labels([{0: 20, 1: 2, 2: 2, 3: 2}] * 4), False),
    Row("repeated-batch", "fires", lambda: repeated(4), True, "warning"),
    Row("repeated-batch", "fires-partly", lambda: repeated(1), True, "warning"),
    Row("repeated-batch", "silent", lambda: repeated(-1), False),
    Row("loss-input-format", "fires-softmax-to-ce", lambda: graph("cross_entropy", "softmax")(), True, "error", "loss"),
    Row("loss-input-format", "fires-logits-to-nll", lambda: graph("nll", "logits")(), True, "error", "loss"),
    Row("loss-input-format", "fires-sigmoid-to-bce-logits", lambda: graph("bce_logits", "sigmoid")(), True, "error", "loss"),
    Row("loss-input-format", "fires-softmax-to-soft-ce", lambda: graph("soft_cross_entropy", "softmax")(), True, "error", "loss"),
    Row("loss-input-format", "silent", lambda: graph("cross_entropy", "log_softmax")(), False),
    Row("loss-input-format", "fires-relu-before-ce", lambda: loss_values("relu"), True, "error", "loss"),
    Row("loss-input-format", "silent-ce-on-raw-logits", lambda: loss_values("healthy-ce"), False),
    Row("loss-input-format", "fires-log-softmax-dim-0", lambda: loss_values("wrong-dim"), True, "error", "loss"),
    Row("loss-input-format", "fires-wrong-dim-by-values", lambda: loss_values("wrong-dim-values-only"), True, "error", "loss"),
    Row("loss-input-format", "fires-mse-on-class-indices", lambda: loss_values("indices"), True, "warning", "loss"),
    Row("loss-input-format", "silent-mse-on-real-targets", lambda: loss_values("real-targets"), False),
    Row("loss-input-format", "silent-mse-on-binary-targets", lambda: loss_values("two-values"), False),
    Row("loss-input-format", "fires-mse-broadcast", lambda: loss_values("broadcast"), True, "error", "loss"),
    Row("loss-input-format", "silent-mse-same-shape", lambda: loss_values("same-shape"), False),
    Row("prediction-collapse", "fires-imbalance", lambda: predictions("imbalance"), True, "warning"),
    Row("prediction-collapse", "fires-imbalance-even-weighted", lambda: predictions("imbalance-weighted"), True, "warning"),
    Row("prediction-collapse", "fires-one-class-of-balanced-targets", lambda: predictions("one-class"), True, "warning"),
    Row("prediction-collapse", "fires-constant-regression", lambda: predictions("constant-output"), True, "warning"),
    Row("prediction-collapse", "silent-balanced", lambda: predictions("balanced"), False),
    Row("prediction-collapse", "info-one-class-from-the-start", lambda: predictions("from-start"), True, "info"),
    Row("prediction-collapse", "silent-collapsed-early-only", lambda: predictions("early-collapse"), False),
    Row("prediction-collapse", "silent-minority-never-seen", lambda: predictions("minority-never-seen"), False),
    Row("prediction-collapse", "silent-regression", lambda: predictions("regression"), False),
    Row("chance-level-loss", "fires", lambda: graph("cross_entropy", "log_softmax")(10.0), True, "warning"),
    Row("chance-level-loss", "silent", lambda: graph("cross_entropy", "log_softmax")(2.35), False),
    Row("chance-level-loss", "at-threshold", lambda: graph("cross_entropy", "log_softmax")(1.5 * math.log(10)), False),
    Row("chance-level-loss", "silent-below-chance", lambda: graph("cross_entropy", "log_softmax")(0.3), False),
    Row("loss-not-decreasing", "fires-flat-noise", lambda: losses([2.0 + 0.05 * ((i * 7) % 5 - 2) for i in range(20)]), True, "warning"),
    Row("loss-not-decreasing", "fires-constant", lambda: losses([1.5] * 12), True, "error"),
    Row("loss-not-decreasing", "fires-diverging", lambda: losses([1.0 * 1.2 ** i for i in range(12)]), True, "error"),
    Row("loss-not-decreasing", "silent", lambda: losses([2.0 - 0.05 * i + 0.02 * ((i * 7) % 3) for i in range(20)]), False),
]


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"{r.check}:{r.case}")
def test_check_table(row: Row):
    check = REGISTRY[row.check]()
    findings, skipped = check.run(row.obs())
    assert skipped is None, f"skipped: {skipped}"
    if not row.fires:
        assert findings == [], [f.message for f in findings]
        return
    assert findings, "expected a finding"
    worst = max(findings, key=lambda f: f.severity.rank)
    assert worst.severity.value == row.severity, [(f.severity.value, f.message) for f in findings]
    if row.where is not None:
        assert worst.where == row.where
    assert worst.check == row.check and worst.fix and worst.message


def test_every_passive_check_has_fire_and_silent_rows():
    # (the DDP checks' table lives in test_distributed.py, judged on gathered rank facts)
    passive = {cid for cid, cls in REGISTRY.items() if cls.kind == "passive" and cls.family != "distributed"}
    fired = {r.check for r in ROWS if r.fires}
    silent = {r.check for r in ROWS if not r.fires}
    assert passive <= fired, passive - fired
    assert passive <= silent, passive - silent


@pytest.mark.parametrize("check_id", [cid for cid, c in REGISTRY.items() if c.kind == "passive"])
def test_checks_skip_with_a_reason_on_empty_observations(check_id):
    findings, reason = REGISTRY[check_id]().run(Observations())
    assert findings == [] and reason, "an empty run must be a skip with a reason, not a silent pass"


def test_chance_level_skips_where_k_is_meaningless():
    for build, words in [(graph("mse"), "not a softmax"), (graph("cross_entropy", "log_softmax", multi=True), "several terms"),
                         (graph("cross_entropy", "log_softmax", reduction="sum"), "reduction='sum'")]:
        _, reason = REGISTRY["chance-level-loss"]().run(build())
        assert reason and words in reason


def test_threshold_overrides_change_verdicts():
    obs = relu(dead=30)
    assert REGISTRY["dead-relu"]().run(obs)[0] == []
    assert REGISTRY["dead-relu"](max_dead_fraction=0.2).run(obs)[0]
