"""Label/input pairing (issue 10, item 4a): the watch keeps the (input, target) pairs of
the batches the script trains on; the checkup trains a copy on half of them and scores
the other half with the real labels against permuted-label controls.

Real data where it is handy (scikit-learn's digits), and the two ways users really lose
the pairing: two permutations, and two ``shuffle=True`` loaders zipped."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from nndoctor import Doctor, Severity
from nndoctor._experiments import run_checkup
from nndoctor._observations import Observations
from nndoctor.checks.experiments import RandomInputLoss
from nndoctor.checks.pairing import PairingRun, pairing_verdict
from nndoctor.probes import pairing, random_input
from nndoctor.probes.context import ModelCall, ProbeContext


# ------------------------------------------------------------------------------ helpers
def digits():
    d = load_digits()
    return torch.tensor(d.data, dtype=torch.float32) / 16.0, torch.tensor(d.target)


def digits_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def watch_then_checkup(model, opt, loss_fn, batches, steps=30, batch=None):
    """Train under watch, then run the checkup on the first watched batch (or ``batch``)
    with the weights of step 0 (what `nndoctor check` does); the merged report."""
    doctor = Doctor(model, optimizer=opt, loss_fn=loss_fn)
    initial = copy.deepcopy(model.state_dict())
    with doctor.watch():
        for _, (xb, yb) in zip(range(steps), batches):
            opt.zero_grad()
            loss_fn(model(xb), yb).backward()
            opt.step()
    report = doctor.report()
    captured = doctor.captured_batch
    model.load_state_dict(initial)
    found = doctor.checkup(batch or (captured["args"][0], captured["target"]))
    merged = report.merge(found)
    merged.observations = report.observations
    return merged, doctor


def cycle(loader):
    while True:
        yield from loader


# ------------------------------------------------------------------- end to end (digits)
def test_two_shuffled_loaders_zipped_lead_the_report():
    """Under this bug the p-value is spread evenly over 0-1, so a run detects it with
    probability 1 - min_p_unpaired = 0.9 (test_detection_rate_over_seeds measures it);
    the loaders' seeds here are one of the 90%."""
    x, y = digits()
    loader_x = DataLoader(x, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(1))
    # the bug: the labels get their own shuffle
    loader_y = DataLoader(y, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(2))
    model = digits_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    report, doctor = watch_then_checkup(model, opt, nn.CrossEntropyLoss(), zip(cycle(loader_x), cycle(loader_y)))
    first = report.findings[0]
    assert first.check == "random-input-loss" and first.severity is Severity.WARNING, \
        [(f.check, f.severity.value, f.message[:80]) for f in report.findings]
    assert "do not depend on their inputs" in first.message
    assert report.diagnosis is not None and report.diagnosis.cause == "random-input-loss"
    ev = first.evidence
    assert ev["p_value"] >= 0.1 and ev["fit_fraction"] <= 0.4
    assert ev["n_holdout"] >= 48 and ev["n_watched"] > 0  # the watched batches widened the held-out set
    # every other warning is a symptom it explains
    others = [f for f in report.findings[1:] if f.severity is not Severity.INFO]
    assert all(f.explained_by == "random-input-loss" for f in others), [(f.check, f.explained_by) for f in others]


def test_one_loader_of_pairs_on_digits_is_silent():
    x, y = digits()
    torch.manual_seed(0)
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
    model = digits_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    report, _ = watch_then_checkup(model, opt, nn.CrossEntropyLoss(), cycle(loader))
    assert report.by_check("random-input-loss") == []
    run = PairingRun.coerce(report.experiments["pairing"])
    check = RandomInputLoss()
    assert run.p_value <= check.max_p_paired and run.gain > 0
    assert run.holdout_real[-1] < run.holdout_permuted[-1]


# ------------------------------------------------------------------- sequences, regression
class Bigram(nn.Module):
    def __init__(self, vocab=12):
        super().__init__()
        self.table = nn.Embedding(vocab, vocab)

    def forward(self, idx):
        return self.table(idx)  # (N, T, V)


