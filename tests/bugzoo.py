"""The bug zoo: small training setups modelled on the checklist's real failure patterns,
and healthy ones (including intended patterns) that must not raise errors.

Each case builds its own model, data and loop; ``run_case`` trains it under
``Doctor.watch()`` and returns the report. The expectations live in the test matrix
(``tests/test_bugzoo.py``), as data.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from nndoctor import Doctor, Report


# ---------------------------------------------------------------------------- data
def teacher_data(n: int = 512, d: int = 20, k: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, k, generator=g)
    y = (x @ w).argmax(1)
    return x, y


def image_data(n: int = 256, k: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, k, (n,), generator=g)
    x = torch.randn(n, 3, 12, 12, generator=g) * 0.5
    # class-dependent bright square: learnable by a small CNN
    for c in range(k):
        r, col = divmod(c, 2)
        x[y == c, :, r * 6 : r * 6 + 6, col * 6 : col * 6 + 6] += 1.0
    return x, y


def mlp(d=20, h=64, k=4, act=nn.ReLU, depth=2):
    layers, width = [], d
    for _ in range(depth):
        layers += [nn.Linear(width, h), act()]
        width = h
    layers.append(nn.Linear(width, k))
    return nn.Sequential(*layers)


class SmallCNN(nn.Module):
    def __init__(self, k=4, bn=True):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16) if bn else nn.Identity(), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32) if bn else nn.Identity(), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(32, k)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


# ---------------------------------------------------------------------------- harness
@dataclass
class Setup:
    model: nn.Module
    step: Callable[[int], None]  # runs one training step (the user's loop body)
    optimizer: torch.optim.Optimizer | None = None
    loss_fn: object = None


@dataclass
class Case:
    name: str
    build: Callable[[], Setup]
    expect: set[str] = field(default_factory=set)  # ids that must be reported (warning or error)
    healthy: bool = False
    steps: int = 30
    allow: set[str] = field(default_factory=set)  # healthy: warnings tolerated (documented)
    # steps nndoctor counts: without an optimizer every backward is a step (by design)
    steps_counted: int | None = None
    # bugs: the check ids that name this bug's root cause; the report must lead with one of
    # them. Several only where they name the same cause (update-ratio and lr-sweep both say
    # "the learning rate is too high"). Empty: the single id in `expect`.
    root: tuple[str, ...] = ()

    @property
    def roots(self) -> tuple[str, ...]:
        if self.root:
            return self.root
        assert len(self.expect) == 1, f"{self.name}: name its root cause"
        return tuple(self.expect)


def run_case(case: Case, *, checkup: bool = False, **doctor_kwargs) -> Report:
    """Train the case under ``Doctor.watch()``; with ``checkup``, then run the experiments
    on the first watched batch with the weights the model had before training (as
    `nndoctor check` does) and merge both reports."""
    torch.manual_seed(0)
    setup = case.build()
    doctor = Doctor(setup.model, optimizer=setup.optimizer, loss_fn=setup.loss_fn, **doctor_kwargs)
    initial = copy.deepcopy(setup.model.state_dict()) if checkup else None
    with doctor.watch():
        for i in range(case.steps):
            setup.step(i)
    report = doctor.report()
    if not checkup:
        return report
    batch = doctor.captured_batch
    trained = copy.deepcopy(setup.model.state_dict())
    setup.model.load_state_dict(initial)
    try:
        found = doctor.checkup((batch["args"][0], batch["target"]))
    finally:
        setup.model.load_state_dict(trained)
    merged = report.merge(found)
    merged.observations = report.observations
    return merged


def standard_loop(model, opt, loss_fn, x, y, *, batch=32, zero_grad=True, shuffle=True, fixed=False):
    n = x.shape[0]
    gen = torch.Generator().manual_seed(1)

    def step(i):
        if fixed:
            idx = torch.arange(batch)
        elif shuffle:
            idx = torch.randint(0, n, (batch,), generator=gen)
        else:
            start = (i * batch) % n
            idx = torch.arange(start, start + batch)
        if zero_grad:
            opt.zero_grad()
        loss = loss_fn(model(x[idx]), y[idx])
        loss.backward()
        opt.step()

    return step


def classic(model=None, lr=0.05, opt_cls=torch.optim.SGD, data=None, loss_fn=None, **loop):
    x, y = data if data is not None else teacher_data()
    model = model if model is not None else mlp()
    opt = opt_cls(model.parameters(), lr=lr)
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    return Setup(model, standard_loop(model, opt, loss_fn, x, y, **loop), opt, loss_fn)


# ---------------------------------------------------------------------------- bugs
def b_missing_zero_grad():
    return classic(zero_grad=False)


def b_softmax_before_ce():
    model = nn.Sequential(mlp(), nn.Softmax(dim=1))
    return classic(model=model)


def b_logits_to_nll():
    return classic(loss_fn=nn.NLLLoss())


def b_sigmoid_before_bce_logits():
    x, y = teacher_data()
    yb = F.one_hot(y, 4).float()
    model = nn.Sequential(mlp(), nn.Sigmoid())
    return classic(model=model, data=(x, yb), loss_fn=nn.BCEWithLogitsLoss())


def b_layer_not_in_optimizer():
    x, y = teacher_data()
    model = mlp()
    opt = torch.optim.SGD(model[-1].parameters(), lr=0.05)  # only the head trains
    loss_fn = nn.CrossEntropyLoss()
    return Setup(model, standard_loop(model, opt, loss_fn, x, y), opt, loss_fn)


class DetachNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(20, 64), nn.ReLU())
        self.head = nn.Linear(64, 4)

    def forward(self, x):
        return self.head(self.encoder(x).detach())  # the bug: encoder cut from the graph


def b_detach_in_forward():
    return classic(model=DetachNet())


class ListNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(20, 32)
        self.blocks = [nn.Linear(32, 32) for _ in range(2)]  # the bug: a plain list
        self.out = nn.Linear(32, 4)

    def forward(self, x):
        x = F.relu(self.inp(x))
        for b in self.blocks:
            x = F.relu(b(x))
        return self.out(x)


def b_unregistered_modules():
    return classic(model=ListNet())


class UnusedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = mlp()
        self.aux = nn.Linear(20, 4)  # never called

    def forward(self, x):
        return self.body(x)


def b_unused_module():
    return classic(model=UnusedNet())


def b_unnormalized_input():
    x, y = image_data()
    x = ((x - x.min()) / (x.max() - x.min()) * 255).round()  # raw 0-255 pixels
    return classic(model=SmallCNN(bn=False), data=(x, y), lr=1e-4)


def b_all_zero_input():
    x, y = teacher_data()
    return classic(data=(torch.zeros_like(x), y))


def b_repeated_batch():
    return classic(fixed=True)


def b_dead_relu():
    model = mlp()
    with torch.no_grad():
        model[0].bias.fill_(-10.0)
    return classic(model=model)


class FunctionalMLP(nn.Module):
    """The same MLP written with F.relu calls (no ReLU modules to hook)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(20, 64), nn.Linear(64, 64), nn.Linear(64, 4)

    def forward(self, x):
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


