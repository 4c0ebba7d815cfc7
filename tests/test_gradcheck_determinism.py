"""gradient-check gives the same verdict run after run (issue 13, "Deterministic
verdicts"): float64 works when ``forward`` builds its own tensors, and no verdict is
given inside the round-off the probe measures on its own finite differences."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nndoctor import Severity
from nndoctor._experiments import run_checkup
from nndoctor._observations import Observations
from nndoctor.checks.experiments import GradientCheck

VOCAB, HIDDEN, SRC_LEN, TGT_LEN = 9, 24, 5, 5


class AttentiveTranslator(nn.Module):
    """An RNN encoder-decoder with dot-product attention over the encoder states, written
    the way tutorial code often is: scores gathered one by one into a buffer made inside
    ``forward``, and the decoder outputs written row by row into another one.
    ``buffer_dtype=None`` builds them with the default dtype; ``torch.float32`` hard-codes
    float32 (so a float64 check computes part of the loss in float32)."""

    def __init__(self, buffer_dtype=None) -> None:
        super().__init__()
        self.buffer_dtype = buffer_dtype
        self.encoder = nn.RNN(VOCAB, HIDDEN)
        self.decoder = nn.RNN(VOCAB, HIDDEN)
        self.score = nn.Linear(HIDDEN, HIDDEN)
        self.readout = nn.Linear(2 * HIDDEN, VOCAB)

    def forward(self, source, decoder_input):
        # source, decoder_input: [batch, steps, VOCAB] one-hot rows
        enc_states, state = self.encoder(source.transpose(0, 1))  # [SRC_LEN, batch, HIDDEN]
        steps, batch = decoder_input.shape[1], source.shape[0]
        logits = torch.empty(steps, batch, VOCAB, dtype=self.buffer_dtype)
        for t in range(steps):
            out, state = self.decoder(decoder_input[:, t].unsqueeze(0), state)  # [1, batch, HIDDEN]
            scores = torch.zeros(enc_states.shape[0], batch, dtype=self.buffer_dtype)
            for s in range(enc_states.shape[0]):
                scores[s] = (out[0] * self.score(enc_states[s])).sum(-1)
            weights = torch.softmax(scores, dim=0)  # [SRC_LEN, batch]
            context = (weights.unsqueeze(-1) * enc_states).sum(0)  # [batch, HIDDEN]
            logits[t] = self.readout(torch.cat([out[0], context], dim=-1))
        return logits.transpose(0, 1)  # [batch, steps, VOCAB]


def _batch(seed: int, n: int = 4):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(0, VOCAB, (n, SRC_LEN), generator=g)
    tgt = torch.randint(0, VOCAB, (n, TGT_LEN), generator=g)
    eye = torch.eye(VOCAB)
    return (eye[src], eye[tgt]), tgt


def sequence_loss(logits, targets):
    return nn.functional.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))


def _check(seed: int, buffer_dtype=None):
    torch.manual_seed(seed)
    model = AttentiveTranslator(buffer_dtype)
    return run_checkup(model, _batch(seed), loss_fn=sequence_loss, select=["gradient-check"])


def test_float64_check_passes_ten_seeds_out_of_ten_when_forward_builds_buffers():
    verdicts = []
    for seed in range(10):
        report = _check(seed)
        gc = report.experiments["gradcheck"].model
        verdicts.append((gc.dtype, [f.severity.value for f in report.by_check("gradient-check")]))
        assert gc.max_rel_error < 1e-6, (seed, gc.results)
    assert verdicts == [("float64", [])] * 10


def test_float32_buffers_inside_a_float64_forward_never_give_an_error():
    # Part of the loss is computed in float32: finite differences at eps 1e-6 are
    # round-off. Whatever the seed, the check passes or says "inconclusive"; never error.
    for seed in range(10):
        report = _check(seed, buffer_dtype=torch.float32)
        worst = [f for f in report.by_check("gradient-check") if f.severity is not Severity.INFO]
        assert worst == [], (seed, [f.message for f in worst], report.experiments["gradcheck"].model.results)


def _obs(results, dtype="float64", loss=1.0):
    worst = max(r["rel_error"] for r in results)
    return Observations(experiments={"gradcheck": {"units": [], "batch": 2, "model": {
        "dtype": dtype, "eps": 1e-6, "directions": len(results), "results": results,
        "max_rel_error": worst, "localized": [], "loss": loss}}})


@pytest.mark.parametrize("results,severity", [
    # an error far above the measured round-off: a wrong backward
    ([{"direction": "gradient", "fd": 1.0, "ad": 2.0, "rel_error": 0.5, "noise_rel": 1e-7}], "error"),
    # an error of the size of the round-off: no verdict
    ([{"direction": "gradient", "fd": 1.0, "ad": 1.05, "rel_error": 0.048, "noise_rel": 0.04}], "info"),
    # one clear direction is enough for a verdict
    ([{"direction": "gradient", "fd": 1.0, "ad": 1.05, "rel_error": 0.048, "noise_rel": 0.04},
      {"direction": "random", "fd": 1.0, "ad": 3.0, "rel_error": 0.67, "noise_rel": 1e-3}], "error"),
    # older records without a noise estimate: judged on the tolerance alone
    ([{"direction": "gradient", "fd": 1.0, "ad": 1.05, "rel_error": 0.048}], "error"),
])
def test_gradient_check_gives_no_verdict_inside_the_measured_roundoff(results, severity):
    findings, reason = GradientCheck().run(_obs(results))
    assert reason is None
    assert [f.severity.value for f in findings] == [severity], [f.message for f in findings]
    if severity == "info":
        assert findings[0].message.startswith("Inconclusive") and findings[0].evidence["reason"] == "roundoff"


def test_gradient_check_gives_no_verdict_on_a_nonfinite_loss():
    results = [{"direction": "gradient", "fd": math.nan, "ad": 1.0, "rel_error": math.inf}]
    findings, _ = GradientCheck().run(_obs(results, loss=math.inf))
    assert [(f.severity.value, f.evidence["reason"]) for f in findings] == [("info", "nonfinite_loss")]