def markov_text(n=96, t=16, vocab=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    nxt = torch.randint(0, vocab, (vocab, 2), generator=g)  # each token has two likely successors
    seq = torch.zeros(n, t + 1, dtype=torch.long)
    seq[:, 0] = torch.randint(0, vocab, (n,), generator=g)
    for i in range(t):
        pick = torch.randint(0, 2, (n,), generator=g)
        seq[:, i + 1] = nxt[seq[:, i], pick]
    return seq[:, :-1], seq[:, 1:]


def flat_ce(logits, targets):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def test_language_model_early_in_training_gets_no_pairing_warning():
    x, y = markov_text()
    torch.manual_seed(0)
    model = Bigram()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batches = ((x[i:i + 16], y[i:i + 16]) for i in range(0, 96, 16))
    # the loss sees flattened targets: the watch keeps no pairs, the checkup batch is alone
    report, doctor = watch_then_checkup(model, opt, flat_ce, batches, steps=6, batch=(x[:16], y[:16]))
    assert "pairs" not in doctor.captured_batch
    assert [f for f in report.by_check("random-input-loss") if f.severity is not Severity.INFO] == []
    run = report.experiments["pairing"]
    if not run.get("skipped"):
        assert pairing_verdict(run, **_verdict_args()) != "unpaired"


def test_detection_rate_over_seeds():
    """Ten data draws of a learnable task: labels shuffled apart from their inputs are found
    on most of them (p spread over 0-1: ~90% expected), healthy pairs are never flagged."""
    found, false_alarms = 0, 0
    for seed in range(10):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(192, 20, generator=g)
        y = (x @ torch.randn(20, 4, generator=g)).argmax(1)
        for shuffled in (True, False):
            torch.manual_seed(seed)
            model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 4))
            labels = y[torch.randperm(192, generator=g)] if shuffled else y
            run = pairing.measure(ProbeContext(model, (x, labels), None, nn.CrossEntropyLoss(), seed=seed))
            unpaired = pairing_verdict(run, **_verdict_args()) == "unpaired"
            found += unpaired and shuffled
            false_alarms += unpaired and not shuffled
    assert false_alarms == 0
    assert found >= 7


def test_fit_is_judged_against_the_label_prior_too():
    """A huge init starts the loss at thousands: falling to 10% of that is not memorising."""
    run = PairingRun(train_loss=[4280.0, 410.0], prior_loss=1.38)
    assert run.fit_fraction > 100
    assert PairingRun(train_loss=[1.41, 0.07], prior_loss=1.38).fit_fraction == pytest.approx(0.07 / 1.38)
    assert PairingRun(train_loss=[1.0, 0.1]).fit_fraction == pytest.approx(0.1)


def test_regression_keeps_its_pairing():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=g)
    y = x[:, :3].sum(1, keepdim=True)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    ctx = ProbeContext(model, (x, y), None, nn.MSELoss(), seed=0)
    run = pairing.measure(ctx)
    assert pairing_verdict(run, **_verdict_args()) == "paired"
    # the same targets shuffled apart from their inputs: memorised, and no better than permuted
    # the same targets shuffled apart from their inputs: memorised, and no better than permuted
    shuffled = y[torch.randperm(256, generator=g)]
    run = pairing.measure(ProbeContext(model, (x, shuffled), None, nn.MSELoss(), seed=0))
    assert run.fit_fraction <= 0.4 and run.p_value >= 0.1
    assert pairing_verdict(run, **_verdict_args()) == "unpaired"


def _verdict_args():
    c = RandomInputLoss()
    return dict(max_p_paired=c.max_p_paired, min_p_unpaired=c.min_p_unpaired, max_fit_fraction=c.max_fit_fraction,
                min_samples=c.min_pairing_samples, min_label_changes=c.min_label_changes)


# ------------------------------------------------------------------- the probe's pool
def test_watched_pairs_widen_the_pool_and_repeats_are_dropped():
    x, y = digits()
    model = digits_mlp()
    batch = (x[:32], y[:32])
    ctx = ProbeContext(model, batch, None, nn.CrossEntropyLoss(), seed=0)
    watched = [((x[32:64],), {}, y[32:64]), ((x[:32],), {}, y[:32]),  # a repeat of the checkup batch
               ((x[64:96, :10],), {}, y[64:96])]                        # another shape: left out
    run = pairing.measure(ctx, pairing.watched_pairs(watched, ctx), steps=20)
    assert run.n_train + run.n_holdout == 64
    assert run.n_duplicates == 32 and run.n_watched == 32
    alone = pairing.measure(ctx, (), steps=20)
    assert alone.n_train + alone.n_holdout == 32 and alone.n_watched == 0