def b_dead_functional_relu():
    model = FunctionalMLP()
    with torch.no_grad():
        model.fc1.bias.fill_(-10.0)
    return classic(model=model)


def b_huge_init():
    model = mlp()
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=3.0)
    return classic(model=model, lr=1e-3)


def b_std_one_init():
    """Every Linear drawn with std 1 (several times He) and trained with plain SGD: the
    activations explode and the updates outgrow the weights. The init is the cause."""
    model = mlp()
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=1.0)
    return classic(model=model, lr=0.1)


class LogLoss(nn.Module):
    """A hand-written cross-entropy that takes log of softmax probabilities that underflow."""

    def forward(self, logits, y):
        p = torch.softmax(logits * 200.0, dim=1)
        return -(torch.log(p.gather(1, y[:, None]))).mean()


def b_log_zero_loss():
    return classic(loss_fn=LogLoss())


def b_lr_100x():
    return classic(lr=50.0)


def b_lr_far_too_low():
    return classic(lr=1e-7)


def b_eval_mode_training():
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 4))
    setup = classic(model=model)
    model.eval()  # the bug: left in eval mode after "validation"
    return setup


def b_sorted_labels():
    x, y = teacher_data(n=512)
    order = torch.argsort(y, stable=True)
    return classic(data=(x[order], y[order]), shuffle=False)


