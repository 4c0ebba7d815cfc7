"""The experiments' advice follows their evidence (issue 10, item 4e): no "raise the learning
rate" on a run that diverged, percentages that read right when a loss rises, and an LR
sweep that a found root cause cripples is reported as inconclusive, pointing at the cause.

The checks are fed plain records (no model); the last tests run real checkups.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from nndoctor import Finding, Report, Severity
from nndoctor._diagnosis import diagnose
from nndoctor._experiments import run_checkup
from nndoctor._observations import Observations
from nndoctor.checks.experiments import LrSweep, OverfitTinyBatch


def obs_with(**experiments) -> Observations:
    obs = Observations()
    obs.experiments.update(experiments)
    return obs


def trial(start: float, end: float, n: int = 26) -> list[float]:
    return [start + (end - start) * min(1.0, i / 10) for i in range(n)]


def sweep(low: list[float], one: list[float], high: list[float], base_lr: float = 1.0) -> dict:
    return {"base_lr": base_lr, "optimizer": "SGD", "steps": len(one) - 1, "trials": {
        "0.1": {"lr": base_lr / 10, "losses": low},
        "1": {"lr": base_lr, "losses": one},
        "10": {"lr": base_lr * 10, "losses": high}}}


# ------------------------------------------------------------------------------ lr-sweep
def test_diverging_sweep_never_prints_a_negative_share():
    """x1 blows up, x0.1 also rises but stays finite: the message says so in words
    (the old text read "LR x0.1 removes -3865% of it")."""
    data = sweep(trial(2.0, 3.0), trial(2.0, 80.0), trial(2.0, math.inf))
    (f,), _ = LrSweep().run(obs_with(lr_sweep=data))
    assert f.severity is Severity.ERROR and f.evidence["better"] == "x0.1"
    assert not re.search(r"-\d+%", f.message)
    assert "stays finite" in f.message and "Divide the learning rate" in f.fix


def test_diverging_sweep_reports_the_fall_at_x01():
    data = sweep(trial(2.0, 0.5), trial(2.0, 80.0), trial(2.0, math.inf))
    (f,), _ = LrSweep().run(obs_with(lr_sweep=data))
    assert "falls by 75%" in f.message


def test_never_raise_the_lr_when_every_lower_lr_diverges_too():
    """x1 and x0.1 both blow up, x10 (by chance) does not: "LR too low" would be absurd."""
    data = sweep(trial(2.0, math.nan), trial(2.0, math.inf), trial(2.0, 1.0))
    findings, _ = LrSweep().run(obs_with(lr_sweep=data))
    assert not any("too low" in f.message or "Raise" in f.fix or "Multiply" in f.fix for f in findings)


def test_never_raise_the_lr_above_the_range_tests_blow_up():
    """x1 stalled, x10 better in the short trial, but the range test blew up below your LR."""
    data = sweep(trial(1.0, 0.99), trial(1.0, 0.97), trial(1.0, 0.6), base_lr=1.0)
    rng = {"suggestions": {"steep": 1e-3, "valley": 2e-3, "minimum/10": 3e-3}, "spread_decades": 0.5,
           "suggested_lr": 2e-3, "diverged_at": 0.5}
    findings, _ = LrSweep().run(obs_with(lr_sweep=data, lr_range=rng))
    assert findings and all("too high" in f.message for f in findings)
    # the same numbers without the blow-up point: x10 wins (control)
    rng["diverged_at"] = None
    (f,), _ = LrSweep().run(obs_with(lr_sweep=data, lr_range=rng))
    assert f.evidence["better"] == "x10"


def test_x01_better_while_x1_rises_reads_right():
    data = sweep(trial(1.0, 0.5), trial(1.0, 1.3), trial(1.0, 1.4))
    (f,), _ = LrSweep().run(obs_with(lr_sweep=data))
    assert "raises it by 30%" in f.message and "-30%" not in f.message


# ------------------------------------------------------------------------------ overfit advice
def overfit(user: list[float], retry: list[float]) -> dict:
    return {"n_samples": 8, "max_steps": 100, "task": "classification", "runs": [
        {"optimizer": "AdamW(lr=20)", "is_user": True, "losses": user},
        {"optimizer": "Adam(lr=0.001)", "is_user": False, "losses": retry}]}


def test_overfit_says_lower_the_lr_when_the_users_loss_blew_up():
    (f,), _ = OverfitTinyBatch().run(obs_with(overfit=overfit([1.4, 9.0, 30.0, math.nan], trial(1.4, 0.01, 40))))
    assert f.severity is Severity.WARNING and f.evidence["diverged"]
    assert f.fix.startswith("Lower the learning rate") and "Raise" not in f.fix


def test_overfit_says_raise_the_lr_when_the_users_loss_crawls():
    (f,), _ = OverfitTinyBatch().run(obs_with(overfit=overfit(trial(1.4, 1.3, 101), trial(1.4, 0.01, 40))))
    assert not f.evidence["diverged"] and f.fix.startswith("Raise the learning rate")


# ------------------------------------------------------------------------------ diagnosis rule
def _sweep_finding(better: str = "x10", severity: Severity = Severity.WARNING) -> Finding:
    return Finding("lr-sweep", severity, "Another learning rate trains clearly better",
                   "Your LR is too low.", "Multiply the learning rate by 10.",
                   evidence={"better": better, "base_lr": 0.05})


def test_lr_sweep_is_inconclusive_when_a_root_cause_explains_it():
    cause = Finding("loss-input-format", Severity.ERROR, "t", "Softmax before CrossEntropyLoss.",
                    "Remove the final softmax and feed the logits.", where="loss",
                    evidence={"loss_kind": "cross_entropy", "fed_by": "softmax"})
    sweep_f = _sweep_finding()
    findings = [sweep_f, cause]
    d = diagnose(findings)
    assert d.cause == "loss-input-format" and findings[0] is cause
    assert sweep_f.severity is Severity.INFO and sweep_f.explained_by == "loss-input-format"
    assert sweep_f.message.startswith("Inconclusive") and "`loss-input-format`" in sweep_f.fix
    assert "Multiply" not in sweep_f.fix and sweep_f.evidence["inconclusive_because"] == "loss-input-format"
    # idempotent: a second diagnosis (every sort and merge runs one) changes nothing
    text = sweep_f.message
    diagnose(findings)
    assert sweep_f.message == text and sweep_f.severity is Severity.INFO
    # without the cause, the sweep's own verdict comes back
    alone = [sweep_f]
    diagnose(alone)
    assert sweep_f.severity is Severity.WARNING and sweep_f.message == "Your LR is too low."
    assert "as_judged" not in sweep_f.evidence


def test_lr_sweep_keeps_its_verdict_when_the_cause_is_the_learning_rate():
    ratio = Finding("update-ratio", Severity.ERROR, "t", "Updates too large.", "Lower the LR.",
                    evidence={"direction": "high", "median_ratio": 0.5})
    sweep_f = _sweep_finding("x0.1", Severity.ERROR)
    findings = [sweep_f, ratio]
    diagnose(findings)
    # the sweep and the update ratio name the same cause: one explains the other, no demotion
    assert {sweep_f.explained_by, ratio.explained_by} & {"update-ratio", "lr-sweep"}
    assert sweep_f.severity is Severity.ERROR
    assert not sweep_f.message.startswith("Inconclusive")


def test_demotion_survives_the_json_round_trip():
    cause = Finding("input-normalization", Severity.WARNING, "t", "Inputs 0-255.", "Standardise the inputs.",
                    evidence={"mean": 120.0, "std": 70.0, "min": 0.0, "max": 255.0, "batches": 3})
    report = Report(findings=[_sweep_finding("x0.1", Severity.ERROR), cause])
    back = Report.from_dict(report.to_dict())
    (s,) = back.by_check("lr-sweep")
    assert s.severity is Severity.INFO and s.message.startswith("Inconclusive")
    assert s.message.count("Inconclusive") == 1


def test_softmax_before_cross_entropy_checkup_does_not_advise_raising_the_lr():
    """A real checkup: softmax fed to CrossEntropyLoss squashes the gradients, so x10 looks
    better in the sweep; merged with the loss-input-format finding, that advice is demoted."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 20, generator=g)
    y = (x @ torch.randn(20, 4, generator=g)).argmax(1)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 4), nn.Softmax(dim=1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    checkup = run_checkup(model, (x, y), optimizer=opt, loss_fn=nn.CrossEntropyLoss(), select=["lr-sweep"])
    cause = Finding("loss-input-format", Severity.ERROR, "t", "Softmax before CrossEntropyLoss.",
                    "Remove the final softmax.", where="loss",
                    evidence={"loss_kind": "cross_entropy", "fed_by": "softmax"})
    (alone,) = checkup.by_check("lr-sweep")
    # what the sweep sees: x10 faster while x1 falls steadily (6% in 25 steps) - a hint on its own
    assert alone.evidence["better"] == "x10" and alone.evidence["kind"] == "x1_learning"
    merged = Report(findings=[cause]).merge(checkup)
    assert merged.by_check("lr-sweep")
    assert merged.findings[0].check == "loss-input-format"
    for f in merged.by_check("lr-sweep"):
        assert f.severity is Severity.INFO and "Raise" not in f.fix and "Multiply" not in f.fix


# ------------------------------------------------------------------------------ loss floors
from nndoctor.probes import ProbeContext  # noqa: E402
from nndoctor.probes.overfit import loss_floor  # noqa: E402


def _floor(loss_fn, targets, out_dim: int = 4):
    model = nn.Linear(3, out_dim)
    x = torch.randn(targets.shape[0], 3)
    ctx = ProbeContext(model, (x, targets), None, loss_fn)
    return loss_floor(ctx, x, targets)


def test_bce_floor_is_the_soft_targets_entropy():
    t = torch.tensor([[0.2, 0.5], [1.0, 0.0]])
    floor, why = _floor(nn.BCELoss(), t, 2)
    # the floor is the loss at the best possible prediction p = t, computed by torch itself
    assert floor == pytest.approx(float(nn.BCELoss()(t.double(), t.double())), rel=1e-9)
    assert floor > 0.25 and "entropy" in why
    # hard 0/1 targets: floor 0
    assert _floor(nn.BCELoss(), torch.tensor([[1.0, 0.0]]), 2) == (0.0, None)


def test_bce_with_logits_floor_with_pos_weight_is_the_loss_minimum():
    t = torch.tensor([[0.3, 0.8, 0.5]])
    fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([2.0, 1.0, 3.0]))
    floor, _ = _floor(fn, t, 3)
    # oracle: minimise the loss over the logits directly
    z = torch.zeros_like(t, requires_grad=True)
    opt = torch.optim.LBFGS([z], max_iter=200, tolerance_change=1e-12, tolerance_grad=1e-12)

    def closure():
        opt.zero_grad()
        loss = fn(z, t)
        loss.backward()
        return loss

    opt.step(closure)
    assert floor == pytest.approx(float(fn(z.detach(), t)), abs=1e-5)


