"""Does-no-harm: a checkup leaves the user's model, optimizer and every RNG stream exactly
as they were, and the Doctor's own hooks never fire on the experiment copies."""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch
from torch import nn

from nndoctor._experiments import run_checkup


ALL = ["chance-level-loss", "overfit-tiny-batch", "random-input-loss", "lr-sweep", "gradient-check"]


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Dropout(0.2))
        self.frozen = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        h = self.features(x).mean((2, 3))
        return self.head(torch.relu(self.frozen(h)))


def batch(n: int = 16):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def snapshot(model: nn.Module, opt: torch.optim.Optimizer):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        copy.deepcopy(opt.state_dict()),
        {name: m.training for name, m in model.named_modules()},
        {name: p.requires_grad for name, p in model.named_parameters()},
        {name: None if p.grad is None else p.grad.clone() for name, p in model.named_parameters()},
    )


def assert_same(before, after) -> None:
    sd0, opt0, train0, req0, grad0 = before
    sd1, opt1, train1, req1, grad1 = after
    assert sd0.keys() == sd1.keys()
    for k in sd0:
        assert torch.equal(sd0[k], sd1[k]), k  # weights and BatchNorm running stats
    assert train0 == train1
    assert req0 == req1
    for k in grad0:
        assert (grad0[k] is None) == (grad1[k] is None)
        if grad0[k] is not None:
            assert torch.equal(grad0[k], grad1[k]), k
    assert opt0["param_groups"] == opt1["param_groups"]
    assert opt0["state"].keys() == opt1["state"].keys()
    for i in opt0["state"]:
        for key, value in opt0["state"][i].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(opt1["state"][i][key])), (i, key)


@pytest.fixture
def trained():
    torch.manual_seed(0)
    model = Net()
    model.frozen.weight.requires_grad_(False)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9, weight_decay=1e-4)
    x, y = batch()
    for _ in range(2):  # momentum buffers, BN statistics and grads all non-trivial
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.features[1].eval()  # a mixed train/eval map must come back as it was
    return model, opt


def test_checkup_leaves_model_and_optimizer_untouched(trained):
    model, opt = trained
    before = snapshot(model, opt)
    report = run_checkup(model, batch(), optimizer=opt, select=ALL)
    assert {"overfit-tiny-batch", "random-input-loss", "lr-sweep", "gradient-check"} <= set(report.checks_run)
    assert_same(before, snapshot(model, opt))


def test_checkup_leaves_every_rng_stream_where_it_was(trained):
    model, opt = trained
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    run_checkup(model, batch(), optimizer=opt, select=ALL)
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0])
    assert np.array_equal(expected[1], got[1])
    assert expected[2] == got[2]


def test_model_state_restored_even_when_the_checkup_raises(trained):
    model, opt = trained
    before = snapshot(model, opt)
    x, _ = batch()
    float_targets = torch.randn(16, 3)  # no default loss for these
    torch.manual_seed(7)
    expected = torch.rand(2)
    torch.manual_seed(7)
    with pytest.raises(ValueError, match="loss_fn"):
        run_checkup(model, (x, float_targets), optimizer=opt)
    assert torch.equal(torch.rand(2), expected)
    assert_same(before, snapshot(model, opt))


def test_checkup_is_deterministic(trained):
    model, opt = trained
    a = run_checkup(model, batch(), optimizer=opt, select=["overfit-tiny-batch", "lr-sweep"])
    b = run_checkup(model, batch(), optimizer=opt, select=["overfit-tiny-batch", "lr-sweep"])
    assert a.experiments["overfit"] == b.experiments["overfit"]
    assert a.experiments["lr_range"]["losses"] == b.experiments["lr_range"]["losses"]


def _observer_hook(module, args, output):  # stands in for the Doctor's own observers
    _observer_hook.calls += 1


_observer_hook.calls = 0
_observer_hook.__module__ = "nndoctor._observe"


def test_doctor_hooks_do_not_fire_on_copies_but_user_hooks_stay(trained):
    model, opt = trained
    seen = []
    ours = model.head.register_forward_hook(_observer_hook)
    users = model.head.register_forward_hook(lambda m, a, o: seen.append(1))
    try:
        _observer_hook.calls = 0
        run_checkup(model, batch(), optimizer=opt, select=["overfit-tiny-batch"])
        assert _observer_hook.calls == 0
        assert seen  # the user's hook is part of their model: it runs on the copies too
        assert len(model.head._forward_hooks) == 2  # nothing removed from the user's model
    finally:
        ours.remove()
        users.remove()


def test_flush_denormal_setting_is_put_back(trained):
    model, opt = trained
    tiny = torch.tensor([1e-40])
    assert float(tiny * 1.0) != 0.0  # off by default
    run_checkup(model, batch(), optimizer=opt, select=["overfit-tiny-batch"])
    assert float(tiny * 1.0) != 0.0


def test_copy_of_a_module_compiled_in_place_runs_eagerly_and_computes_the_same():
    """`model.compile()` keeps the compiled forward on the module; a deepcopy would carry
    it, and Dynamo, which guards on the module object, would compile every copy afresh
    on the experiments' budget. The copy runs the same forward eagerly."""
    from nndoctor.probes.isolation import copy_model

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    model.compile(backend="eager")
    x = torch.randn(5, 4)
    expected = model(x)  # compiled on this first call
    clone = copy_model(model)
    assert getattr(clone, "_compiled_call_impl", None) is None
    assert model._compiled_call_impl is not None  # the user's module is untouched
    torch.testing.assert_close(clone(x), expected)


class RandomDepth(nn.Module):
    """A forward that draws from Python's RNG (jcjohnson's DynamicNet: a random number of
    reuses of the middle layer on every call)."""

    def __init__(self):
        super().__init__()
        self.inp, self.mid, self.out = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = self.inp(x).clamp(min=0)
        for _ in range(random.randint(0, 3)):
            h = self.mid(h).clamp(min=0)
        return self.out(h)


def test_a_forward_drawing_from_pythons_rng_is_still_recognised_as_its_copy():
    torch.manual_seed(0)
    model = RandomDepth()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 4, generator=g), torch.randint(0, 3, (32,), generator=g)
    for seed in range(5):  # whatever the user's stream: the two calls must draw alike
        random.seed(seed)
        before = random.getstate()
        report = run_checkup(model, (x, y), optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                             loss_fn=nn.CrossEntropyLoss(), select="lr-sweep")
        assert "lr-sweep" in report.checks_run, (seed, report.checks_skipped)
        assert random.getstate() == before  # the user's Python RNG stream is untouched