def b_deep_sigmoid():
    model = mlp(act=nn.Sigmoid, depth=10, h=32)
    return classic(model=model, lr=0.01)


def b_saturated_tanh():
    model = mlp(act=nn.Tanh)
    with torch.no_grad():
        model[0].weight.mul_(20.0)
    return classic(model=model, lr=0.01)


def b_optimizer_over_copy():
    x, y = teacher_data()
    model = mlp()
    shadow = copy.deepcopy(model)
    opt = torch.optim.SGD(shadow.parameters(), lr=0.05)  # the bug: optimizer owns a copy
    loss_fn = nn.CrossEntropyLoss()
    return Setup(model, standard_loop(model, opt, loss_fn, x, y), opt, loss_fn)


def b_constant_hidden_init():
    model = mlp()
    with torch.no_grad():
        model[2].weight.fill_(0.05)
    return classic(model=model)


class SqrtNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(20, 32)
        self.norm = SignedRoot()
        self.fc2 = nn.Linear(32, 4)

    def forward(self, x):
        return self.fc2(self.norm(self.fc1(x)))


class SignedRoot(nn.Module):
    def forward(self, x):
        return torch.sqrt(x)  # the bug: sqrt of negative values -> NaN


def b_nan_in_forward_layer():
    return classic(model=SqrtNet())


def manual_loop(update, *, zero_grad: bool) -> Setup:
    """A loop without torch.optim: `update(p)` changes each parameter by hand."""
    x, y = teacher_data()
    model = mlp()
    gen = torch.Generator().manual_seed(1)

    def step(i):
        idx = torch.randint(0, 512, (32,), generator=gen)
        if zero_grad:
            model.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        with torch.no_grad():
            for p in model.parameters():
                update(p)

    return Setup(model, step)


def b_manual_sgd_no_zero():
    def update(p):
        p -= 0.05 * p.grad  # the bug: p.grad is never reset

    return manual_loop(update, zero_grad=False)


def b_manual_data_update_no_zero():
    """pytorch/examples-style regression: updates through `p.data` (no version bump)."""
    return manual_loop(lambda p: p.data.add_(-0.05 * p.grad), zero_grad=False)


def h_manual_data_update():
    return manual_loop(lambda p: p.data.add_(-0.05 * p.grad), zero_grad=True)


def h_manual_data_accumulation():
    x, y = teacher_data()
    model = mlp()
    gen = torch.Generator().manual_seed(1)

    def step(i):  # two backwards (accumulation), then one `.data` update
        model.zero_grad()
        for _ in range(2):
            idx = torch.randint(0, 512, (16,), generator=gen)
            (F.cross_entropy(model(x[idx]), y[idx]) / 2).backward()
        for p in model.parameters():
            p.data.add_(-0.05 * p.grad)

    return Setup(model, step)


def b_bn_batch_of_one():
    x, y = image_data()
    model = SmallCNN()
    return classic(model=model, data=(x, y), batch=1)


class SoftTargetCE(nn.Module):
    """-(t * log_softmax(x)).sum(1).mean(): a hand-written soft-target cross-entropy."""

    def forward(self, x, t):
        return -(t * torch.log_softmax(x, dim=1)).sum(1).mean()


def b_softmax_into_soft_target_ce():
    x, y = teacher_data()
    soft = F.one_hot(y, 4).float() * 0.9 + 0.025
    model = nn.Sequential(mlp(), nn.Softmax(dim=1))
    return classic(model=model, data=(x, soft), loss_fn=SoftTargetCE())


def b_most_params_not_in_optimizer():
    x, y = teacher_data()
    model = mlp(h=128)
    opt = torch.optim.SGD(model[-1].parameters(), lr=0.05)  # the big hidden layers never train
    loss_fn = nn.CrossEntropyLoss()
    return Setup(model, standard_loop(model, opt, loss_fn, x, y), opt, loss_fn)


def b_lr_zero():
    return classic(lr=0.0)


