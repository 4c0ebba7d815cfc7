"""The runner's experiments on ordinary models: outputs that are tuples, logits reshaped
by the script before the loss, hand-written update rules (a stand-in optimizer)."""

from __future__ import annotations

from pathlib import Path

import torch

from nndoctor._runner import _find_loss_input, _OutputAdapter, run_script

SCRIPT = Path(__file__).parent / "scripts" / "tuple_output_lm.py"


def test_find_loss_input_in_tuples_dicts_and_reshapes():
    logits = torch.randn(4, 5, 7)
    assert _find_loss_input(logits, (4, 5, 7)) == ((), None)
    assert _find_loss_input((logits, (torch.randn(1, 4, 3),)), (20, 7)) == ((0,), (7,))
    assert _find_loss_input({"loss": torch.tensor(1.0), "logits": logits}, (20, 7)) == (("logits",), (7,))
    assert _find_loss_input(torch.randn(3, 3), (20, 7)) is None
    model = torch.nn.Linear(7, 7)
    wrapped = _OutputAdapter(torch.nn.Sequential(model), (), (7,))
    assert wrapped(torch.randn(4, 5, 7)).shape == (20, 7)
    assert {id(p) for p in wrapped.parameters()} == {id(p) for p in model.parameters()}


def test_experiments_run_on_a_tuple_output_language_model():
    run = run_script(SCRIPT, ["--steps", "40"], steps=12, timeout=120)
    report = run.report
    assert run.steps == 12
    assert {"overfit-tiny-batch", "random-input-loss", "gradient-check"} <= set(report.checks_run), report.checks_skipped
    skipped = {s["check"]: s["reason"] for s in report.checks_skipped}
    assert "not plain SGD" in skipped["lr-sweep"]
    assert any("output reduced to the loss's input" in n for n in run.notes)
    # verdicts from a stand-in optimizer are never errors
    assert not [f for f in report.findings if f.severity.value == "error"]


def test_seq_first_layout_works_too():
    run = run_script(SCRIPT, ["--steps", "40", "--seq-first"], steps=8, timeout=120)
    assert "gradient-check" in run.report.checks_run, run.report.checks_skipped
