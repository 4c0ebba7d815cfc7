"""Healthy-code calibration (issue 13): deliberate designs seen in public training
scripts stay at info at most, while the faults the checks exist for still fire.

Each design has a silent test on a real model trained under ``Doctor.watch()`` (written
here, in our own words) and a fire test with the fault it must not hide."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from nndoctor import Doctor, Severity
from nndoctor._observations import InputRecord, Observations, ParamMeta, StepRecord
from nndoctor.checks import REGISTRY
from nndoctor.checks._util import count, number

CALIBRATED = ["weight-init", "activation-std", "update-ratio", "repeated-batch"]


# ----------------------------------------------------------------- a tiny GPT, GPT-2 init
class ScaleNorm(nn.Module):
    """A hand-rolled normalisation layer (as nanoGPT writes its own LayerNorm): not a torch
    class, recognised by its name."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(width))

    def forward(self, x):
        return self.gain * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)  # writes into the residual stream

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, norm) -> None:
        super().__init__()
        self.norm_attn = norm(width)
        self.attn = SelfAttention(width, heads)
        self.norm_mlp = norm(width)
        self.up = nn.Linear(width, 4 * width)
        self.act = nn.GELU()
        self.down = nn.Linear(4 * width, width)  # writes into the residual stream

    def forward(self, x):
        x = x + self.attn(self.norm_attn(x))
        return x + self.down(self.act(self.up(self.norm_mlp(x))))


class TinyGPT(nn.Module):
    def __init__(self, vocab=40, context=16, width=32, heads=2, depth=2, norm=nn.LayerNorm) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, width)
        self.positions = nn.Embedding(context, width)
        self.blocks = nn.ModuleList(Block(width, heads, norm) for _ in range(depth))
        self.norm_out = norm(width)
        self.head = nn.Linear(width, vocab, bias=False)
        # GPT-2's init: everything N(0, 0.02), the projections into the residual stream
        # scaled down by sqrt(2 * depth) so the stream's variance does not grow with depth.
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * depth) if name.endswith(("out.weight", "down.weight")) else 0.02
                nn.init.normal_(p, mean=0.0, std=std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx):
        x = self.tokens(idx) + self.positions(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm_out(x))


