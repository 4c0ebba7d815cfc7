"""The console report at 80 and 120 columns (snapshot-style: rendered into a StringIO
console without colours, then its layout properties asserted)."""

from __future__ import annotations

from io import StringIO
from types import SimpleNamespace

import pytest
from rich.console import Console
from typer.testing import CliRunner

from nndoctor import Finding, Report
from nndoctor.checks._registry import REGISTRY
from nndoctor.cli import app
from nndoctor.reporters.console import display_where

LONG = ("Each update changes the weights by 0.135 of their norm (median over 2 weight tensors and 10 "
        "updates; ~1e-3 is healthy); the most-changed tensor is `2.weight` (0.23 over all updates), "
        "and the layer `0` drives it. The learning rate is likely too high.")


def _report() -> Report:
    modules = {"": SimpleNamespace(class_name="Sequential"), "0": SimpleNamespace(class_name="Conv2d"),
               "2": SimpleNamespace(class_name="Linear")}
    return Report(
        findings=[
            Finding("grad-not-zeroed", "error", "Gradients accumulate across updates without being reset",
                    LONG, "Call `optimizer.zero_grad(set_to_none=True)` once per update, before or after "
                          "the step, and never twice in a row inside a gradient accumulation loop.", step=1),
            Finding("update-ratio", "warning", "Update size / weight size far from ~1e-3", LONG,
                    "Lower the learning rate.", where="2"),
            Finding("activation-std", "error", "Layer activations outside the healthy scale", "std 8.9e3",
                    "Normalise the inputs.", where="0", step=0),
        ],
        checks_run=[c for c in list(REGISTRY)[:20]],
        checks_skipped=[{"check": "vanishing-gradient", "reason": "too few layers"},
                        *[{"check": c, "reason": "not a distributed run"}
                          for c in ("ddp-parameter-divergence", "ddp-same-batch-every-rank",
                                    "ddp-unused-parameters", "ddp-set-epoch-missing")]],
        steps_observed=30, script="examples/some_rather_long_directory_name/bug_missing_zero_grad.py",
        model={"class": "Sequential", "parameters": 1604, "trainable": 1604},
        observations=SimpleNamespace(modules=modules),
        notes=["a rather long note that explains something nndoctor could not observe while it watched "
               "the training steps of this script"],
    )


def _render(report: Report, width: int, verbose: bool = False) -> list[str]:
    buf = StringIO()
    report.print(Console(file=buf, width=width, color_system=None), verbose=verbose)
    return buf.getvalue().splitlines()


@pytest.mark.parametrize("width", [80, 120])
def test_no_line_is_wider_than_the_console(width):
    lines = _render(_report(), width)
    assert max(len(line) for line in lines) <= width
    assert max(len(line) for line in _render(_report(), width, verbose=True)) <= width


@pytest.mark.parametrize("width", [80, 120])
def test_wrapped_lines_hang(width):
    lines = _render(_report(), width)
    titles = [i for i, line in enumerate(lines) if line.startswith(("error[", "warning[", "info["))]
    assert len(titles) == 3
    for start in titles:
        end = next((j for j in range(start + 1, len(lines))
                    if not lines[j].startswith(" ")), len(lines))
        block = lines[start + 1:end]
        # message and fix: every line indented; fix continuation lines hang under the text
        assert block and all(line.startswith("  ") for line in block)
        fix = next(k for k, line in enumerate(block) if line.startswith("  fix: "))
        assert all(line.startswith("       ") for line in block[fix + 1:])
    # the long message wrapped (at 80 and 120 columns) without any line at column 0
    assert sum(1 for line in lines if "median over 2 weight" in line) == 2


@pytest.mark.parametrize("width", [80, 120])
def test_location_on_the_title_line_and_layer_names_readable(width):
    lines = _render(_report(), width)
    text = "\n".join(lines)
    # never split in two: the location is on one line with its class
    assert any("at 2 (Linear)" in line for line in lines)
    assert any("at 0 (Conv2d), step 0" in line for line in lines)
    assert "`0` (Conv2d)" in text  # backticked numeric paths in messages name their class
    title = next(i for i, line in enumerate(lines) if line.startswith("warning[update-ratio]"))
    assert "at 2 (Linear)" in lines[title]  # fits: on the title line itself
    if width >= 120:
        assert all("step 1" in line for line in lines if line.startswith("error[grad-not-zeroed]"))


