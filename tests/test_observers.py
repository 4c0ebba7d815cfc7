"""Oracle twins: every observed number against a naive computation on a tiny model
(explicit intermediate outputs, .grad, parameter copies), float64 where it matters."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
import torch.nn.functional as F

from nndoctor import Doctor
from nndoctor._observe import analyse_loss_graph


def one_step(model, x, y, opt, loss_fn=F.cross_entropy):
    opt.zero_grad()
    loss = loss_fn(model(x), y)
    loss.backward()
    opt.step()
    return loss


def test_activation_gradient_update_statistics_match_naive_computation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    # the naive twin: outputs of every layer, gradients and weights before/after
    h0 = model[0](x)
    h1 = model[1](h0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    doctor = Doctor(model, optimizer=opt, sample_every=1)
    with doctor.watch():
        loss = one_step(model, x, y, opt)
    grads_expected = {}
    ref = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    ref.load_state_dict(before)
    F.cross_entropy(ref(x), y).backward()
    grads_expected = {n: p.grad.norm().item() for n, p in ref.named_parameters()}
    rec = doctor.observations.steps[0]
    acts = {a.path: a for a in rec.activations}
    for path, h in (("0", h0), ("1", h1)):
        assert acts[path].mean == pytest.approx(h.mean().item(), rel=1e-5, abs=1e-6)
        assert acts[path].std == pytest.approx(h.std(unbiased=False).item(), rel=1e-5)
    assert rec.loss == pytest.approx(loss.item(), rel=1e-6)
    for n, g in grads_expected.items():
        assert rec.grad_norms[n] == pytest.approx(g, rel=1e-5)
    assert rec.grad_total == pytest.approx(math.sqrt(sum(g * g for g in grads_expected.values())), rel=1e-5)
    for n, p in model.named_parameters():
        assert rec.update_norms[n] == pytest.approx((p.detach() - before[n]).norm().item(), rel=1e-5)
        assert rec.weight_norms[n] == pytest.approx(before[n].norm().item(), rel=1e-5)
    assert rec.input.mean == pytest.approx(x.mean().item(), rel=1e-5)
    assert rec.input.min == pytest.approx(x.min().item()) and rec.input.max == pytest.approx(x.max().item())
    assert rec.labels.counts == {0: 3, 1: 3, 2: 2}
    sat = ((h1.abs() > 0.995).double().mean()).item()
    assert acts["1"].saturated_fraction == pytest.approx(sat)


def test_update_ratio_of_a_large_tensor_is_estimated_from_a_subset():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(32, 256), torch.randint(0, 4, (32,))
    before = model[0].weight.detach().clone()
    doctor = Doctor(model, optimizer=opt, sample_every=1)
    with doctor.watch():
        one_step(model, x, y, opt)
    rec = doctor.observations.steps[0]
    exact_update = (model[0].weight.detach() - before).norm().item()
    assert model[0].weight.numel() > 4096  # really the subset path
    assert rec.update_norms["0.weight"] == pytest.approx(exact_update, rel=0.05)
    assert rec.weight_norms["0.weight"] == pytest.approx(before.norm().item(), rel=0.05)


def test_dead_units_counted_per_channel():
    model = nn.Sequential(nn.Conv2d(1, 4, 1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 9, 2))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[0].bias.copy_(torch.tensor([0.0, 0.0, -100.0, -100.0]))  # channels 2, 3 dead
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    doctor = Doctor(model, optimizer=opt, sample_every=1)
    with doctor.watch():
        for _ in range(3):
            one_step(model, torch.rand(8, 1, 3, 3) + 0.1, torch.randint(0, 2, (8,)), opt)
    units = doctor.observations.relu_units["1"]
    assert units == {"units": 4, "dead": 2, "samples": 3 * 8 * 9}


class FunctionalReluNet(nn.Module):
    """ReLUs written as calls, not modules (most hand-written models): one after a
    conv (per channel), one in-place after a linear, and an nn.ReLU module inside a
    Sequential (counted once, under its module)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 1)
        self.fc = nn.Linear(4 * 9, 6)
        self.head = nn.Sequential(nn.Linear(6, 5), nn.ReLU())
        self.out = nn.Linear(5, 2)

    def forward(self, x):
        h = F.relu(self.conv(x)).flatten(1)
        h = self.fc(h).relu_()
        return self.out(self.head(h))