def b_zero_grad_between_backward_and_step():
    """The gradients exist but are wiped before the step: nothing ever updates."""
    x, y = teacher_data()
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(1)

    def step(i):
        idx = torch.randint(0, 512, (32,), generator=gen)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.zero_grad()  # the bug: between backward() and step()
        opt.step()

    return Setup(model, step, opt, nn.CrossEntropyLoss())


def b_unnormalized_input_mlp():
    """Raw 0-255 features into a plain MLP at an ordinary SGD learning rate."""
    x, y = teacher_data()
    x = ((x - x.min()) / (x.max() - x.min()) * 255).round()
    return classic(data=(x, y), lr=0.01)


def b_adamw_lr_20():
    """AdamW at lr 20 (the word_language_model example run with --use-optimizer)."""
    return classic(opt_cls=torch.optim.AdamW, lr=20.0)


def b_labels_shuffled_separately():
    """Inputs and labels shuffled by two separate calls: the pairs are lost."""
    x, y = teacher_data()
    g = torch.Generator().manual_seed(5)
    return classic(data=(x[torch.randperm(len(x), generator=g)], y[torch.randperm(len(y), generator=g)]))


def b_relu_before_cross_entropy():
    """A final ReLU: the logits can never be negative."""
    return classic(model=nn.Sequential(mlp(), nn.ReLU()))


def b_log_softmax_wrong_dim():
    class WrongDim(nn.Module):
        def forward(self, out, y):
            return F.nll_loss(F.log_softmax(out, dim=0), y)  # the bug: normalised over the batch

    return classic(loss_fn=WrongDim())


