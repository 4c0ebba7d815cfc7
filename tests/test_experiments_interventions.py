"""Confirm by intervention (issue 10, item 2): the fix a root-cause finding proposes is
applied to a copy and the tiny batch is overfit again. Each intervention confirms its true
cause, and does not confirm a wrong one; the verdict is a pure function of the record; it
reaches the report through ``Doctor.checkup`` (targeting the watch + checkup diagnosis)
and the CLI; a watch-only report has ``confirmed`` None.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jsonschema
import torch
from torch import nn
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from bugzoo import BUGS, SmallCNN, image_data, mlp, run_case, teacher_data  # noqa: E402

from nndoctor import Doctor, Finding, Severity  # noqa: E402
from nndoctor._diagnosis import Diagnosis, judge_intervention  # noqa: E402
from nndoctor._experiments import run_checkup  # noqa: E402
from nndoctor.cli import app  # noqa: E402
from nndoctor.probes import ProbeContext, isolated  # noqa: E402
from nndoctor.probes.interventions import measure, plan, standardise  # noqa: E402

UNSCALED = {"min": 0.0, "max": 255.0, "mean": 120.0, "std": 60.0, "batches": 3}
SOFTMAX = {"fed_by": "softmax", "loss_kind": "cross_entropy"}


def outcome(model, batch, opt, check, evidence, loss_fn=None):
    with isolated(model), torch.enable_grad():
        ctx = ProbeContext(model, batch, opt, loss_fn or nn.CrossEntropyLoss())
        record = measure(ctx, check, evidence)
    return judge_intervention(record)


def teacher(n=32, scaled=False):
    x, y = teacher_data(n)
    if scaled:
        x = ((x - x.min()) / (x.max() - x.min()) * 255).round()
    return x, y


def net(*extra):
    torch.manual_seed(0)
    return nn.Sequential(mlp(), *extra)


# ------------------------------------------------------------------ each intervention
def test_standardising_0_255_inputs_is_never_held_against_the_cause():
    """A CNN on 0-255 pixels at an SGD LR tuned for them: standardised inputs need a larger
    LR, and with Adam(lr=1e-3) the tiny batch fits either way. The tiny batch does not show
    the symptom here, so the outcome is inconclusive, not "not confirmed" (the confirmed
    case, on the bug zoo's own batch, is test_watch_plus_checkup_confirms_the_merged_diagnosis)."""
    x, y = image_data(256)
    x = ((x - x.min()) / (x.max() - x.min()) * 255).round()
    torch.manual_seed(0)
    model = SmallCNN(bn=False)
    v = outcome(model, (x[:32], y[:32]), torch.optim.SGD(model.parameters(), lr=1e-4), "input-normalization", UNSCALED)
    assert v["outcome"] == "inconclusive", v


def test_standardising_normal_inputs_does_not_fix_a_100x_learning_rate():
    model = net()
    v = outcome(model, teacher(), torch.optim.SGD(model.parameters(), lr=5.0), "input-normalization", UNSCALED)
    assert v["outcome"] == "not confirmed", v


def test_lr_x01_confirms_a_100x_learning_rate():
    model = net()
    v = outcome(model, teacher(), torch.optim.SGD(model.parameters(), lr=5.0), "lr-sweep", {"better": "x0.1"})
    assert v["outcome"] == "confirmed" and v["intervention"].startswith("learning rate x0.")
    assert "non-finite" in v["before"] and v["after"].startswith("fitted in")


def test_reinitialising_does_not_fix_a_100x_learning_rate():
    model = net()
    v = outcome(model, teacher(), torch.optim.SGD(model.parameters(), lr=5.0), "weight-init", {"kind": "large"})
    assert v["outcome"] == "not confirmed", v


def test_dropping_the_final_softmax_confirms_loss_input_format():
    model = net(nn.Softmax(dim=1))
    v = outcome(model, teacher(), torch.optim.SGD(model.parameters(), lr=0.05), "loss-input-format", SOFTMAX)
    assert v["outcome"] == "confirmed" and "softmax (`1`) removed" in v["intervention"], v


def test_unfreezing_does_not_fix_a_final_softmax():
    model = net(nn.Softmax(dim=1))
    v = outcome(model, teacher(), torch.optim.SGD(model.parameters(), lr=0.05), "frozen-layer",
                {"kind": "not_in_optimizer"})
    assert v["outcome"] == "not confirmed", v


def test_functional_softmax_is_undone_in_the_loss():
    class Probs(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = mlp()

        def forward(self, x):
            return torch.softmax(self.body(x), dim=1)

    torch.manual_seed(0)
    model = Probs()
    v = outcome(model, teacher(), torch.optim.SGD(model.parameters(), lr=0.05), "loss-input-format", SOFTMAX)
    assert v["outcome"] == "confirmed" and "log(outputs)" in v["intervention"], v


def frozen_net():
    model = net()
    model[0][0].requires_grad_(False)
    model[0][2].requires_grad_(False)
    return model


def test_unfreezing_confirms_a_frozen_layer():
    model = frozen_net()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    v = outcome(model, teacher(), opt, "frozen-layer", {"kind": "not_in_optimizer"})
    assert v["outcome"] == "confirmed", v
    assert all(not p.requires_grad for p in model[0][0].parameters())  # the user's model untouched


def test_reinitialising_does_not_fix_a_frozen_layer():
    model = frozen_net()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    v = outcome(model, teacher(), opt, "weight-init", {"kind": "large"})
    assert v["outcome"] == "not confirmed", v


def large_init_net(std):
    model = net()
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)
    return model


def test_reinitialising_confirms_a_large_init():
    model = large_init_net(2.0)
    v = outcome(model, teacher(), torch.optim.SGD(model.parameters(), lr=1e-3), "weight-init", {"kind": "large"})
    assert v["outcome"] == "confirmed", v


def test_std_1_init_is_inconclusive_on_a_tiny_batch():
    """std-1 weights in a 2-hidden-layer MLP memorise 8 samples in a few steps: the tiny
    batch shows no symptom, so nothing is claimed either way (the confidence stays)."""
    model = large_init_net(1.0)
    v = outcome(model, teacher(), torch.optim.SGD(model.parameters(), lr=1e-3), "weight-init", {"kind": "large"})
    assert v["outcome"] == "inconclusive", v


def test_standardising_inputs_does_not_fix_a_large_init():
    model = large_init_net(2.0)
    v = outcome(model, teacher(), torch.optim.SGD(model.parameters(), lr=1e-3), "input-normalization", UNSCALED)
    assert v["outcome"] != "confirmed", v


def test_log_softmax_makes_an_unbounded_nll_bounded():
    model = net()
    v = outcome(model, teacher(), torch.optim.SGD(model.parameters(), lr=0.05), "loss-input-format",
                {"fed_by": "logits", "loss_kind": "nll"}, loss_fn=nn.NLLLoss())
    assert v["outcome"] == "confirmed" and v["before"].startswith("unbounded"), v


def test_no_intervention_for_causes_a_copy_cannot_fix():
    model = net()
    ctx = ProbeContext(model, teacher(), None, nn.CrossEntropyLoss())
    assert plan(ctx, "frozen-layer", {"kind": "no_gradient"}) is None
    assert plan(ctx, "grad-not-zeroed", {}) is None
    assert plan(ctx, "nan-trace", {"direction": "loss"}) is None
    assert plan(ctx, "input-normalization", {"batches": 3}) is None  # all-zero inputs


def test_standardise_is_per_feature_and_leaves_integers_alone():
    x = torch.randn(16, 3) * torch.tensor([1.0, 100.0, 0.01]) + 50
    z = standardise((x, torch.arange(16)))
    assert torch.allclose(z[0].mean(0), torch.zeros(3), atol=1e-4)
    assert torch.allclose(z[0].std(0), torch.ones(3), atol=1e-4)
    assert torch.equal(z[1], torch.arange(16))


# ------------------------------------------------------------------ the pure judge
def trial(before, after, **more):
    return {"cause": "c", "intervention": "x", "max_steps": 100, "loss_fraction": 0.1,
            "before": {"losses": before}, "after": {"losses": after}, **more}


def test_judge_outcomes():
    assert judge_intervention(trial([1.0, 0.9, 0.8], [1.0, 0.5, 0.05]))["outcome"] == "confirmed"
    assert judge_intervention(trial([1.0, 0.5, 0.05], [1.0, 0.5, 0.05]))["outcome"] == "inconclusive"
    assert judge_intervention(trial([1.0, 0.9, 0.8], [1.0, 0.9, 0.7]))["outcome"] == "not confirmed"
    assert judge_intervention(trial([1.0, 0.9, 0.8], [1.0, 0.5, 0.35]))["outcome"] == "confirmed"
    # blown up before: the fix must make real progress, not just stay finite
    assert judge_intervention(trial([1.0, 50.0, float("nan")], [1.0, 0.9, 0.8]))["outcome"] == "not confirmed"
    assert judge_intervention(trial([1.0, 50.0, float("nan")], [1.0, 0.6, 0.4]))["outcome"] == "confirmed"
    # judged above the floor: 0.75 is 83% of the way down to the floor 0.7
    assert judge_intervention(trial([0.9, 0.89, 0.88], [0.9, 0.8, 0.71], loss_floor=0.7))["outcome"] == "confirmed"


def test_judge_uses_the_adam_pair_when_the_users_optimizer_pair_does_not_confirm():
    t = trial([1.0, 0.9, 0.8], [1.0, 0.9, 0.8], retry_before={"losses": [1.0, 0.9, 0.85]},
              retry_after={"losses": [1.0, 0.3, 0.05]})
    v = judge_intervention(t)
    assert v["outcome"] == "confirmed" and "Adam(lr=1e-3)" in v["intervention"]


def test_confidence_follows_the_confirmation():
    d = Diagnosis(cause="weight-init", confidence="medium")
    d.confirm("x", "overfit-tiny-batch", "a", "b")
    assert d.confidence == "high" and d.confirmed["outcome"] == "confirmed"
    d = Diagnosis(cause="weight-init", confidence="high")
    d.confirm("x", "overfit-tiny-batch", "a", "b", outcome="not confirmed")
    assert d.confidence == "medium"
    d = Diagnosis(cause="weight-init", confidence="medium")
    d.confirm("x", "overfit-tiny-batch", "a", "b", outcome="inconclusive")
    assert d.confidence == "medium"
    d.confirmed = None
    assert d.confidence == "medium"


# ------------------------------------------------------------------ through the Doctor and the CLI
def case(name):
    return next(c for c in BUGS if c.name == name)


def test_watch_only_report_has_no_confirmation():
    report = run_case(case("softmax-before-cross-entropy"))
    assert report.diagnosis.cause == "loss-input-format" and report.diagnosis.confirmed is None


def test_watch_plus_checkup_confirms_the_merged_diagnosis():
    """input-normalization is a watch check: the checkup alone does not see the cause, so
    the intervention must target the diagnosis of watch + checkup (prior_findings)."""
    report = run_case(case("unnormalized-0-255-input"), checkup=True)
    d = report.diagnosis
    assert d.cause == "input-normalization" and report.findings[0].check == "input-normalization"
    assert d.confirmed and d.confirmed["outcome"] == "confirmed" and d.confidence == "high"
    assert d.confirmed["intervention"].startswith("inputs standardised")
    trials = report.experiments["interventions"].trials
    assert trials[0].cause == "input-normalization" and trials[0].before and trials[0].after
    out = report.to_dict()["diagnosis"]["confirmed"]
    assert {"intervention", "probe", "before", "after", "outcome"} <= set(out)


def test_checkup_without_a_watch_confirms_its_own_diagnosis():
    model = net(nn.Softmax(dim=1))
    x, y = teacher()
    report = run_checkup(model, (x, y), optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
                         loss_fn=nn.CrossEntropyLoss(), select=["overfit-tiny-batch"],
                         prior_findings=[Finding("loss-input-format", Severity.ERROR, "t", "m", "Remove the softmax.",
                                                 where="loss", evidence=dict(SOFTMAX))])
    assert report.diagnosis.cause == "loss-input-format"
    assert report.diagnosis.confirmed["outcome"] == "confirmed"
    off = run_checkup(model, (x, y), optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
                      loss_fn=nn.CrossEntropyLoss(), select=["overfit-tiny-batch"], interventions=0)
    assert "interventions" not in off.experiments
    assert off.diagnosis is None or off.diagnosis.confirmed is None


def test_interventions_leave_the_users_model_and_rng_alone():
    model = net(nn.Softmax(dim=1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    doctor = Doctor(model, optimizer=opt, loss_fn=nn.CrossEntropyLoss())
    doctor.checkup(teacher(), prior_findings=[Finding("loss-input-format", Severity.ERROR, "t", "m", "f",
                                                      evidence=dict(SOFTMAX))])
    assert torch.equal(torch.rand(3), expected)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert isinstance(model[1], nn.Softmax)


def test_cli_report_carries_the_confirmation(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(
        "import torch\nfrom torch import nn\n"
        "torch.manual_seed(0)\n"
        "model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 4), nn.Softmax(dim=1))\n"
        "opt = torch.optim.SGD(model.parameters(), lr=0.05)\n"
        "g = torch.Generator().manual_seed(0)\n"
        "x = torch.randn(512, 20, generator=g)\n"
        "y = (x @ torch.randn(20, 4, generator=g)).argmax(1)\n"
        "for step in range(40):\n"
        "    idx = torch.randint(0, 512, (32,), generator=g)\n"
        "    loss = nn.functional.cross_entropy(model(x[idx]), y[idx])\n"
        "    opt.zero_grad()\n    loss.backward()\n    opt.step()\n")
    out = tmp_path / "r.json"
    result = CliRunner().invoke(app, ["check", str(script), "--steps", "20", "--json", str(out)],
                                catch_exceptions=False)
    assert result.exit_code == 1, result.output
    full = json.loads(out.read_text())
    jsonschema.validate(full, json.loads((Path(__file__).parent / "contract_schema.json").read_text()))
    d = full["diagnosis"]
    assert d["cause"] == "loss-input-format"
    assert d["confirmed"]["outcome"] == "confirmed" and "softmax" in d["confirmed"]["intervention"]
    assert "confirmed: with" in result.output


def test_an_intervention_steps_a_closure_optimizer_with_a_closure():
    """LBFGS needs ``step(closure)``: the intervention's fit replays the (replaced) loss in a
    closure instead of failing on ``opt.step()``."""
    from nndoctor.probes.context import ProbeContext
    from nndoctor.probes.interventions import _fit

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=5)
    ctx = ProbeContext(model, (x, y), opt, nn.MSELoss())
    clone = ctx.copy_model()
    lbfgs = torch.optim.LBFGS(clone.parameters(), lr=0.5, max_iter=5)
    calls = []

    def loss(c, out, t):
        calls.append(1)
        return nn.functional.mse_loss(out, t)

    losses, _ = _fit(ctx, clone, lbfgs, x, y, 5, loss=loss, zero_grad=True, reached=lambda l, a: False)
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert len(calls) > len(losses)  # the closure evaluated the replaced loss inside each step
