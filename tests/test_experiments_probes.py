"""Probes measure, checks judge: the layering of the checkup experiments.

The probes (``nndoctor.probes``) return typed, JSON-able records and never import a
check or a reporter; the settings a probe runs with come from its check's thresholds;
a probe whose loss is not finite yields no verdict; the gradient check runs in float64
even where ``forward`` builds its own tensors.
"""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import nndoctor
from nndoctor import _probe_records as records
from nndoctor._experiments import run_checkup
from nndoctor._losskinds import loss_kind
from nndoctor._observations import Observations
from nndoctor._tree import map_tensors, tensors
from nndoctor.checks.experiments import GradientCheck, LrSweep, OverfitTinyBatch, RandomInputLoss

K = 4
PROBES = Path(nndoctor.__file__).parent / "probes"


def blobs(n: int = 32, d: int = 20, *, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(K, d, generator=g) * 1.5
    y = torch.randint(0, K, (n,), generator=g)
    return centers[y] + torch.randn(n, d, generator=g), y


def mlp(extra: nn.Module | None = None) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 32), nn.Tanh(), extra or nn.Identity(), nn.Linear(32, K))


# ------------------------------------------------------------------------ layering
def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            found.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


@pytest.mark.parametrize("module", sorted(p.name for p in PROBES.glob("*.py")))
def test_no_probe_imports_a_check_or_a_reporter_or_writes_files(module):
    path = PROBES / module
    imported = _imports(path)
    assert not [m for m in imported if "checks" in m or "reporters" in m or "_report" in m], imported
    source = path.read_text()
    for writer in ("open(", "savefig", ".write_text", ".write_bytes", "mkdir"):
        assert writer not in source, f"{module} writes files ({writer})"


@pytest.mark.parametrize("path", ["_probe_records.py", "checks/experiments.py", "checks/overfit.py", "checks/pairing.py",
                                  "checks/lr_sweep.py",
                                  "checks/gradient_check.py", "checks/_experiment_common.py", "checks/loss.py"])
def test_records_and_checks_are_pure_python(path):
    imported = _imports(Path(nndoctor.__file__).parent / path)
    assert not [m for m in imported if m.split(".")[0] in ("torch", "numpy")], imported


def test_probe_records_carry_no_verdict():
    verdict_words = {"passed", "fitted", "ok", "fires", "severity"}
    for cls in records.RECORD_TYPES.values():
        names = {f for f in cls._names()}
        assert not names & verdict_words, (cls.__name__, names & verdict_words)


# ------------------------------------------------------------------------- records
def test_checkup_leaves_typed_json_able_records_under_the_usual_keys():
    model = mlp()
    report = run_checkup(model, blobs(), optimizer=torch.optim.SGD(model.parameters(), lr=0.05))
    expected = {
        "init": records.InitLoss,
        "overfit": records.OverfitRun,
        "random_input": records.RandomInputRun,
        "lr_sweep": records.LrSweepRun,
        "lr_range": records.LrRangeTest,
        "gradcheck": records.GradcheckRun,
    }
    for key, kind in expected.items():
        record = report.experiments[key]
        assert type(record) is kind, key
        plain = record.to_dict()
        assert json.loads(json.dumps(plain)) == plain  # plain numbers, lists and strings
        assert kind.coerce(plain) == record  # the dict form converts back to the same record
    overfit = report.experiments["overfit"]
    assert isinstance(overfit.runs[0], records.OverfitCurve)
    assert overfit["runs"][0]["losses"] == overfit.runs[0].losses  # dict-style reads still work


def test_a_probe_that_cannot_run_leaves_a_skip_record():
    class NoParams(nn.Module):
        def forward(self, x):
            return x[:, :K]

    report = run_checkup(NoParams(), blobs(), select=["overfit-tiny-batch"])
    record = report.experiments["overfit"]
    assert isinstance(record, records.ProbeSkipped) and "no trainable parameters" in record.skipped
    assert report.checks_skipped == [{"check": "overfit-tiny-batch", "reason": record.skipped}]


# ---------------------------------------------------- settings from the thresholds
def test_overfit_probe_runs_the_step_budget_of_the_check():
    model = mlp()
    x, y = blobs()
    sgd = torch.optim.SGD(model.parameters(), lr=1e-6)  # cannot fit: every step is used
    report = run_checkup(model, (x, y), optimizer=sgd, select=["overfit-tiny-batch"],
                         thresholds={"overfit-tiny-batch": {"max_steps": 3}})
    record = report.experiments["overfit"]
    assert record.max_steps == 3
    assert len(record.runs[0].losses) == 4  # the loss before each of 3 updates, and after the last
    assert all(len(run.losses) <= 4 for run in record.runs)


def test_overfit_probe_stops_at_the_target_the_check_judges_by():
    model = mlp()
    report = run_checkup(model, blobs(), select=["overfit-tiny-batch"],
                         thresholds={"overfit-tiny-batch": {"loss_fraction": 0.9, "min_accuracy": 2.0}})
    (run,) = report.experiments["overfit"].runs
    # stopped at the first step whose loss is at most 90% of the start, and the check agrees
    assert run.losses[-1] <= 0.9 * run.losses[0] < min(run.losses[:-1])
    assert OverfitTinyBatch(loss_fraction=0.9, min_accuracy=2.0).fitted_at(run) == len(run.losses) - 1
    assert report.by_check("overfit-tiny-batch") == []