def test_model_computing_its_own_loss_is_skipped():
    class WithLoss(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x, y):
            return F.cross_entropy(self.fc(x), y)

    x, y = digits()
    ctx = ProbeContext(WithLoss(), (ModelCall((x[:64], y[:64]), {}), None), None, lambda out, t: out, seed=0)
    with pytest.raises(Exception, match="no targets"):
        pairing.measure(ctx)


# ------------------------------------------------------------------- the observer
def test_observer_keeps_bounded_clones_of_sampled_batches_only():
    x, y = digits()
    model = digits_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    doctor = Doctor(model, optimizer=opt, loss_fn=nn.CrossEntropyLoss())
    with doctor.watch():
        for i in range(25):
            xb, yb = x[i * 32:(i + 1) * 32].clone(), y[i * 32:(i + 1) * 32].clone()
            with torch.no_grad():
                model(xb[:4])  # an evaluation forward: not a training batch
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
            if i == 0:
                first = xb
                xb.mul_(0)  # the script reuses its buffer: the kept pair must not change
    pairs = doctor.captured_batch["pairs"]
    # the sampled steps of 25: 0-3 (dense) and 20
    assert len(pairs) == 5
    args, kwargs, target = pairs[0]
    assert kwargs == {} and args[0].shape == (32, 64) and target.shape == (32,)
    assert torch.equal(args[0], x[:32]) and torch.equal(target, y[:32]) and not torch.equal(first, x[:32])
    assert torch.equal(pairs[4][0][0], x[640:672])


def test_observer_stops_at_its_sample_budget(monkeypatch):
    from nndoctor.observers.pairs import PairObserver

    monkeypatch.setattr(PairObserver, "max_samples", 40)
    x, y = digits()
    model = digits_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    doctor = Doctor(model, optimizer=opt, loss_fn=nn.CrossEntropyLoss())
    with doctor.watch():
        for i in range(4):
            opt.zero_grad()
            F.cross_entropy(model(x[i * 32:(i + 1) * 32]), y[i * 32:(i + 1) * 32]).backward()
            opt.step()
    pairs = doctor.captured_batch["pairs"]
    assert [p[2].shape[0] for p in pairs] == [32, 8]