def test_functional_relu_units_counted_by_the_module_they_follow():
    model = FunctionalReluNet()
    with torch.no_grad():
        model.conv.weight.fill_(1.0)
        model.conv.bias.copy_(torch.tensor([0.0, 0.0, -100.0, -100.0]))  # channels 2, 3 dead
        model.fc.bias.fill_(-1e4)                                          # every unit dead
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    doctor = Doctor(model, optimizer=opt, sample_every=1)
    with doctor.watch():
        for _ in range(3):
            one_step(model, torch.rand(8, 1, 3, 3) + 0.1, torch.randint(0, 2, (8,)), opt)
    units = doctor.observations.relu_units
    assert units["conv -> relu"] == {"units": 4, "dead": 2, "samples": 3 * 8 * 9}
    assert units["fc -> relu"] == {"units": 6, "dead": 6, "samples": 3 * 8}
    # the module ReLU is counted once, under its own name, not again as a call after head.0
    assert "head.1" in units and not any(k.startswith("head") and "->" in k for k in units)
    found = doctor.report().by_check("dead-relu")
    assert {f.where for f in found} == {"fc -> relu"} and found[0].severity.value == "error"
    assert "(6/6)" in found[0].message


def test_functional_relus_of_a_healthy_model_are_not_dead():
    torch.manual_seed(0)
    model = FunctionalReluNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    doctor = Doctor(model, optimizer=opt, sample_every=1)
    with doctor.watch():
        for _ in range(5):
            one_step(model, torch.randn(32, 1, 3, 3), torch.randint(0, 2, (32,)), opt)
    units = doctor.observations.relu_units
    assert {"conv -> relu", "fc -> relu", "head.1"} <= set(units)
    assert not doctor.report().by_check("dead-relu")


@pytest.mark.parametrize("build, kind, fed_by", [
    (lambda x, y: F.cross_entropy(x, y), "cross_entropy", "log_softmax"),
    (lambda x, y: nn.CrossEntropyLoss(label_smoothing=0.1)(x, y), "cross_entropy", "log_softmax"),
    (lambda x, y: F.nll_loss(F.log_softmax(x.softmax(1), 1), y), "cross_entropy", "softmax"),
    (lambda x, y: F.nll_loss(x, y), "nll", "logits"),
    (lambda x, y: F.nll_loss(torch.log(x.softmax(1)), y), "nll", "log_of_softmax"),
    (lambda x, y: F.binary_cross_entropy_with_logits(x.sigmoid(), F.one_hot(y, 3).float()), "bce_logits", "sigmoid"),
    (lambda x, y: F.mse_loss(x, F.one_hot(y, 3).float()), "mse", None),
    (lambda x, y: -(F.one_hot(y, 3).float() * torch.log_softmax(x.softmax(1), 1)).sum(1).mean(), "soft_cross_entropy", "softmax"),
    (lambda x, y: (x ** 2).mean(), "other", None),
])
def test_loss_graph_recognises_how_the_loss_was_computed(build, kind, fed_by):
    x = torch.randn(4, 3, requires_grad=True)
    y = torch.tensor([0, 1, 2, 0])
    graph, _ = analyse_loss_graph(build(x, y))
    assert graph.kind == kind and graph.fed_by == fed_by
    if kind in ("cross_entropy", "nll"):
        assert graph.n_classes == 3 and graph.reduction == "mean"


