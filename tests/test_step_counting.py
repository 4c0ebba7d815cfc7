"""What a step is: one optimizer.step() when the script uses an optimizer (closure
re-evaluations inside it and micro-batch backwards before it belong to that step), one
backward when the weights are updated by hand. Each test computes what the step was by
itself, outside nndoctor, and compares it with the records."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nndoctor import Doctor


def data(n=64):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, 8, generator=g)
    return x, (x[:, 0] + x[:, 1] > 0).long()


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 2))


def flat_grad_norm(model):
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()]).norm().item()


@pytest.mark.parametrize("given", [True, False], ids=["optimizer-given", "optimizer-discovered"])
def test_lbfgs_steps_are_optimizer_steps_not_closure_evaluations(given):
    model, (x, y) = net(), data()
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4)
    doctor = Doctor(model, optimizer=opt if given else None)
    evals, first_losses, deltas = [], [], []
    with doctor.watch():
        for _ in range(6):
            losses = []

            def closure():
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                losses.append(loss.item())
                loss.backward()
                return loss

            before = [p.detach().clone() for p in model.parameters()]
            opt.step(closure)
            deltas.append({n: (p.detach() - b).norm().item()
                           for (n, p), b in zip(model.named_parameters(), before)})
            evals.append(len(losses))
            first_losses.append(losses[0])
    assert sum(evals) > 6  # several closure evaluations per step, or the test proves nothing
    report = doctor.report()
    steps = doctor.observations.steps
    assert report.steps_observed == 6
    assert [s.backward_calls for s in steps] == evals
    # the step's loss is the loss at the weights it started from (the first evaluation)
    assert [s.loss for s in steps] == pytest.approx(first_losses, rel=1e-5)
    # update sizes are the whole optimizer step's, not one line-search evaluation's
    for rec, delta in zip(steps, deltas):
        if rec.sampled:
            assert rec.update_norms == pytest.approx(delta, rel=1e-4, abs=1e-7)


def test_watch_entered_inside_the_first_lbfgs_step_counts_that_step_once():
    """The CLI runner enters the watch at the model's first forward: inside the first
    closure evaluation, after the optimizer's pre-step hook ran."""
    model, (x, y) = net(), data()
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4)
    doctor = Doctor(model)
    watch = doctor.watch()
    entered = False
    evals = []
    try:
        for _ in range(5):
            n = 0

            def closure():
                nonlocal entered, n
                if not entered:
                    watch.__enter__()
                    entered = True
                n += 1
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                return loss

            opt.step(closure)
            evals.append(n)
    finally:
        watch.__exit__(None, None, None)
    assert max(evals) > 1
    steps = doctor.observations.steps
    assert doctor.report().steps_observed == 5
    assert [s.backward_calls for s in steps] == evals
    assert doctor.observations.has_optimizer
    # the first step began before the watch: its update size is not claimed
    assert not steps[0].update_norms
    assert all(s.update_norms for s in steps[1:] if s.sampled)


@pytest.mark.parametrize("given", [True, False], ids=["optimizer-given", "optimizer-discovered"])
def test_gradient_accumulation_is_one_step_per_optimizer_step(given):
    model, (x, y) = net(), data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    doctor = Doctor(model, optimizer=opt if given else None)
    means, grad_norms, deltas = [], [], []
    with doctor.watch():
        for _ in range(7):
            opt.zero_grad()
            micro = []
            for k in range(4):
                loss = F.cross_entropy(model(x[16 * k:16 * (k + 1)]), y[16 * k:16 * (k + 1)])
                micro.append(loss.item())
                (loss / 4).backward()
            means.append(sum(micro) / 4)
            grad_norms.append(flat_grad_norm(model))
            before = [p.detach().clone() for p in model.parameters()]
            opt.step()
            deltas.append({n: (p.detach() - b).norm().item()
                           for (n, p), b in zip(model.named_parameters(), before)})
    steps = doctor.observations.steps
    assert doctor.report().steps_observed == 7
    assert [s.step for s in steps] == list(range(7))
    assert [s.backward_calls for s in steps] == [4] * 7
    # the loss of a step is what was backpropagated over its micro-batches: their mean
    assert [s.loss for s in steps] == pytest.approx(means, rel=1e-5)
    # the gradient of a step is the accumulated one the optimizer applied, step 0 included
    assert [s.grad_total for s in steps] == pytest.approx(grad_norms, rel=1e-4)
    assert steps[0].sampled and steps[0].activations and steps[0].input is not None
    for rec, delta in zip(steps, deltas):
        if rec.sampled:
            assert rec.update_norms == pytest.approx(delta, rel=1e-4)
            assert all(v > 0 for v in rec.update_norms.values())
    assert doctor.observations.sampled_steps == sum(s.sampled for s in steps)


