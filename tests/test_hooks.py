"""Hook hygiene: every hook removed on exit and on exceptions (which propagate
unchanged), the model is freed, user hooks still fire, two Doctors coexist, a failing
observer is switched off instead of breaking training."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from torch import nn

from conftest import global_hook_counts, live_hooks
from nndoctor import Doctor


def make():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return model, opt


def step(model, opt, x=None):
    x = torch.randn(4, 8) if x is None else x
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    opt.step()
    return loss


def test_hooks_removed_after_watch():
    model, opt = make()
    before_model, before_global = live_hooks(model), global_hook_counts()
    doctor = Doctor(model, optimizer=opt, sample_every=1)
    with doctor.watch():
        step(model, opt)
        assert live_hooks(model) > before_model  # really attached
        assert global_hook_counts()["autograd_backward_patched"] == 1
    assert live_hooks(model) == before_model
    assert global_hook_counts() == before_global
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks


class Boom(Exception):
    pass


class ExplodingForward(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        self.fc(x)
        raise Boom("forward failed")


def test_exception_in_forward_propagates_unchanged_and_leaves_no_hook():
    model = ExplodingForward()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    doctor = Doctor(model, optimizer=opt)
    with pytest.raises(Boom) as info:
        with doctor.watch():
            model(torch.randn(2, 8))
    assert str(info.value) == "forward failed"
    assert live_hooks(model) == 0
    doctor.report()  # evaluating what was recorded still works


class BadBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, g):
        raise Boom("backward failed")


def test_exception_in_backward_propagates_and_leaves_no_hook():
    model, opt = make()
    doctor = Doctor(model, optimizer=opt)
    with pytest.raises(Boom):
        with doctor.watch():
            BadBackward.apply(model(torch.randn(4, 8))).sum().backward()
    assert live_hooks(model) == 0
    assert global_hook_counts()["autograd_backward_patched"] == 0


def test_exception_in_optimizer_step_and_keyboard_interrupt():
    model, opt = make()

    def bad_step(*a, **k):
        raise Boom("step failed")

    doctor = Doctor(model, optimizer=opt)
    with pytest.raises(KeyboardInterrupt):
        with doctor.watch():
            step(model, opt)
            raise KeyboardInterrupt
    assert live_hooks(model) == 0
    opt.step = bad_step  # instance attribute shadows the hooked method
    with pytest.raises(Boom):
        with Doctor(model).watch():
            step(model, opt)
    assert live_hooks(model) == 0


def test_model_is_freed_by_refcount_after_watch():
    gc.collect()
    gc.disable()
    try:
        model, opt = make()
        doctor = Doctor(model, optimizer=opt, sample_every=1)
        with doctor.watch():
            for _ in range(3):
                step(model, opt)
        report = doctor.report()
        ref = weakref.ref(model)
        del model, opt, doctor
        assert ref() is None, "the model outlived the Doctor (reference cycle or leaked hook)"
        assert report.steps_observed == 3  # the report holds no model but keeps its data
    finally:
        gc.enable()


def test_user_hooks_still_fire_in_order():
    model, opt = make()
    calls = []
    h1 = model[0].register_forward_hook(lambda m, i, o: calls.append("user-fwd-0"))
    h2 = model.register_forward_hook(lambda m, i, o: calls.append("user-root"))
    with Doctor(model, optimizer=opt, sample_every=1).watch():
        step(model, opt)
    assert calls == ["user-fwd-0", "user-root"]
    h1.remove(), h2.remove()
    assert live_hooks(model) == 0


def test_two_doctors_coexist():
    m1, o1 = make()
    m2, o2 = make()
    d1, d2 = Doctor(m1, optimizer=o1, sample_every=1), Doctor(m2, optimizer=o2, sample_every=1)
    with d1.watch():
        with d2.watch():
            for _ in range(3):
                step(m1, o1)
                step(m2, o2)
        step(m1, o1)
    assert d1.report().steps_observed == 4
    assert d2.report().steps_observed == 3
    assert live_hooks(m1) == live_hooks(m2) == 0


def test_watch_cannot_be_nested_on_the_same_doctor():
    model, opt = make()
    doctor = Doctor(model, optimizer=opt)
    with doctor.watch():
        with pytest.raises(ValueError, match="already watching"):
            with doctor.watch():
                pass
    assert live_hooks(model) == 0


@pytest.mark.internal_errors_expected
def test_failing_observer_is_switched_off_not_raised(monkeypatch):
    import nndoctor.observers.activations as activations

    def broken(x):
        raise RuntimeError("observer bug")

    monkeypatch.setattr(activations, "mean_std", broken)
    model, opt = make()
    doctor = Doctor(model, optimizer=opt, sample_every=1)
    with doctor.watch():
        for _ in range(3):
            step(model, opt)  # must not raise
    assert live_hooks(model) == 0
    obs = doctor.observations
    assert any("observer bug" in n for n in obs.notes)
    assert list(obs.observer_failures) == ["activations"]
    assert len(obs.steps) == 3 and all(s.loss is not None for s in obs.steps)
    # only that unit went dark: the other units' per-layer data are all there
    assert all(s.grad_norms and s.update_norms and s.input is not None for s in obs.steps)
    assert not any(s.activations for s in obs.steps)


def test_bad_arguments_give_clear_errors():
    with pytest.raises(ValueError, match="torch.nn.Module"):
        Doctor("not a model")
    model, _ = make()
    with pytest.raises(ValueError, match="torch.optim.Optimizer"):
        Doctor(model, optimizer="sgd")
    with pytest.raises(ValueError, match="unknown check id 'dead-relus'.*dead-relu"):
        Doctor(model, select="dead-relus")
    with pytest.raises(ValueError, match="no threshold named"):
        Doctor(model, thresholds={"dead-relu": {"nope": 1}})