# -- one failing observer unit goes dark alone ------------------------------------------
def _dead_relu_on_raw_pixels():
    """A ReLU whose units 1-3 never fire, fed 0-255 inputs: dead-relu (from the
    activations unit) and input-normalization (from the inputs unit) both fire."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))
    with torch.no_grad():
        model[0].weight.abs_()
        model[0].bias.copy_(torch.tensor([0.0, -1e6, -1e6, -1e6]))
    opt = torch.optim.SGD(model.parameters(), lr=1e-6)
    doctor = Doctor(model, optimizer=opt, sample_every=1, select=["dead-relu", "input-normalization"])
    with doctor.watch():
        for _ in range(4):
            one_step(model, torch.rand(16, 6) * 255, torch.randint(0, 3, (16,)), opt)
    return doctor.report()


def _boom(*args, **kwargs):
    raise RuntimeError("unit bug")


@pytest.mark.internal_errors_expected
@pytest.mark.parametrize("unit_path, method, unit_name, dark, alive", [
    ("nndoctor.observers.activations.ActivationObserver", "_record_call", "activations",
     "dead-relu", "input-normalization"),
    ("nndoctor.observers.inputs.InputObserver", "model_pre", "inputs",
     "input-normalization", "dead-relu"),
])
def test_a_failing_unit_skips_only_the_checks_that_read_it(monkeypatch, unit_path, method, unit_name, dark, alive):
    healthy = _dead_relu_on_raw_pixels()
    assert {f.check for f in healthy.findings} == {"dead-relu", "input-normalization"}
    assert healthy.checks_skipped == []
    monkeypatch.setattr(unit_path + "." + method, _boom)
    report = _dead_relu_on_raw_pixels()
    assert {f.check for f in report.findings} == {alive}
    assert report.checks_skipped == [
        {"check": dark, "reason": f"internal error in observer '{unit_name}': RuntimeError('unit bug')"}]
    assert report.observations.observer_failures[unit_name]["checks"]
    assert any("unit bug" in n for n in report.observations.notes)


@pytest.mark.internal_errors_expected
def test_a_unit_failing_in_its_sink_goes_dark_alone(monkeypatch):
    """A unit can also fail on the host, when its values arrive at the sync."""
    from nndoctor.observers.gradients import GradientObserver

    def add_broken(self, tensor, sink):
        def broken_sink(values):
            raise ValueError("sink bug")
        self.rec.pending.add(tensor, broken_sink, self)

    monkeypatch.setattr(GradientObserver, "add", add_broken)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    doctor = Doctor(model, optimizer=opt, sample_every=1)
    with doctor.watch():
        for _ in range(3):
            one_step(model, torch.randn(8, 6), torch.randint(0, 3, (8,)), opt)
    obs = doctor.observations
    assert list(obs.observer_failures) == ["gradients"]
    assert obs.observer_failures["gradients"]["where"] == "sync"
    assert all(s.loss is not None and s.activations and s.update_norms for s in obs.steps)
    assert not any(s.grad_norms for s in obs.steps)
    skipped = {s["check"] for s in doctor.report().checks_skipped}
    assert {"exploding-gradient", "vanishing-gradient", "grad-not-zeroed"} <= skipped
    assert "activation-std" not in skipped and "update-ratio" not in skipped


def test_observer_skip_reason_is_a_pure_function_of_the_records():
    from nndoctor._derive import observer_skip_reason
    from nndoctor._observations import Observations

    obs = Observations()
    assert observer_skip_reason(obs, "dead-relu") is None
    obs.observer_failures["activations"] = {"error": "KeyError('x')", "where": "sync", "checks": ["dead-relu"]}
    assert observer_skip_reason(obs, "dead-relu") == "internal error in observer 'activations': KeyError('x')"
    assert observer_skip_reason(obs, "update-ratio") is None


def test_std_of_a_large_activation_is_estimated_from_a_subset_and_its_mean_is_exact():
    """Outputs above twice ACTIVATION_STD_SUBSET: the std from a strided subset (within a
    few percent of the exact std), the mean (the non-finite flag) from every element."""
    from nndoctor.observers.activations import ACTIVATION_STD_SUBSET

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(128, 64), torch.randint(0, 3, (128,))
    with torch.no_grad():
        h = model[0](x)
    assert h.numel() >= 2 * ACTIVATION_STD_SUBSET
    doctor = Doctor(model, optimizer=opt, sample_every=1)
    with doctor.watch():
        one_step(model, x, y, opt)
    (rec,) = [a for a in doctor.observations.steps[0].activations if a.path == "0"]
    assert rec.mean == pytest.approx(h.mean().item(), rel=1e-5, abs=1e-6)
    assert rec.std == pytest.approx(h.std(correction=0).item(), rel=0.05)


def test_parameters_of_both_infinite_signs_read_as_non_finite():
    """+inf and -inf parameters in one module: flagged (their sums cancel to NaN on the
    host; nothing raises and the unit stays on)."""
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight[0, 0] = math.inf
        model[0].bias[0] = -math.inf
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    doctor = Doctor(model, optimizer=opt, sample_every=1)
    with doctor.watch():
        one_step(model, torch.randn(5, 4), torch.tensor([0, 1, 0, 1, 0]), opt)
    obs = doctor.observations
    assert not obs.observer_failures
    first = {a.path: a for a in obs.steps[0].activations}
    assert first["0"].params_nonfinite and not first["1"].params_nonfinite