def test_the_checks_judge_dicts_and_records_alike():
    curve = {"optimizer": "SGD", "losses": [2.0, 1.0, 0.5], "accuracies": None}
    as_dict = Observations(experiments={"overfit": {"runs": [curve], "n_samples": 8}})
    as_record = Observations(experiments={"overfit": records.OverfitRun.coerce({"runs": [curve], "n_samples": 8})})
    for obs in (as_dict, as_record):
        findings, reason = OverfitTinyBatch().run(obs)
        assert reason is None and len(findings) == 1  # 0.5 > 10% of 2.0


# ------------------------------------------------------ non-finite: no verdict
class NaNModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(20, K)

    def forward(self, x):
        return self.fc(x) * float("nan")


def test_a_loss_that_is_never_finite_gives_no_verdict_but_an_inconclusive_skip():
    torch.manual_seed(0)
    model = NaNModel()
    report = run_checkup(model, blobs(), select=["chance-level-loss", "overfit-tiny-batch", "random-input-loss", "lr-sweep"])
    assert report.findings == []
    reasons = {s["check"]: s["reason"] for s in report.checks_skipped}
    assert set(reasons) == {"chance-level-loss", "overfit-tiny-batch", "random-input-loss", "lr-sweep"}
    assert all("inconclusive" in r for r in reasons.values()), reasons
    # the probe recorded what it saw
    assert math.isnan(report.experiments["overfit"].runs[0].losses[0])


@pytest.mark.parametrize("check,key,data", [
    (OverfitTinyBatch, "overfit", {"runs": [{"optimizer": "SGD", "losses": [math.inf]}], "n_samples": 8}),
    (LrSweep, "lr_sweep", {"base_lr": 0.1, "trials": {"1": {"lr": 0.1, "losses": [math.nan]}}}),
    (RandomInputLoss, "random_input", {"output_change": {"noise": 0.5, "zeros": 0.5},
                                       "train_loss": {"real": [math.nan], "zeros": [1.0], "noise": [1.0]}}),
], ids=["overfit", "lr-sweep", "random-input"])
def test_checks_skip_a_non_finite_start_as_inconclusive(check, key, data):
    findings, reason = check().run(Observations(experiments={key: data}))
    assert findings == [] and reason is not None and reason.startswith("inconclusive")


def test_a_loss_that_becomes_non_finite_is_still_judged():
    runs = [{"optimizer": "SGD", "losses": [2.0, 5.0, math.inf]}]
    findings, reason = OverfitTinyBatch().run(Observations(experiments={"overfit": {"runs": runs, "n_samples": 8}}))
    assert reason is None and "NaN/Inf" in findings[0].message


# ------------------------------------------------------ gradcheck in float64
class BuildsItsOwnTensor(nn.Module):
    """A correct custom layer whose forward creates a tensor with the default dtype."""

    def forward(self, x):
        return x @ (torch.eye(x.shape[-1]) * 0.5)


def test_gradcheck_runs_in_float64_where_forward_builds_tensors_and_restores_the_default():
    before = torch.get_default_dtype()
    report = run_checkup(mlp(BuildsItsOwnTensor()), blobs(16), select=["gradient-check"])
    assert torch.get_default_dtype() is before
    (unit,) = report.experiments["gradcheck"].units
    assert unit.raised is None and unit.mismatch is None, unit
    assert report.by_check("gradient-check") == []
    assert report.experiments["gradcheck"].model.dtype == "float64"


def test_gradient_check_judges_the_unit_records():
    check = GradientCheck(max_relative_error=1e-3)
    unit = records.GradcheckUnit
    assert check.unit_passed(unit(method="gradcheck"))
    assert not check.unit_passed(unit(method="gradcheck", mismatch="gradcheck: Jacobian mismatch"))
    assert not check.unit_passed(unit(method="gradcheck", raised="its forward raised ValueError"))
    assert check.unit_passed(unit(method="directional u^T J v", max_rel_error=1e-3))
    assert not check.unit_passed(unit(method="directional u^T J v", max_rel_error=1.01e-3))
    assert not check.unit_passed(unit(method="directional u^T J v", max_rel_error=math.inf))


# ------------------------------------------------------------- shared vocabulary
def test_tree_walker_rebuilds_every_container_kind():
    from collections import namedtuple

    Pair = namedtuple("Pair", "a b")
    t = torch.ones(2)
    nested = {"x": [t, (t, Pair(t, 3))], "n": None}
    doubled = map_tensors(nested, lambda v: v * 2)
    assert isinstance(doubled["x"][1][1], Pair) and doubled["x"][1][1].b == 3 and doubled["n"] is None
    assert [float(v.sum()) for v in tensors(doubled)] == [4.0, 4.0, 4.0]


def test_loss_kind_table_tells_huber_from_smooth_l1_and_knows_kl_div():
    import torch.nn.functional as F

    assert loss_kind(nn.HuberLoss()) == loss_kind(F.huber_loss) == "huber"
    assert loss_kind(nn.SmoothL1Loss()) == loss_kind(F.smooth_l1_loss) == "smooth_l1"
    assert loss_kind(nn.KLDivLoss()) == loss_kind(F.kl_div) == "kl_div"
    assert loss_kind(lambda out, y: out.sum()) == "other"
    # the graph table speaks the same kinds, and each kind maps back to its function
    from nndoctor._losskinds import GRAPH_NODE_KINDS, KINDS, loss_function

    assert set(GRAPH_NODE_KINDS.values()) <= set(KINDS)
    for fn in (F.cross_entropy, F.nll_loss, F.mse_loss, F.huber_loss, F.smooth_l1_loss, F.kl_div):
        assert loss_function(loss_kind(fn)) is fn