def test_plain_sgd_loop_counts_each_step_with_its_loss():
    model, (x, y) = net(), data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    doctor = Doctor(model)
    losses, grads = [], []
    with doctor.watch():
        for i in range(25):
            opt.zero_grad()
            loss = F.cross_entropy(model(x[i % 4 * 16:][:16]), y[i % 4 * 16:][:16])
            loss.backward()
            losses.append(loss.item())
            grads.append(flat_grad_norm(model))
            opt.step()
    steps = doctor.observations.steps
    assert doctor.report().steps_observed == 25
    assert [s.backward_calls for s in steps] == [1] * 25
    assert [s.loss for s in steps] == pytest.approx(losses, rel=1e-6)
    assert [s.grad_total for s in steps] == pytest.approx(grads, rel=1e-5)
    assert [s.step for s in steps if s.sampled] == [0, 1, 2, 3, 20]


@pytest.mark.parametrize("how", ["no_grad", "data"])
def test_updates_by_hand_count_each_backward(how):
    model, (x, y) = net(), data()
    doctor = Doctor(model)
    losses = []
    with doctor.watch():
        for i in range(8):
            model.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            losses.append(loss.item())
            if how == "no_grad":
                with torch.no_grad():
                    for p in model.parameters():
                        p -= 0.1 * p.grad
            else:  # bumps no version counter: the weight fingerprints tell
                for p in model.parameters():
                    p.data -= 0.1 * p.grad
            if i == 3:  # committed as steps while watching, not only at the end
                assert len(doctor._recorder.obs.steps) >= 2
    steps = doctor.observations.steps
    assert doctor.report().steps_observed == 8
    assert [s.loss for s in steps] == pytest.approx(losses, rel=1e-6)
    assert all(s.update_norms and all(v > 0 for v in s.update_norms.values()) for s in steps if s.sampled)
    assert not any(math.isnan(s.loss) for s in steps)


def test_live_tensorboard_stream_gets_optimizer_steps_not_micro_batches(tmp_path):
    """Backwards before the first optimizer step are held back, not streamed: the loss
    scalars written while training are one per optimizer step, with the step's loss."""
    from tensorboard.backend.event_processing import event_accumulator as ea

    model, (x, y) = net(), data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    doctor = Doctor(model)  # the optimizer is discovered at its first step
    means = []
    with doctor.watch(logdir=tmp_path):
        for _ in range(5):
            opt.zero_grad()
            micro = []
            for k in range(4):
                loss = F.cross_entropy(model(x[16 * k:16 * (k + 1)]), y[16 * k:16 * (k + 1)])
                micro.append(loss.item())
                (loss / 4).backward()
            means.append(sum(micro) / 4)
            opt.step()
    acc = ea.EventAccumulator(str(tmp_path), size_guidance={ea.SCALARS: 0})
    acc.Reload()
    events = acc.Scalars("nndoctor/loss/value")
    assert [e.step for e in events] == list(range(5))
    assert [e.value for e in events] == pytest.approx(means, rel=1e-5)