def train_gpt(model, steps=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, 40, (256, 17), generator=g)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    doctor = Doctor(model, optimizer=opt, select=CALIBRATED)
    with doctor.watch():
        for _ in range(steps):
            rows = data[torch.randint(0, 256, (8,), generator=g)]
            logits = model(rows[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
    return doctor.report()


def loud(report, check=None):
    return [(f.check, f.severity.value, f.message) for f in report.findings
            if f.severity is not Severity.INFO and (check is None or f.check == check)]


@pytest.mark.parametrize("norm", [nn.LayerNorm, ScaleNorm], ids=["torch-layernorm", "custom-norm"])
def test_gpt2_scaled_residual_init_is_not_a_warning(norm):
    torch.manual_seed(0)
    report = train_gpt(TinyGPT(norm=norm))
    assert loud(report) == []
    # The small projections were seen and explained, not missed: an info says why.
    init = [f for f in report.findings if f.check == "weight-init"]
    assert init and init[0].severity is Severity.INFO and init[0].evidence["kind"] == "small_by_design"
    assert any(w.endswith("attn.out.weight") for w in init[0].evidence["weights"])
    assert "re-normalises" in init[0].message


def test_the_same_small_init_without_normalisation_still_warns():
    # Without the LayerNorms nothing re-scales the stream: the small projections are a
    # real vanishing signal, and both checks must say so.
    torch.manual_seed(0)
    report = train_gpt(TinyGPT(norm=lambda width: nn.Identity()))
    assert {c for c, sev, _ in loud(report)} >= {"weight-init"}, report.findings
    assert any(c == "weight-init" and "small scale" in m for c, _, m in loud(report))


def _deep_mlp(std, act=nn.ReLU, depth=6, width=64):
    layers = []
    for _ in range(depth):
        lin = nn.Linear(width, width)
        nn.init.normal_(lin.weight, std=std)
        layers += [lin, act()]
    return nn.Sequential(*layers, nn.Linear(width, 4))


def _train_mlp(model, lr=1e-3, steps=10):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(256, 64, generator=g), torch.randint(0, 4, (256,), generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    doctor = Doctor(model, optimizer=opt, select=CALIBRATED)
    with doctor.watch():
        for _ in range(steps):
            idx = torch.randint(0, 256, (32,), generator=g)
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return doctor.report()


def test_std_one_init_on_a_deep_mlp_still_warns():
    torch.manual_seed(0)
    report = _train_mlp(_deep_mlp(std=1.0))
    assert any(c == "weight-init" and "large scale" in m for c, _, m in loud(report)), report.findings
    assert loud(report, "activation-std"), report.findings


def test_tiny_init_on_a_deep_tanh_mlp_still_warns():
    torch.manual_seed(0)
    report = _train_mlp(_deep_mlp(std=1e-3, act=nn.Tanh))
    assert any(c == "weight-init" and "small scale" in m for c, _, m in loud(report)), report.findings
    assert loud(report, "activation-std"), report.findings


# --------------------------------------------------------- update-ratio: near-zero starts
def _fit_linear(init_std, lr, steps=20):
    g = torch.Generator().manual_seed(0)
    true_w = torch.randn(6, 1, generator=g) * 3
    model = nn.Linear(6, 1)
    nn.init.normal_(model.weight, std=init_std)
    nn.init.zeros_(model.bias)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    doctor = Doctor(model, optimizer=opt, select=CALIBRATED, sample_every=1)  # as the CLI: every step
    with doctor.watch():
        for _ in range(steps):
            x = torch.randn(32, 6, generator=g)
            opt.zero_grad()
            F.mse_loss(model(x), x @ true_w).backward()
            opt.step()
    return doctor.report()


def test_linear_model_from_a_near_zero_start_is_info():
    report = _fit_linear(init_std=1e-3, lr=0.05)
    assert loud(report, "update-ratio") == []
    info = [f for f in report.findings if f.check == "update-ratio"]
    assert info and info[0].evidence["kind"] == "small_start" and info[0].evidence["weight_growth"] >= 2


def test_linear_model_with_a_too_high_learning_rate_still_fires():
    # lr 1.2 on unit-variance inputs: every step overshoots, the loss grows.
    report = _fit_linear(init_std=1e-3, lr=1.2)
    assert loud(report, "update-ratio"), report.findings


def _ratio_obs(growth: float, loss_falls: bool) -> Observations:
    obs = Observations(model_class="Net")
    obs.params["w"] = ParamMeta("w", "fc", (4, 4), 16, True, True, "linear", "weight", 4, 0.3, 0.0, False)
    for i in range(20):
        norm = 1.0 * (growth ** (i / 19))
        ratio = 0.5 if i < 5 else 0.02
        obs.steps.append(StepRecord(step=i, sampled=True, loss=(10.0 - 0.4 * i) if loss_falls else 5.0,
                                    backward_calls=1, update_norms={"w": ratio * norm}, weight_norms={"w": norm}))
    return obs


@pytest.mark.parametrize("growth,falls,severity", [
    (10.0, True, "info"),      # small start, weights grew, loss fell
    (1.0, True, "warning"),    # the weights did not grow: the early updates are really large
    (10.0, False, "warning"),  # weights inflated while the loss stood still: a too-high LR
])
def test_update_ratio_small_start_needs_growth_and_a_falling_loss(growth, falls, severity):
    findings, _ = REGISTRY["update-ratio"]().run(_ratio_obs(growth, falls))
    assert [f.severity.value for f in findings] == [severity]


# ------------------------------------------------------ repeated-batch: full-batch training
def _repeated_obs(loaders, same) -> Observations:
    obs = Observations(model_class="Net")
    for i in range(5):
        rec = StepRecord(step=i, sampled=True, backward_calls=1)
        rec.input = InputRecord("float32", (64, 10), 0.0, 1.0, -3, 3, 0.0, (1.0, 2.0))
        if same is not None:
            rec.input.same_tensor = same and i > 0
        obs.steps.append(rec)
    if loaders != "absent":
        obs.data_loaders = loaders
    return obs


@pytest.mark.parametrize("loaders,same,severity", [
    ([], True, "info"),                                                # the same tensor, no loader
    ([{"dataset_len": 64, "batch_size": 64, "batches": 20}], None, "info"),  # one batch holds it all
    ([], False, "warning"),                                            # the batch rebuilt each step
    ([{"dataset_len": 512, "batch_size": 32, "batches": 1}], True, "warning"),  # next(iter(loader))
    ("absent", True, "warning"),                                       # observer does not tell
])
def test_repeated_batch_recognises_full_batch_training(loaders, same, severity):
    findings, _ = REGISTRY["repeated-batch"]().run(_repeated_obs(loaders, same))
    assert [f.severity.value for f in findings] == [severity], [f.message for f in findings]


# ------------------------------------------------------------------------------ wording
def test_count_and_number_wording():
    assert count(1, "update") == "1 update"
    assert count(2, "weight tensor") == "2 weight tensors"
    assert count(12480, "parameter") == "12,480 parameters"
    assert count(3, "batch") == "3 batches" and count(2, "entry") == "2 entries"
    assert number(2437) == "2,437" and number(0.5) == "0.5"


def _ratio_message(n_steps: int, early_only: bool) -> str:
    obs = Observations(model_class="Net")
    obs.params["w"] = ParamMeta("w", "fc", (4, 4), 16, True, True, "linear", "weight", 4, 0.3, 0.0, False)
    for i in range(n_steps):
        ratio = 0.5 if (i < 5 or not early_only) else 0.01
        obs.steps.append(StepRecord(step=i, sampled=True, loss=5.0, backward_calls=1,
                                    update_norms={"w": ratio}, weight_norms={"w": 1.0}))
    (finding,) = REGISTRY["update-ratio"]().run(obs)[0]
    return finding.message


def test_update_ratio_message_pluralises_and_never_nests_parentheses():
    one = _ratio_message(1, early_only=False)
    assert "1 weight tensor and 1 update;" in one and "1 updates" not in one
    early = _ratio_message(30, early_only=True)
    assert "over the first 5 measured updates; the median over all 30 is 0.01" in early
    inner = early[early.index("(") + 1:]
    assert inner.index(")") < inner.index("(") if "(" in inner else True  # no "( ... ( ... ) ... )"


@pytest.mark.parametrize("kind,words", [("other", "hand-written or not recognised"), ("mse", "an MSE loss"),
                                        (None, "of an unknown type")])
def test_chance_level_names_the_loss_in_words(kind, words):
    from nndoctor._observations import LossGraph

    obs = Observations(model_class="Net")
    obs.steps.append(StepRecord(step=0, sampled=True, loss=2.0, loss_graph=LossGraph(kind=kind or "")))
    findings, reason = REGISTRY["chance-level-loss"]().run(obs)
    assert findings == [] and f"the loss is {words}, not a softmax cross-entropy" in reason
    assert "is other" not in reason


def test_counts_in_messages_use_thousands_separators():
    obs = Observations(model_class="Net")
    obs.called_modules = {""}
    obs.unregistered_modules = [{"class": "Linear", "parameters": 12480, "in_optimizer": False}]
    findings, _ = REGISTRY["unused-parameter"]().run(obs)
    assert "1 module (Linear; 12,480 parameters) runs inside" in findings[0].message


# -- full-batch training seen by the observers (same tensor object, DataLoaders) ------------
def _watch_repeated(make_batches, steps=8):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    crit = nn.CrossEntropyLoss()
    doctor = Doctor(model, optimizer=opt, loss_fn=crit, sample_every=1)
    with doctor.watch():
        for x, y in make_batches(steps):
            opt.zero_grad()
            crit(model(x), y).backward()
            opt.step()
    return doctor.report()


def test_full_batch_training_on_one_tensor_is_info():
    x, y = torch.randn(64, 8), torch.randint(0, 2, (64,))
    report = _watch_repeated(lambda n: [(x, y)] * n)
    found = report.by_check("repeated-batch")
    assert found and all(f.severity.value == "info" for f in found), [f.message for f in found]
    assert report.observations.steps[2].input.same_tensor is True


def test_one_loader_batch_fed_again_still_warns():
    data = torch.utils.data.TensorDataset(torch.randn(256, 8), torch.randint(0, 2, (256,)))
    loader = torch.utils.data.DataLoader(data, batch_size=32, shuffle=True)
    x, y = next(iter(loader))  # the bug: one batch taken before the loop
    report = _watch_repeated(lambda n: [(x, y)] * n)
    assert any(ld["dataset_len"] == 256 and ld["batch_size"] == 32 for ld in report.observations.data_loaders)
    assert "repeated-batch" in report.ids("warning")
    del loader


def test_a_loader_whose_batch_is_its_data_set_is_full_batch():
    data = torch.utils.data.TensorDataset(torch.randn(32, 8), torch.randint(0, 2, (32,)))
    loader = torch.utils.data.DataLoader(data, batch_size=32)
    report = _watch_repeated(lambda n: [b for _ in range(n) for b in loader])
    assert "repeated-batch" not in report.ids("warning")
    assert any(ld["iterations"] >= 1 for ld in report.observations.data_loaders)