def test_label_smoothing_floor_matches_the_smoothed_entropy():
    fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    y = torch.tensor([0, 3, 1, 2])
    floor, why = _floor(fn, y, 4)
    # the loss of the best logits: log of the smoothed target distribution itself
    q = torch.full((4, 4), 0.1 / 4)
    q[torch.arange(4), y] += 0.9
    assert floor == pytest.approx(float(fn(q.log(), y)), rel=1e-6)
    assert "label smoothing" in why
    assert _floor(nn.CrossEntropyLoss(), y, 4) == (0.0, None)


def test_kl_and_mse_floors_are_zero():
    assert _floor(nn.KLDivLoss(reduction="batchmean"), torch.rand(4, 4), 4)[0] == 0.0
    assert _floor(nn.MSELoss(), torch.rand(4, 4), 4)[0] == 0.0


def overfit_record(losses, floor=0.0, task="regression"):
    return {"n_samples": 8, "max_steps": 100, "task": task, "loss_floor": floor,
            "loss_floor_reason": "the entropy of the soft targets" if floor else None,
            "runs": [{"optimizer": "Adam(lr=0.001)", "is_user": True, "losses": losses}]}


def test_overfit_is_judged_above_the_floor():
    losses = trial(0.70, 0.58, 101)  # 17% lower, but 92% of the way to the floor 0.57
    assert not OverfitTinyBatch().run(obs_with(overfit=overfit_record(losses, floor=0.57)))[0]
    (f,), _ = OverfitTinyBatch().run(obs_with(overfit=overfit_record(losses, floor=0.0)))
    assert f.severity is Severity.ERROR  # the same curve judged against 0 is not fitted


def test_slow_regression_that_halves_its_excess_is_a_warning_not_an_error():
    (f,), _ = OverfitTinyBatch().run(obs_with(overfit=overfit_record(trial(0.70, 0.62, 101), floor=0.57)))
    assert f.severity is Severity.WARNING and "levelled off" in f.message and "floor" in f.message
    (g,), _ = OverfitTinyBatch().run(obs_with(overfit=overfit_record(trial(0.70, 0.69, 101), floor=0.57)))
    assert g.severity is Severity.ERROR  # barely moves: a bug


def test_conv_autoencoder_with_sigmoid_bce_on_gray_levels_fits():
    """The issue's false alarm, end to end: a healthy conv autoencoder on gray levels."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from bugzoo import ConvAutoencoder, gray_images

    torch.manual_seed(0)
    model = ConvAutoencoder()
    x = gray_images(32)
    report = run_checkup(model, (x, x), optimizer=torch.optim.Adam(model.parameters(), lr=1e-3),
                         loss_fn=nn.BCELoss(), select=["overfit-tiny-batch"])
    assert not report.errors, [f.message for f in report.findings]
    record = report.experiments["overfit"]
    assert 0.4 < record.loss_floor < record.runs[0].losses[0]