def b_predicts_one_class():
    """2% positives with plain BCE: the model settles on always predicting 'negative'."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 20, generator=g)
    y = (torch.rand(512, generator=g) < 0.02).float()[:, None]
    return classic(model=mlp(k=1), data=(x, y), loss_fn=nn.BCEWithLogitsLoss())


def b_frozen_middle_layer():
    """A hidden layer frozen by mistake between trainable ones."""
    model = mlp()
    model[2].requires_grad_(False)
    return classic(model=model)


class WrongGradScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2.0

    @staticmethod
    def backward(ctx, grad):
        return grad * 0.5  # the bug: the derivative of 2x is 2


class WrongBackwardNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = mlp(k=64, depth=1)
        self.head = nn.Linear(64, 4)

    def forward(self, x):
        return self.head(WrongGradScale.apply(self.body(x)))


def b_wrong_custom_backward():
    return classic(model=WrongBackwardNet())


BUGS = [
    Case("missing-zero-grad", b_missing_zero_grad, {"grad-not-zeroed"}),
    Case("softmax-before-cross-entropy", b_softmax_before_ce, {"loss-input-format"}),
    Case("logits-to-nll-loss", b_logits_to_nll, {"loss-input-format"}),
    Case("sigmoid-before-bce-with-logits", b_sigmoid_before_bce_logits, {"loss-input-format"}),
    Case("layers-not-in-optimizer", b_layer_not_in_optimizer, {"frozen-layer"}),
    Case("detach-in-forward", b_detach_in_forward, {"frozen-layer"}),
    Case("unregistered-modules-in-list", b_unregistered_modules, {"unused-parameter"}),
    Case("registered-but-unused-module", b_unused_module, {"unused-parameter"}),
    Case("unnormalized-0-255-input", b_unnormalized_input, {"input-normalization"}),
    Case("all-zero-input", b_all_zero_input, {"input-normalization"}),
    Case("repeated-batch", b_repeated_batch, {"repeated-batch"}),
    Case("dead-relu-negative-bias", b_dead_relu, {"dead-relu"}),
    Case("dead-functional-relu", b_dead_functional_relu, {"dead-relu"}),
    Case("huge-init", b_huge_init, {"weight-init", "chance-level-loss", "activation-std"},
         root=("weight-init",)),
    Case("std-1-init-with-sgd", b_std_one_init, {"weight-init"}, root=("weight-init",)),
    Case("log-of-zero-in-loss", b_log_zero_loss, {"nan-trace"}),
    Case("lr-100x-too-high", b_lr_100x, {"update-ratio"},
         root=("update-ratio", "lr-sweep")),
    Case("lr-far-too-low", b_lr_far_too_low, {"update-ratio", "loss-not-decreasing"},
         root=("update-ratio", "lr-sweep")),
    Case("training-in-eval-mode", b_eval_mode_training, {"train-eval-mode"}),
    Case("sorted-labels-not-shuffled", b_sorted_labels, {"label-distribution"}),
    Case("deep-sigmoid-vanishing", b_deep_sigmoid, {"vanishing-gradient"}),
    Case("saturated-tanh", b_saturated_tanh, {"saturated-activation"},
         root=("weight-init",)),
    Case("optimizer-over-a-copy", b_optimizer_over_copy, {"frozen-layer", "loss-not-decreasing"},
         root=("frozen-layer",)),
    Case("constant-hidden-init", b_constant_hidden_init, {"weight-init"}),
    Case("nan-from-sqrt-in-layer", b_nan_in_forward_layer, {"nan-trace"}),
    Case("manual-sgd-without-zeroing", b_manual_sgd_no_zero, {"grad-not-zeroed"}),
    Case("batchnorm-batch-of-one", b_bn_batch_of_one, {"train-eval-mode"}),
    Case("learning-rate-zero", b_lr_zero, {"frozen-layer", "loss-not-decreasing"},
         root=("frozen-layer",)),
    Case("softmax-into-soft-target-cross-entropy", b_softmax_into_soft_target_ce, {"loss-input-format"}),
    Case("most-parameters-not-in-optimizer", b_most_params_not_in_optimizer, {"frozen-layer"}),
    Case("manual-data-update-without-zeroing", b_manual_data_update_no_zero, {"grad-not-zeroed"}),
    # From the held-out trials (issue 10): setups whose symptoms used to lead.
    Case("zero-grad-between-backward-and-step", b_zero_grad_between_backward_and_step, {"frozen-layer"}),
    Case("unnormalized-0-255-input-mlp", b_unnormalized_input_mlp, {"input-normalization"}),
    Case("adamw-lr-20", b_adamw_lr_20, {"update-ratio"}, root=("update-ratio", "lr-sweep")),
    Case("wrong-custom-backward", b_wrong_custom_backward, set(), root=("gradient-check",)),
    # Bugs that no detector names yet (see KNOWN_MISSES in test_bugzoo.py).
    Case("labels-shuffled-separately", b_labels_shuffled_separately, set(), root=("random-input-loss",)),
    Case("relu-before-cross-entropy", b_relu_before_cross_entropy, {"loss-input-format"}),
    Case("log-softmax-over-the-batch", b_log_softmax_wrong_dim, {"loss-input-format"}),
    Case("predicts-one-class", b_predicts_one_class, {"prediction-collapse"}, steps=80),
    Case("frozen-middle-layer", b_frozen_middle_layer, {"frozen-layer"}),
]


# ---------------------------------------------------------------------------- healthy
def h_mlp_adam():
    return classic(opt_cls=torch.optim.Adam, lr=1e-3)


def h_cnn_bn_momentum():
    x, y = image_data()
    model = SmallCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    return Setup(model, standard_loop(model, opt, loss_fn, x, y), opt, loss_fn)


def h_frozen_backbone():
    x, y = teacher_data()
    backbone = nn.Sequential(nn.Linear(20, 64), nn.ReLU())
    backbone.requires_grad_(False)
    model = nn.Sequential(backbone, nn.Linear(64, 4))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss_fn = nn.CrossEntropyLoss()
    return Setup(model, standard_loop(model, opt, loss_fn, x, y), opt, loss_fn)


def h_grad_accumulation():
    x, y = teacher_data()
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(1)

    def step(i):  # one optimizer step = 4 micro-batches
        opt.zero_grad()
        for _ in range(4):
            idx = torch.randint(0, 512, (8,), generator=gen)
            (F.cross_entropy(model(x[idx]), y[idx]) / 4).backward()
        opt.step()

    return Setup(model, step, opt)


def h_label_smoothing():
    return classic(loss_fn=nn.CrossEntropyLoss(label_smoothing=0.1))


def h_dropout():
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 4))
    return classic(model=model, opt_cls=torch.optim.Adam, lr=1e-3)


class LSTMClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(5, 32, batch_first=True)
        self.head = nn.Linear(32, 3)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


def h_lstm():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 7, 5, generator=g)
    y = (x.sum(dim=(1, 2)) > 0).long() + (x[:, -1, 0] > 1).long()
    return classic(model=LSTMClassifier(), data=(x, y), opt_cls=torch.optim.Adam, lr=3e-3)


class TinyTransformer(nn.Module):
    def __init__(self, vocab=16, d=32, k=4):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        layer = nn.TransformerEncoderLayer(d, 4, 64, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(d, k)

    def forward(self, tokens):
        return self.head(self.enc(self.emb(tokens)).mean(1))


def h_transformer():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 16, (256, 10), generator=g)
    y = (x[:, 0] % 4)
    return classic(model=TinyTransformer(), data=(x, y), opt_cls=torch.optim.Adam, lr=1e-3)


def h_manual_sgd():
    def update(p):
        p -= 0.1 * p.grad
        p.grad = None

    return manual_loop(update, zero_grad=False)


def h_multi_term_functional():
    x, y = teacher_data()
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(1)

    def step(i):
        idx = torch.randint(0, 512, (32,), generator=gen)
        opt.zero_grad()
        out = model(x[idx])
        loss = F.cross_entropy(out, y[idx]) + 1e-4 * sum((p ** 2).sum() for p in model.parameters())
        loss.backward()
        opt.step()

    return Setup(model, step, opt)


class LinearProbe(nn.Module):
    """The linear-evaluation protocol: a frozen trunk run under no_grad, a trained head."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(20, 64), nn.ReLU())
        self.head = nn.Linear(64, 4)

    def forward(self, x):
        with torch.no_grad():
            feats = self.trunk(x)
        return self.head(feats)


