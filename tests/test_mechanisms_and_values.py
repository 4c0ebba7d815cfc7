"""Issue 10 (items 3, 4b, 4c, 4f): frozen-layer names the mechanism that stops the
parameters (each with its own evidence key, message and fix); the loss input is judged by
its values; prediction-collapse reads the predictions the loss sees. On hand-built
observations (no model), on real models through the observers, and end to end on the
bug zoo's setups."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nndoctor import Doctor

from bugzoo import BUGS, HEALTHY, run_case
from nndoctor import Severity
from nndoctor.checks import REGISTRY
from test_checks import frozen_case

CHECK = REGISTRY["frozen-layer"]


def mechanisms(obs) -> dict[str, object]:
    return {f.evidence.get("mechanism"): f for f in CHECK().evaluate(obs)}


@pytest.mark.parametrize("kind, mechanism, words", [
    ("wiped", "grads_zeroed_before_step", "between loss.backward() and optimizer.step()"),
    ("wiped-to-zero", "grads_zeroed_before_step", "are zero when the optimizer steps"),
    ("loss-leaf", "loss_detached", "not connected"),
    ("cut", "graph_cut", "graph is cut"),
    ("lr-decayed", "lr_decayed_to_zero", "scheduler"),
    ("lr-zero", "lr_zero", "learning rate is 0"),
    ("not-in-optimizer", "not_in_optimizer", "in no optimizer"),
    ("frozen-between", "requires_grad_false", "between trainable layers"),
])
def test_each_mechanism_has_its_own_evidence_and_message(kind, mechanism, words):
    found = mechanisms(frozen_case(kind))
    assert mechanism in found, found
    f = found[mechanism]
    assert words in f.message and f.fix
    # the wiped gradients are not mistaken for a cut graph
    if mechanism == "grads_zeroed_before_step":
        assert "graph_cut" not in found and "zero_gradient" not in found


def test_fixes_differ_between_mechanisms():
    fixes = {m: f.fix for kind in ("wiped", "loss-leaf", "cut", "lr-decayed", "not-in-optimizer")
             for m, f in mechanisms(frozen_case(kind)).items()}
    assert len(set(fixes.values())) == len(fixes)


def test_frozen_prefix_stays_info():
    (f,) = mechanisms(frozen_case("requires-grad-false")).values()
    assert f.severity is Severity.INFO and f.evidence["placement"] == "prefix"


@pytest.mark.parametrize("name, mechanism, severity", [
    ("zero-grad-between-backward-and-step", "grads_zeroed_before_step", Severity.ERROR),
    ("detach-in-forward", "graph_cut", Severity.ERROR),
    ("numpy-round-trip-in-forward", "graph_cut", Severity.ERROR),
    ("loss-rewrapped-with-torch-tensor", "loss_detached", Severity.ERROR),
    ("optimizer-over-a-copy", "optimizer_over_other_model", Severity.ERROR),
    ("layers-not-in-optimizer", "not_in_optimizer", Severity.ERROR),
    ("learning-rate-zero", "lr_zero", Severity.WARNING),
    ("scheduler-drives-lr-to-zero", "lr_decayed_to_zero", Severity.WARNING),
    ("frozen-middle-layer", "requires_grad_false", Severity.WARNING),
    ("frozen-head-held-by-optimizer", "requires_grad_false", Severity.WARNING),
])
def test_zoo_setups_name_their_mechanism(name, mechanism, severity):
    report = run_case(next(c for c in BUGS if c.name == name))
    first = report.findings[0]
    assert first.check == "frozen-layer" and first.evidence["mechanism"] == mechanism, \
        [(f.check, f.evidence.get("mechanism")) for f in report.findings]
    assert first.severity is severity


@pytest.mark.parametrize("name", ["deliberately-frozen-backbone", "linear-probe-no-grad-trunk"])
def test_frozen_backbone_and_linear_probe_stay_info(name):
    report = run_case(next(c for c in HEALTHY if c.name == name))
    (f,) = report.by_check("frozen-layer")
    assert f.severity is Severity.INFO and f.evidence["placement"] == "prefix"


# ---------------------------------------------------------------------- prediction-collapse
def test_prediction_collapse_names_the_label_prior_and_the_fix():
    from test_checks import predictions

    (f,) = REGISTRY["prediction-collapse"]().evaluate(predictions("imbalance"))
    assert f.evidence["imbalance"] is True and f.evidence["label_prior"] > 0.95
    assert "label prior" in f.message and "pos_weight" in f.fix
    (g,) = REGISTRY["prediction-collapse"]().evaluate(predictions("imbalance-weighted"))
    assert g.evidence["imbalance"] is False and "pos_weight" not in g.fix  # already weighted: look elsewhere


def test_predicts_one_class_leads_with_prediction_collapse():
    report = run_case(next(c for c in BUGS if c.name == "predicts-one-class"))
    f = report.findings[0]
    assert f.check == "prediction-collapse" and f.evidence["predicted_class"] == 0
    assert f.evidence["binary"] and f.evidence["imbalance"]


# ---------------------------------------------------------------------- the observers
def _watch(model, loss_of, steps=6, opt_step=True):
    torch.manual_seed(0)
    x, y = torch.randn(64, 20), torch.randint(0, 4, (64,))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    doctor = Doctor(model, optimizer=opt)
    with doctor.watch():
        for i in range(steps):
            opt.zero_grad()
            loss = loss_of(model(x[i * 8:(i + 1) * 8 + 8]), y[i * 8:(i + 1) * 8 + 8])
            loss.backward()
            opt.step()
    return doctor, model


def test_loss_values_are_recorded_from_the_loss_node():
    model = nn.Sequential(nn.Linear(20, 4), nn.ReLU())
    doctor, _ = _watch(model, F.cross_entropy)
    recs = [s.loss_values for s in doctor.report().observations.steps if s.loss_values is not None]
    assert len(recs) >= 4
    v = recs[0]
    assert v.kind == "classes" and v.n == 16 and v.n_outputs == 4
    assert v.row_norm_error < 1e-5 and v.logits_min >= 0.0 and 0.0 < v.logits_zero_fraction < 1.0
    assert doctor.report().observations.first_loss_graph().upstream == "ReluBackward0"


def test_log_softmax_dim_is_read_from_the_graph():
    doctor, _ = _watch(nn.Linear(20, 4), lambda out, y: F.nll_loss(F.log_softmax(out, dim=0), y))
    obs = doctor.report().observations
    assert obs.first_loss_graph().norm_dim == 0
    v = next(s.loss_values for s in obs.steps if s.loss_values is not None)
    assert v.row_norm_error > 0.1 and v.col_norm_error < 1e-5


def test_gradient_hooks_of_a_sampled_step_are_removed():
    model = nn.Sequential(nn.Linear(20, 8), nn.ReLU(), nn.Linear(8, 4))
    doctor, model = _watch(model, F.cross_entropy)
    assert all(not getattr(p, "_post_accumulate_grad_hooks", None) for p in model.parameters())
    steps = [s for s in doctor.report().observations.steps if s.grad_norms_at_backward]
    assert steps and set(steps[0].grad_norms_at_backward) == {n for n, _ in model.named_parameters()}


def test_wiped_gradients_are_seen_at_backward_end():
    torch.manual_seed(0)
    model = nn.Linear(20, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(32, 20), torch.randint(0, 4, (32,))
    doctor = Doctor(model, optimizer=opt)
    with doctor.watch():
        for _ in range(5):
            F.cross_entropy(model(x), y).backward()
            opt.zero_grad(set_to_none=False)  # zeros in place: the pre-step norms are 0
            opt.step()
    (f,) = doctor.report().by_check("frozen-layer")
    assert f.evidence["mechanism"] == "grads_zeroed_before_step" and "are zero" in f.message


def test_a_schedule_annealing_to_zero_at_the_end_is_not_reported():
    obs = frozen_case("lr-decayed")
    for rec in obs.steps:  # ~0 on the last step only (cosine to eta_min=0)
        rec.lr = 0.0 if rec.step == len(obs.steps) - 1 else 0.1
        rec.update_norms = {n: (0.01 if rec.lr else 0.0) for n in obs.params}
    assert "lr_decayed_to_zero" not in mechanisms(obs)


class _PosTableLM(nn.Module):
    """A tiny transformer-style LM: trainable token embedding, a fixed sinusoidal position
    table (``Embedding.from_pretrained(freeze=True)``, as nlp-tutorial's Transformer), then
    trainable layers. ``freeze_middle``: the fault twin, a hidden Linear frozen by mistake."""

    def __init__(self, freeze_middle: bool = False) -> None:
        super().__init__()
        pos = torch.arange(8).float()[:, None] / (10000 ** (torch.arange(16).float()[None] / 16))
        self.tok = nn.Embedding(20, 16)
        self.pos = nn.Embedding.from_pretrained(torch.sin(pos), freeze=True)
        self.mid = nn.Linear(16, 16)
        self.head = nn.Linear(16, 20)
        if freeze_middle:
            self.mid.requires_grad_(False)

    def forward(self, x):
        h = self.tok(x) + self.pos(torch.arange(x.shape[1]))
        return self.head(torch.relu(self.mid(h)))


@pytest.mark.parametrize("freeze_middle", [False, True])
def test_a_frozen_position_table_is_info_and_a_frozen_middle_layer_still_warns(freeze_middle):
    torch.manual_seed(0)
    model = _PosTableLM(freeze_middle)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    x, y = torch.randint(0, 20, (16, 8)), torch.randint(0, 20, (16, 8))
    doctor = Doctor(model, optimizer=opt, select=["frozen-layer"])
    with doctor.watch():
        for _ in range(4):
            opt.zero_grad()
            F.cross_entropy(model(x).reshape(-1, 20), y.reshape(-1)).backward()
            opt.step()
    found = [f for f in doctor.report().findings if f.check == "frozen-layer"]
    severities = sorted(f.severity.name for f in found)
    if freeze_middle:
        assert "WARNING" in severities
        warn = next(f for f in found if f.severity is Severity.WARNING)
        assert warn.evidence["placement"] == "between" and warn.where == "mid"
    else:
        assert severities == ["INFO"] and "embedding table" in found[0].message