@pytest.mark.parametrize("width", [80, 120])
def test_header_fits_and_breaks_between_parts(width):
    lines = _render(_report(), width)
    header = lines[:2] if lines[1].startswith("  ") else lines[:1]
    joined = " ".join(h.strip() for h in header)
    for part in ("nndoctor", "bug_missing_zero_grad.py", "Sequential (1,604 parameters, 1,604 trainable)",
                 "30 step(s) watched"):
        assert part in joined
        assert any(part in h for h in header)  # each part on one line


def test_counts_match_their_lists():
    text = "\n".join(_render(_report(), 120))
    assert "5 skipped (4 not applicable: single process)" in text
    assert "Skipped: vanishing-gradient (reasons" in text
    assert "ddp-" not in text.split("Skipped:")[1]
    verbose = "\n".join(_render(_report(), 120, verbose=True))
    assert all(s["check"] in verbose for s in _report().checks_skipped)


def test_display_where():
    modules = {"0": SimpleNamespace(class_name="Conv2d"), "enc.fc": SimpleNamespace(class_name="Linear")}
    assert display_where("0", modules) == "0 (Conv2d)"
    assert display_where("enc.fc", modules) == "enc.fc (Linear)"
    assert display_where("0", {}) == "0"
    assert display_where(None, modules) is None


@pytest.mark.parametrize("width", [80, 120])
def test_checks_list_is_readable_at_width(width):
    result = CliRunner().invoke(app, ["checks"], env={"COLUMNS": str(width)})
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= width
    assert "…" not in result.stdout
    flat = " ".join(result.stdout.split())
    for cls in REGISTRY.values():
        assert cls.id in result.stdout
        assert " ".join(cls.title.split()) in flat or all(w in flat for w in cls.title.split())
    # one row per check plus wrapped title lines: far fewer than 8 lines per check
    assert len(lines) <= 3 * len(REGISTRY) + 12


def test_verbose_prints_a_shared_reason_once():
    report = _report()
    report.checks_skipped = [{"check": c, "reason": "the loss is custom code that nndoctor cannot rebuild"}
                             for c in ("overfit-tiny-batch", "random-input-loss", "lr-sweep", "gradient-check")]
    text = "\n".join(_render(report, 80, verbose=True))
    assert text.count("cannot rebuild") == 1
    flat = " ".join(text.split())
    assert "overfit-tiny-batch, random-input-loss, lr-sweep, gradient-check: the loss is custom code" in flat


@pytest.mark.parametrize("outcome", ["confirmed", "not confirmed", "inconclusive"])
def test_the_diagnosis_block_says_the_interventions_real_outcome(outcome):
    report = Report(findings=[Finding("input-normalization", "error", "Inputs are not normalised", "mean 120",
                                      "Standardise the inputs.", where="net")])
    report.diagnosis.confirm("inputs standardised", "overfit-tiny-batch", "not fitted in 100 steps",
                             "after words", outcome=outcome)
    # the console and the notebook's rich view (Report.__rich__) render the same block
    for text in (" ".join(_render(report, 100)), _rich_print(report)):
        text = " ".join(text.split())
        assert (f"{outcome}: with inputs standardised, overfit-tiny-batch: after words "
                f"(was: not fitted in 100 steps)") in text
        if outcome != "confirmed":
            assert "confirmed: with" not in text.replace("not confirmed: with", "")


def test_the_diagnosis_block_names_a_runner_up_that_confirmed_instead():
    report = Report(findings=[Finding("input-normalization", "error", "Inputs are not normalised", "mean 120",
                                      "Standardise the inputs.", where="net")])
    report.diagnosis.confirm("inputs standardised", "overfit-tiny-batch", "not fitted in 100 steps",
                             "not fitted in 100 steps", outcome="not confirmed",
                             runner_up_confirmed={"cause": "weight-init", "intervention": "weights re-initialised",
                                                  "probe": "overfit-tiny-batch", "before": "not fitted in 100 steps",
                                                  "after": "fitted in 20 steps", "outcome": "confirmed"})
    text = " ".join(" ".join(_render(report, 100)).split())
    assert text.index("not confirmed: with inputs standardised") < text.index(
        "confirmed for weight-init instead: with weights re-initialised, overfit-tiny-batch: fitted in 20 steps")


def _rich_print(report: Report) -> str:
    buf = StringIO()
    Console(file=buf, width=100, color_system=None).print(report)
    return buf.getvalue()