def h_linear_probe_no_grad_trunk():
    x, y = teacher_data()
    model = LinearProbe()
    opt = torch.optim.SGD(model.head.parameters(), lr=0.1)
    loss_fn = nn.CrossEntropyLoss()
    model.trunk.requires_grad_(False)
    return Setup(model, standard_loop(model, opt, loss_fn, x, y), opt, loss_fn)


def gray_images(n: int = 128, size: int = 16, seed: int = 0):
    """Smooth gray-level images in [0, 1] (upsampled noise): soft targets for BCE."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, size // 4, size // 4, generator=g)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)


class ConvAutoencoder(nn.Module):
    """The PyTorch-tutorial shape: two strided convs down, two transposed convs up, Sigmoid."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.ReLU(),
                                     nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU())
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(32, 16, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),
            nn.ConvTranspose2d(16, 1, 3, stride=2, padding=1, output_padding=1), nn.Sigmoid())

    def forward(self, x):
        return self.decoder(self.encoder(x))


def h_conv_autoencoder_bce():
    """Sigmoid + BCELoss on gray levels in [0, 1]: the loss's floor is the pixels' entropy,
    not 0 (issue 10: this healthy setup used to get an overfit-tiny-batch error)."""
    x = gray_images()
    return classic(model=ConvAutoencoder(), data=(x, x), opt_cls=torch.optim.Adam, lr=1e-3,
                   loss_fn=nn.BCELoss())


HEALTHY = [
    Case("mlp-adam", h_mlp_adam, healthy=True),
    Case("cnn-batchnorm-momentum", h_cnn_bn_momentum, healthy=True),
    Case("deliberately-frozen-backbone", h_frozen_backbone, healthy=True),
    Case("gradient-accumulation", h_grad_accumulation, healthy=True),
    Case("label-smoothing", h_label_smoothing, healthy=True),
    Case("dropout", h_dropout, healthy=True),
    Case("lstm", h_lstm, healthy=True),
    Case("transformer", h_transformer, healthy=True),
    Case("manual-sgd-with-zeroing", h_manual_sgd, healthy=True),
    Case("functional-multi-term-loss", h_multi_term_functional, healthy=True),
    Case("linear-probe-no-grad-trunk", h_linear_probe_no_grad_trunk, healthy=True),
    Case("manual-data-update-with-zeroing", h_manual_data_update, healthy=True),
    Case("manual-data-update-accumulation", h_manual_data_accumulation, healthy=True, steps_counted=60),
    # activation-std: PyTorch's default init on inputs in [0, 1] gives small activations
    # (std ~0.03-0.07) in this healthy autoencoder; documented, not an error.
    Case("conv-autoencoder-sigmoid-bce", h_conv_autoencoder_bce, healthy=True, allow={"activation-std"}),
]


