"""The Lightning and Hugging Face callbacks, against the real libraries, a few steps on CPU."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from nndoctor import Report

# The test extra installs both libraries: a missing one is a failure, not a skip.
import lightning.pytorch as pl  # noqa: E402
import transformers  # noqa: E402,F401  (imported so that a missing install fails here)

from nndoctor.integrations.lightning import DoctorCallback as LightningDoctor  # noqa: E402
from nndoctor.integrations.transformers import DoctorCallback as HFDoctor  # noqa: E402


def _live_hooks(model: nn.Module) -> int:
    n = 0
    for m in model.modules():
        n += len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        n += len(getattr(m, "_backward_pre_hooks", {}))
    for p in model.parameters():
        n += len(getattr(p, "_post_accumulate_grad_hooks", None) or {})
    return n


def test_importing_nndoctor_does_not_import_the_frameworks():
    code = ("import sys, nndoctor, nndoctor.testing, nndoctor.integrations; "
            "import nndoctor.cli; "
            "print(sorted(m for m in ('lightning', 'transformers', 'pytorch_lightning') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_missing_framework_gives_a_clear_error(monkeypatch):
    import importlib

    monkeypatch.setitem(sys.modules, "transformers", None)  # import raises ImportError
    monkeypatch.delitem(sys.modules, "nndoctor.integrations.transformers", raising=False)
    with pytest.raises(ImportError, match="needs the `transformers` package.*pip install transformers"):
        importlib.import_module("nndoctor.integrations.transformers")
    monkeypatch.delitem(sys.modules, "nndoctor.integrations.transformers", raising=False)


# --------------------------------------------------------------------------- Lightning
class _Data(torch.utils.data.Dataset):
    def __init__(self, n: int = 64) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 8, generator=g)
        self.y = (self.x @ torch.randn(8, 3, generator=g)).argmax(1)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


class _LitNet(pl.LightningModule):
    def __init__(self, softmax: bool = False, lr: float = 0.05) -> None:
        super().__init__()
        layers = [nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3)]
        if softmax:
            layers.append(nn.Softmax(dim=-1))
        self.net = nn.Sequential(*layers)
        self.lr = lr

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def _trainer(tmp_path, callback, steps: int = 8, logger=False):
    return pl.Trainer(max_steps=steps, callbacks=[callback], logger=logger, accelerator="cpu", devices=1,
                      enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                      default_root_dir=str(tmp_path))


def _loader():
    return torch.utils.data.DataLoader(_Data(), batch_size=16, shuffle=False)


def test_lightning_watches_real_steps_and_runs_the_checkup(tmp_path):
    torch.manual_seed(0)
    model = _LitNet()
    cb = LightningDoctor(loss_fn=nn.CrossEntropyLoss())
    _trainer(tmp_path, cb).fit(model, _loader())
    assert isinstance(cb.report, Report)
    assert cb.report.steps_observed == 8
    assert "overfit-tiny-batch" in cb.report.checks_run
    assert not cb.report.errors, [f.check for f in cb.report.errors]
    assert _live_hooks(model) == 0


def test_lightning_finds_the_softmax_bug_with_the_loss_from_the_graph(tmp_path):
    torch.manual_seed(0)
    model = _LitNet(softmax=True)
    cb = LightningDoctor()  # no loss_fn: rebuilt from the watched steps' loss graph
    _trainer(tmp_path, cb).fit(model, _loader())
    assert "loss-input-format" in cb.report.ids("warning"), cb.report.ids()
    assert _live_hooks(model) == 0


def test_lightning_watch_steps_and_checkup_at(tmp_path):
    torch.manual_seed(0)
    model = _LitNet()
    cb = LightningDoctor(watch_steps=3, checkup_at=4, loss_fn=nn.CrossEntropyLoss(),
                         select=["overfit-tiny-batch", "frozen-layer"])
    _trainer(tmp_path, cb, steps=8).fit(model, _loader())
    assert cb.report.steps_observed == 3
    assert set(cb.report.checks_run) <= {"overfit-tiny-batch", "frozen-layer"}
    assert "overfit-tiny-batch" in cb.report.checks_run
    assert _live_hooks(model) == 0


def test_lightning_logs_to_tensorboard(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    torch.manual_seed(0)
    model = _LitNet(softmax=True)
    cb = LightningDoctor()
    logger = TensorBoardLogger(str(tmp_path), name="run")
    _trainer(tmp_path, cb, logger=logger).fit(model, _loader())
    acc = EventAccumulator(logger.log_dir, size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    assert "nndoctor/warnings" in acc.Tags()["scalars"]
    assert float(acc.Scalars("nndoctor/warnings")[-1].value) == len(cb.report.warnings)
    assert any("findings" in t or "nndoctor" in t for t in acc.Tags()["tensors"]), acc.Tags()


def test_lightning_hooks_removed_when_training_raises(tmp_path):
    class Boom(_LitNet):
        def training_step(self, batch, batch_idx):
            if batch_idx == 2:
                raise RuntimeError("boom at step 2")
            return super().training_step(batch, batch_idx)

    model = Boom()
    cb = LightningDoctor()
    with pytest.raises(RuntimeError, match="boom at step 2"):
        _trainer(tmp_path, cb).fit(model, _loader())
    assert _live_hooks(model) == 0
    assert not cb._session.watching


# --------------------------------------------------------------------------- transformers
class _Tokens(torch.utils.data.Dataset):
    def __init__(self, n: int = 32, length: int = 12, vocab: int = 50) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(1, vocab, (n, length), generator=g)
        self.labels = (self.ids[:, 0] % 2).long()  # learnable from the first token

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]),
                "labels": self.labels[i]}


def _bert():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=16, num_labels=2)
    return BertForSequenceClassification(config)


def _hf_train(tmp_path, cb, steps=6, report_to="none", model=None):
    from transformers import Trainer, TrainingArguments

    model = model or _bert()
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=steps, per_device_train_batch_size=8,
                             learning_rate=1e-3, report_to=report_to,
                             save_strategy="no", use_cpu=True, disable_tqdm=True, logging_steps=2,
                             dataloader_num_workers=0)
    Trainer(model=model, args=args, train_dataset=_Tokens(), callbacks=[cb]).train()
    return model


def test_transformers_watches_a_tiny_bert(tmp_path):
    cb = HFDoctor()
    model = _hf_train(tmp_path, cb)
    report = cb.report
    assert isinstance(report, Report)
    assert report.steps_observed == 6
    assert report.model["class"] == "BertForSequenceClassification"
    ran_or_skipped = set(report.checks_run) | {s["check"] for s in report.checks_skipped}
    assert "overfit-tiny-batch" in ran_or_skipped
    assert "overfit-tiny-batch" in report.checks_run, report.checks_skipped
    assert _live_hooks(model) == 0


def test_transformers_watch_steps_and_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cb = HFDoctor(watch_steps=2, checkup=False)
    model = _hf_train(tmp_path, cb, steps=4, report_to=["tensorboard"])
    assert cb.report.steps_observed == 2
    assert "overfit-tiny-batch" not in cb.report.checks_run
    assert str(cb.report.logdir).startswith(str(tmp_path))
    acc = EventAccumulator(str(cb.report.logdir), size_guidance={"tensors": 0})
    acc.Reload()
    assert acc.Tags()["tensors"], acc.Tags()
    assert _live_hooks(model) == 0


def test_transformers_context_manager_removes_hooks_on_exceptions(tmp_path):
    from transformers import Trainer, TrainingArguments

    class Broken(_Tokens):
        served = 0

        def __getitem__(self, i):
            Broken.served += 1
            if Broken.served > 24:  # the fourth batch (the Trainer samples in random order)
                raise RuntimeError("boom in the data")
            return super().__getitem__(i)

    model = _bert()
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=6, per_device_train_batch_size=8,
                             report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True,
                             dataloader_num_workers=0)
    with pytest.raises(RuntimeError, match="boom in the data"):
        with HFDoctor() as cb:
            Trainer(model=model, args=args, train_dataset=Broken(64), callbacks=[cb]).train()
    assert cb.doctor is not None and cb.doctor.steps_completed >= 1  # it did watch
    assert not cb._session.watching
    assert _live_hooks(model) == 0


def test_lightning_does_no_harm(tmp_path):
    def fit(callbacks):
        torch.manual_seed(0)
        model = _LitNet()
        pl.Trainer(max_steps=6, callbacks=callbacks, logger=False, accelerator="cpu", devices=1,
                   enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                   default_root_dir=str(tmp_path)).fit(model, torch.utils.data.DataLoader(_Data(), batch_size=16,
                                                                                       shuffle=True))
        return model.state_dict(), torch.rand(3)

    plain, rand_plain = fit([])
    watched, rand_watched = fit([LightningDoctor(loss_fn=nn.CrossEntropyLoss())])
    for k in plain:
        assert torch.equal(plain[k], watched[k]), k
    assert torch.equal(rand_plain, rand_watched)