# ------------------------------------------------------------------- issue 13: model(X, Y)
def test_random_inputs_replace_only_x_when_the_model_takes_its_targets():
    seen_targets: list[torch.Tensor] = []
    seen_inputs: list[torch.Tensor] = []

    class GPTLike(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(12, 12)

        def forward(self, idx, targets):
            seen_inputs.append(idx.detach().clone())
            seen_targets.append(targets.detach().clone())
            logits = self.emb(idx)
            return logits, flat_ce(logits, targets)

    x, y = markov_text(n=32)
    torch.manual_seed(0)
    ctx = ProbeContext(GPTLike(), (ModelCall((x, y), {}), None), None, lambda out, t: out[1], seed=0)
    seen_targets.clear()
    seen_inputs.clear()
    run = random_input.measure(ctx, steps=3)
    assert run.train_loss["noise"] and run.train_loss["zeros"]
    real_targets = {tuple(y[a:b].reshape(-1).tolist()) for a, b in ((0, 2), (0, 16), (16, 32), (0, 32))}
    assert all(tuple(t.reshape(-1).tolist()) in real_targets for t in seen_targets)
    assert any(bool((i == 0).all()) for i in seen_inputs)  # the zeros variant did replace X


# ------------------------------------------------------------------- thresholds at their edge
def pairing_record(p=0.5, fit_end=0.2, n=64, changed=0.75, real=(1.4, 1.5), perm=(1.4, 1.5)):
    return {"n_train": n, "n_holdout": n, "steps": 100, "n_permutations": 99, "changed_fraction": changed,
            "eval_steps": [0, 100], "train_loss": [1.0, fit_end], "holdout_real": list(real),
            "holdout_permuted": list(perm), "holdout_permuted_std": [0.01, 0.1], "p_value": p, "best_step": 100}


def judge(**kw):
    obs = Observations()
    # a random-input record whose own comparisons find nothing
    obs.experiments["random_input"] = {
        "output_change": {"noise": 0.5, "zeros": 0.5}, "steps": 30, "n_train": 16, "n_holdout": 16,
        "train_loss": {"real": [1.0, 0.1], "noise": [1.0, 0.2], "zeros": [1.0, 1.0]},
        "holdout_loss": {"real": [1.0, 1.0], "noise": [1.0, 0.9], "zeros": [1.0, 0.9]},
    }
    obs.experiments["pairing"] = pairing_record(**kw)
    findings, _ = RandomInputLoss().run(obs)
    return findings


@pytest.mark.parametrize("p,fires", [(0.1, True), (0.09, False), (0.05, False)], ids=["at", "below", "paired"])
def test_threshold_min_p_unpaired(p, fires):
    assert bool(judge(p=p)) is fires


def test_threshold_max_p_paired():
    c = RandomInputLoss()
    run = pairing_record(p=c.max_p_paired, real=(1.4, 1.0))
    assert pairing_verdict(run, **_verdict_args()) == "paired"
    run = pairing_record(p=c.max_p_paired + 0.01, real=(1.4, 1.0))
    assert pairing_verdict(run, **_verdict_args()) == "inconclusive"


@pytest.mark.parametrize("fit_end,fires", [(0.4, True), (0.41, False)], ids=["at", "above"])
def test_threshold_max_fit_fraction(fit_end, fires):
    assert bool(judge(fit_end=fit_end)) is fires


@pytest.mark.parametrize("n,fires", [(48, True), (47, False)], ids=["at", "below"])
def test_threshold_min_pairing_samples(n, fires):
    assert bool(judge(n=n)) is fires


@pytest.mark.parametrize("changed,fires", [(24 / 64, True), (23 / 64, False)], ids=["at", "below"])
def test_threshold_min_label_changes(changed, fires):
    assert bool(judge(changed=changed)) is fires


def test_unpaired_finding_says_why_and_feeds_the_causal_link():
    (f,) = judge()
    assert f.severity is Severity.WARNING and "holdout_gain" in f.evidence
    assert "permuted" in f.message and "shuffled" in f.message
    assert "randperm" in f.fix


def test_without_a_pairing_record_the_small_held_out_comparison_still_judges():
    obs = Observations()
    obs.experiments["random_input"] = {
        "output_change": {"noise": 0.5, "zeros": 0.5}, "steps": 30, "n_train": 32, "n_holdout": 32,
        "train_loss": {"real": [1.0, 0.1], "noise": [1.0, 0.2], "zeros": [1.0, 1.0]},
        "holdout_loss": {"real": [1.0, 0.95], "noise": [1.0, 0.9], "zeros": [1.0, 0.9]},
    }
    obs.experiments["pairing"] = {"skipped": "too few samples"}
    (f,) = RandomInputLoss().run(obs)[0]
    assert "held-out" in f.message and not math.isnan(f.evidence["holdout_gain"])


# ------------------------------------------------------------------- the CLI, end to end
SCRIPT = Path(__file__).parent / "scripts" / "zipped_loaders.py"


def check_cli(tmp_path, *script_args):
    out = tmp_path / "report.json"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    done = subprocess.run([sys.executable, "-m", "nndoctor", "check", str(SCRIPT), "--steps", "20", "--json", str(out),
                           "--", *script_args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    return done, json.loads(out.read_text())


def test_cli_leads_with_unpaired_labels_of_zipped_loaders(tmp_path):
    done, report = check_cli(tmp_path)
    assert done.returncode == 0, done.stderr  # a warning: exit 0 by default
    first = report["findings"][0]
    assert first["check"] == "random-input-loss" and first["severity"] == "warning", report["findings"]
    assert first["evidence"]["n_watched"] > 0 and first["evidence"]["p_value"] >= 0.1
    assert report["diagnosis"]["cause"] == "random-input-loss"
    assert "do not depend on their inputs" in done.stdout


def test_cli_is_silent_on_one_loader_of_pairs(tmp_path):
    done, report = check_cli(tmp_path, "--paired")
    assert done.returncode == 0, done.stderr
    assert [f for f in report["findings"] if f["check"] == "random-input-loss"] == []