# ---------------------------------------------------------------------------- issue 10 (G2):
# the mechanism of never-updated parameters, loss inputs wrong by value, collapsed predictions
class NumpyRoundTripNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(20, 64), nn.ReLU())
        self.head = nn.Linear(64, 4)

    def forward(self, x):
        h = torch.from_numpy(self.encoder(x).detach().numpy())  # the bug: a numpy round-trip
        return self.head(h)


def b_numpy_round_trip():
    return classic(model=NumpyRoundTripNet())


def b_loss_rewrapped():
    """`torch.tensor(loss.item(), requires_grad=True)`: the loss no longer reaches the model."""
    x, y = teacher_data()
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(1)

    def step(i):
        idx = torch.randint(0, 512, (32,), generator=gen)
        opt.zero_grad()
        loss = loss_fn(model(x[idx]), y[idx])
        loss = torch.tensor(loss.item(), requires_grad=True)  # the bug
        loss.backward()
        opt.step()

    loss_fn = nn.CrossEntropyLoss()
    return Setup(model, step, opt, loss_fn)


def b_scheduler_lr_to_zero():
    """A per-epoch StepLR(gamma=0.01) stepped every batch: the LR is ~0 after a few steps."""
    x, y = teacher_data()
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.01)
    inner = standard_loop(model, opt, nn.CrossEntropyLoss(), x, y)

    def step(i):
        inner(i)
        sched.step()  # the bug: an epoch schedule stepped per batch

    return Setup(model, step, opt, nn.CrossEntropyLoss())


def b_frozen_params_held_by_optimizer():
    """The head frozen by a leftover requires_grad_(False), still in the optimizer."""
    model = mlp()
    model[4].requires_grad_(False)
    return classic(model=model)


BUGS += [
    Case("numpy-round-trip-in-forward", b_numpy_round_trip, {"frozen-layer"}),
    Case("loss-rewrapped-with-torch-tensor", b_loss_rewrapped, {"frozen-layer"}),
    Case("scheduler-drives-lr-to-zero", b_scheduler_lr_to_zero, {"frozen-layer"}),
    Case("frozen-head-held-by-optimizer", b_frozen_params_held_by_optimizer, {"frozen-layer"}),
]


def b_mse_on_class_indices():
    """Class indices 0..3 regressed with MSELoss on one output."""
    x, y = teacher_data()
    model = mlp(k=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = nn.MSELoss()
    inner = standard_loop(model, opt, loss_fn, x, y.float()[:, None])
    return Setup(model, inner, opt, loss_fn)


def b_mse_broadcast():
    """(N, 1) predictions against (N,) targets: MSELoss broadcasts them to (N, N)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 20, generator=g)
    y = x[:, :5].sum(1) / 2.0  # shape (N,)
    return classic(model=mlp(k=1), data=(x, y), loss_fn=nn.MSELoss(), lr=0.01)


def h_regression_mse():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 20, generator=g)
    y = (x[:, :5].sum(1, keepdim=True) / 2.0)
    return classic(model=mlp(k=1), data=(x, y), loss_fn=nn.MSELoss(), lr=0.01)


def h_imbalanced_weighted_bce():
    """10% positives with pos_weight: the minority class is predicted too."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 20, generator=g)
    y = (x[:, 0] > 1.3).float()[:, None]
    return classic(model=mlp(k=1), data=(x, y), lr=0.05,
                   loss_fn=nn.BCEWithLogitsLoss(pos_weight=torch.tensor([9.0])))


BUGS += [
    Case("mse-on-class-indices", b_mse_on_class_indices, {"loss-input-format"}),
    Case("mse-broadcast-n1-vs-n", b_mse_broadcast, {"loss-input-format"}),
]
HEALTHY += [
    Case("regression-mse", h_regression_mse, healthy=True),
    Case("imbalanced-bce-with-pos-weight", h_imbalanced_weighted_bce, healthy=True),
]
