"""The script runner (nndoctor._runner): in-process runs of small scripts.

Every test goes through the autouse leak guard (tests/conftest.py): the runner's global
module/optimizer hooks and the Doctor's backward patch must all be gone afterwards."""

from __future__ import annotations

import io
import multiprocessing
import runpy
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch

from _scripts import write
from nndoctor._doctor import NNDoctorUsageError
from nndoctor._runner import (
    Outcome,
    ScriptNotFound,
    ScriptSyntaxError,
    infer_sgd_lr,
    run_script,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run(path, *args, **kw):
    kw.setdefault("steps", 5)
    kw.setdefault("experiments", False)
    out = io.StringIO()
    with redirect_stdout(out):
        result = run_script(path, list(args), **kw)
    result.stdout = out.getvalue()
    return result


def test_stops_after_the_requested_steps_and_sees_step_zero(tmp_path):
    r = run(write(tmp_path, "train"), steps=7)
    assert r.outcome is Outcome.STEPS_REACHED
    assert r.steps == 7 and r.report.steps_observed == 7
    assert r.model == "Sequential" and r.optimizer == "SGD"
    # stopped inside the 7th optimizer.step(): the script's print after it never ran
    assert r.stdout.count("loss") == 6
    steps = r.report.observations.steps
    # The Doctor starts inside the model's first forward: that forward is still step 0.
    assert steps[0].input is not None and steps[0].activations
    assert steps[0].loss is not None


def test_captured_batch_is_the_first_batch(tmp_path):
    """The replayed root pre-hook captures step 0's inputs, not step 1's."""
    from nndoctor import _runner

    seen = {}
    original = _runner._Session._start_watching

    def spy(self, model, args):
        seen["first"] = args[0].detach().clone()
        return original(self, model, args)

    _runner._Session._start_watching = spy
    try:
        r = run(write(tmp_path, "train"), steps=3)
    finally:
        _runner._Session._start_watching = original
    assert r.steps == 3
    # run_script released the Doctor; the captured inputs went into the report's steps
    first = r.report.observations.steps[0].input
    assert first.shape == tuple(seen["first"].shape)
    assert first.mean == pytest.approx(float(seen["first"].mean()), rel=1e-5)


def test_process_state_is_restored(tmp_path):
    argv, path, stdin, grad = list(sys.argv), list(sys.path), sys.stdin, torch.is_grad_enabled()
    script = write(tmp_path, "train")
    (tmp_path / "helper_mod_xyz.py").write_text("VALUE = 1\n")
    script.write_text("import helper_mod_xyz\nimport torch\ntorch.set_grad_enabled(True)\n" + script.read_text())
    run(script, "--flag", steps=2)
    assert sys.argv == argv and sys.path == path and sys.stdin is stdin
    assert torch.is_grad_enabled() == grad
    assert "helper_mod_xyz" not in sys.modules
    assert "__main__" in sys.modules and sys.modules["__main__"].__name__ == "__main__"


def test_script_seed_gives_the_same_numbers_as_a_plain_run(tmp_path):
    """Does no harm: the script's own torch.manual_seed stream is untouched by the watch."""
    script = write(tmp_path, "train")
    plain = io.StringIO()
    with redirect_stdout(plain):
        runpy.run_path(str(script), run_name="__main__")
    r = run(script, steps=10)
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 9
    assert lines == plain.getvalue().strip().splitlines()[:9]


def test_except_exception_in_the_script_cannot_swallow_the_stop(tmp_path):
    r = run(write(tmp_path, "swallow"), steps=4)
    assert r.outcome is Outcome.STEPS_REACHED and r.steps == 4


def test_script_raising_while_training_keeps_findings_and_points_at_user_line(tmp_path):
    script = write(tmp_path, "raise_during")
    r = run(script, steps=10)
    assert r.outcome is Outcome.RAISED
    assert r.steps == 4 and r.report is not None
    e = r.error
    assert e.type == "ZeroDivisionError"
    assert Path(e.file).name == "raise_during.py" and e.line is not None
    assert "1 / 0" in e.source_line
    assert "_runner.py" not in e.traceback and "runpy" not in e.traceback


def test_script_raising_before_training(tmp_path):
    r = run(write(tmp_path, "raise_before"))
    assert r.outcome is Outcome.RAISED and r.report is None
    assert r.error.type == "FileNotFoundError" and r.error.function == "load_data"


def test_sys_exit_after_training_reports_normally(tmp_path):
    r = run(write(tmp_path, "exit_during"), steps=20)
    assert r.outcome is Outcome.EXITED and r.exit_code == 0
    assert r.steps == 6 and r.report is not None


def test_script_that_never_trains(tmp_path):
    r = run(write(tmp_path, "never_trains"))
    assert r.outcome is Outcome.FINISHED and r.report is None
    assert r.seen.calls_without_grad == 1 and "gradients disabled" in r.seen.describe()
    r = run(write(tmp_path, "no_backward"))
    assert r.model == "Linear" and r.steps == 0 and r.seen.model_calls == 3
    r = run(write(tmp_path, "no_torch"))
    assert r.seen.describe() == "no torch.nn.Module was ever called"


def test_stdin_is_an_empty_stream(tmp_path):
    r = run(write(tmp_path, "stdin"), steps=5)
    assert r.outcome is Outcome.STEPS_REACHED
    r = run(write(tmp_path, "input_eof"))
    assert r.outcome is Outcome.RAISED and r.error.type == "EOFError"


def test_timeout_stops_a_script_stuck_outside_torch(tmp_path):
    import time

    t0 = time.monotonic()
    r = run(write(tmp_path, "sleepy"), timeout=0.5)
    assert r.outcome is Outcome.TIMEOUT
    assert time.monotonic() - t0 < 10


def test_argparse_arguments_reach_the_script(tmp_path):
    out = tmp_path / "lr.txt"
    r = run(write(tmp_path, "with_args"), "--lr", "0.25", "--out", str(out), steps=3)
    assert r.outcome is Outcome.STEPS_REACHED
    assert out.read_text() == "0.25"


def test_dataloader_workers_are_shut_down(tmp_path):
    r = run(EXAMPLES / "healthy_mlp.py", "--workers", "2", "--epochs", "1", steps=3)
    assert r.outcome is Outcome.STEPS_REACHED and r.steps == 3
    assert multiprocessing.active_children() == []


def test_missing_file_and_syntax_error_run_nothing(tmp_path):
    with pytest.raises(ScriptNotFound, match="no such file"):
        run_script(tmp_path / "nope.py")
    with pytest.raises(ScriptNotFound, match="folder"):
        run_script(tmp_path)
    with pytest.raises(ScriptSyntaxError) as info:
        run_script(write(tmp_path, "syntax_error"))
    assert info.value.lineno == 2 and "syntax_error.py:2" in str(info.value)
    with pytest.raises(NNDoctorUsageError, match="dead-relu"):
        run_script(write(tmp_path, "train"), select="dead-rel")


def test_experiments_run_on_the_captured_batch(tmp_path):
    r = run(write(tmp_path, "train"), steps=5, experiments=True, select="overfit-tiny-batch,dead-relu")
    assert r.experiments == "ran"
    assert "overfit-tiny-batch" in r.report.checks_run
    assert "overfit" in r.report.experiments


def test_custom_losses_skip_the_experiments_with_a_reason_and_scaled_ones_run(tmp_path):
    r = run(write(tmp_path, "custom_loss"), steps=5, experiments=True)
    reasons = {s["check"]: s["reason"] for s in r.report.checks_skipped}
    assert "hand-written loss" in reasons["overfit-tiny-batch"]
    assert "NegBackward0" in reasons["overfit-tiny-batch"]  # names what it saw
    # `0.5 * cross_entropy(...)`: the loss call is replayed and the scale recognised.
    r = run(write(tmp_path, "scaled_loss"), steps=5, experiments=True)
    assert r.experiments == "ran", r.experiments
    assert any("× 0.5" in n for n in r.notes), r.notes


def test_manual_sgd_learning_rate_is_inferred():
    r = run(EXAMPLES / "manual_sgd.py", steps=5)
    assert r.optimizer is None and r.steps == 5
    assert infer_sgd_lr(r.report.observations) == pytest.approx(0.2, rel=1e-3)
