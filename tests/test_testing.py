"""nndoctor.testing.assert_trains and the pytest plugin (fixture + marker), the plugin
exercised by running pytest in a subprocess on a generated test file."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest
import torch
from torch import nn

from nndoctor import Report
from nndoctor.testing import assert_trains

REPO = Path(__file__).resolve().parents[1]


def _data(n: int = 32, d: int = 8, classes: int = 3):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    y = (x @ torch.randn(d, classes, generator=g)).argmax(1)  # learnable labels
    return x, y


def _healthy():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))


class _InputLost(nn.Module):
    """A forward that loses its input on the way (multiplied by zero)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))

    def forward(self, x):
        return self.net(x * 0)


def _frozen():
    model = _healthy()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def test_healthy_model_passes_and_returns_the_report():
    x, y = _data()
    report = assert_trains(_healthy(), (x, y), nn.CrossEntropyLoss())
    assert isinstance(report, Report)
    assert "overfit-tiny-batch" in report.checks_run
    assert not report.errors


def test_frozen_model_cannot_be_shown_to_train():
    x, y = _data()
    with pytest.raises(AssertionError, match="no trainable parameters"):
        assert_trains(_frozen(), (x, y), nn.CrossEntropyLoss())
    # Nothing to check (every experiment ignored): nothing to fail on.
    every = ["overfit-tiny-batch", "random-input-loss", "lr-sweep", "gradient-check"]
    report = assert_trains(_frozen(), (x, y), nn.CrossEntropyLoss(), ignore=every)
    assert not set(every) & set(report.checks_run)


def test_broken_model_fails_with_the_readable_report():
    x, y = _data()
    with pytest.raises(AssertionError) as info:
        assert_trains(_InputLost(), (x, y), nn.CrossEntropyLoss())
    text = str(info.value)
    assert "does not train" in text
    assert "Errors (" in text  # the console report, rendered as plain text
    assert "\x1b[" not in text  # no colour codes in an assertion message
    assert "fix:" in text


def test_fail_on_and_ignore():
    x, y = _data()
    with pytest.raises(AssertionError) as info:
        assert_trains(_InputLost(), (x, y), nn.CrossEntropyLoss())
    failing = {line.split("[", 1)[1].split("]", 1)[0] for line in str(info.value).splitlines()
               if line.startswith("error[")}
    assert failing
    # Ignoring every failing check turns the failure into a pass (select/ignore reach the Doctor).
    report = assert_trains(_InputLost(), (x, y), nn.CrossEntropyLoss(), ignore=sorted(failing))
    assert not report.errors
    assert not (set(report.checks_run) & failing)
    with pytest.raises(ValueError, match="unknown severity"):
        assert_trains(_healthy(), (x, y), nn.CrossEntropyLoss(), fail_on="fatal")


def test_entry_point_is_declared():
    text = (REPO / "pyproject.toml").read_text()
    assert "[project.entry-points.pytest11]" in text
    assert 'nndoctor = "nndoctor.pytest_plugin"' in text


def _plugin_args() -> list[str]:
    eps = metadata.entry_points(group="pytest11")
    if any(ep.value == "nndoctor.pytest_plugin" for ep in eps):
        return []  # installed: pytest loads the plugin through the entry point by itself
    return ["-p", "nndoctor.pytest_plugin"]  # an older install: load it by name


USER_TESTS = '''
import pytest
import torch
from torch import nn


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 8, generator=g)
    return x, (x @ torch.randn(8, 3, generator=g)).argmax(1)


def healthy():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))


def test_healthy_trains(nndoctor_assert_trains):
    nndoctor_assert_trains(healthy(), data(), nn.CrossEntropyLoss())


class InputLost(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = healthy()

    def forward(self, x):
        return self.net(x * 0)  # the bug: the input is lost


def test_broken_trains(nndoctor_assert_trains):
    nndoctor_assert_trains(InputLost(), data(), nn.CrossEntropyLoss())


@pytest.mark.nndoctor(ignore=["overfit-tiny-batch", "random-input-loss"])
def test_broken_with_its_findings_ignored(nndoctor_assert_trains):
    nndoctor_assert_trains(InputLost(), data(), nn.CrossEntropyLoss())
'''


def test_pytest_plugin_in_a_subprocess(tmp_path):
    (tmp_path / "test_user_model.py").write_text(textwrap.dedent(USER_TESTS))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "COLUMNS": "100"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", *_plugin_args(),
         "test_user_model.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out  # one test failed (pytest's exit code for failures)
    assert "PASSED test_user_model.py::test_healthy_trains" in out, out
    assert "FAILED test_user_model.py::test_broken_trains" in out, out
    assert "PASSED test_user_model.py::test_broken_with_its_findings_ignored" in out, out
    # The failure message is nndoctor's report.
    assert "does not train as expected" in out
    assert "error[" in out and "fix:" in out
    assert "1 failed, 2 passed" in out
