"""frozen-layer names the mechanism that stops the parameters (issue 10, item 3): each
mechanism has its own evidence key, message and fix, on hand-built observations (no
model) and end to end on the bug zoo's setups."""

from __future__ import annotations

import pytest

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
