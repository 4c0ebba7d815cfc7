"""Shared fixtures. The leak guard counts live hooks in torch's primary global hook
dicts before and after every test (written against torch 2.13; see
shared/reference/hook-hygiene-experiments.md: compare live counts, not whole dicts,
because torch leaves an inert id in `_global_forward_hooks_with_kwargs`)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))


def global_hook_counts() -> dict[str, int]:
    from torch.nn.modules import module as m
    from torch.optim import optimizer as o

    return {
        "forward_pre": len(m._global_forward_pre_hooks),
        "forward": len(m._global_forward_hooks),
        "backward_pre": len(m._global_backward_pre_hooks),
        "backward": len(m._global_backward_hooks),
        "optimizer_pre": len(o._global_optimizer_pre_hooks),
        "optimizer_post": len(o._global_optimizer_post_hooks),
        "autograd_backward_patched": int(getattr(torch.autograd.backward, "__wrapped__", None) is not None),
        "grad_scaler_patched": int(hasattr(torch.amp.GradScaler.update, "__wrapped__")),
    }


def live_hooks(model: torch.nn.Module) -> int:
    n = 0
    for mod in model.modules():
        for d in (mod._forward_pre_hooks, mod._forward_hooks, mod._backward_pre_hooks, mod._backward_hooks):
            n += len(d or {})
    for p in model.parameters():
        n += len(getattr(p, "_backward_hooks", None) or {})
        n += len(getattr(p, "_post_accumulate_grad_hooks", None) or {})
    return n


@pytest.fixture(scope="session", autouse=True)
def strict_mode():
    """The whole suite runs in nndoctor's strict mode: a check or a probe that crashes
    raises instead of becoming an "internal error" skip, so no test can count a crash as
    "no false alarm". Set in the environment, so the CLI subprocesses inherit it."""
    import os

    from nndoctor._checkset import STRICT_ENV

    before = os.environ.get(STRICT_ENV)
    os.environ[STRICT_ENV] = "1"
    yield
    if before is None:
        os.environ.pop(STRICT_ENV, None)
    else:
        os.environ[STRICT_ENV] = before


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "internal_errors_expected: the test provokes an observer failure on purpose")


@pytest.fixture(autouse=True)
def no_observer_failures(request, monkeypatch):
    """Strict mode for the observers too: a hook that fails is switched off (never raised
    into the user's forward), so the test fails here, at teardown, naming it."""
    from nndoctor._observe import Recorder

    failures: list[str] = []
    original = Recorder.unit_failed

    def record(self, unit, where, exc):
        failures.append(f"observer '{getattr(unit, 'name', unit)}' failed in {where}: {exc!r}")
        return original(self, unit, where, exc)

    monkeypatch.setattr(Recorder, "unit_failed", record)
    yield
    if request.node.get_closest_marker("internal_errors_expected") is None:
        assert not failures, f"internal errors in nndoctor's observers: {failures}"


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """One intra-op thread for the whole suite: on 2-core CI boxes (with subprocess tests
    beside us) it is several times faster for these small models than the default."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def leak_guard():
    before = global_hook_counts()
    yield
    after = global_hook_counts()
    assert after == before, f"global hooks leaked by this test: before={before} after={after}"


def pytest_collection_modifyitems(config, items):
    """`gpu` tests need CUDA: skipped (with the reason) on machines without it; they run
    on a lent GPU machine with `python -m pytest -m gpu`."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
