"""The notebook view: Report._repr_html_ and Report.__rich__."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from io import StringIO

import pytest
from rich.console import Console

from nndoctor import Finding, Report


def _report(**extra):
    r = Report(
        findings=[
            Finding("update-ratio", "warning", "Updates are tiny", "median ratio 1e-6 <b>", "raise the LR",
                    where="net.0 (Linear)", step=3),
            Finding("input-normalization", "error", "Inputs are not normalised", "mean 120", "standardise",
                    where="net"),
        ],
        checks_run=["update-ratio", "input-normalization"],
        checks_skipped=[{"check": "lr-sweep", "reason": "no optimizer"}],
        steps_observed=5, model={"class": "Net", "parameters": 12480, "trainable": 12480},
    )
    for k, v in extra.items():
        setattr(r, k, v)
    return r


class _Rows(HTMLParser):
    def __init__(self):
        super().__init__()
        self.rows, self.tags, self._row = [], [], None
        self._cell = None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "tr":
            self._row = []
        if tag == "td":
            self._cell = ""

    def handle_endtag(self, tag):
        if tag == "td" and self._row is not None:
            self._row.append(self._cell)
            self._cell = None
        if tag == "tr" and self._row:
            self.rows.append(self._row)

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def test_html_table_worst_first_and_escaped():
    html = _report()._repr_html_()
    parser = _Rows()
    parser.feed(html)
    assert [r[:2] for r in parser.rows] == [["error", "input-normalization"], ["warning", "update-ratio"]]
    assert parser.rows[1][2] == "net.0 (Linear) (step 3)"
    assert "median ratio 1e-6 <b>" in parser.rows[1][3]  # escaped text, not markup
    assert "&lt;b&gt;" in html
    assert "12,480 parameters" in html
    assert "lr-sweep" in html and "no optimizer" in html
    assert "<script" not in html


def test_html_diagnosis_comes_first():
    diagnosis = {"cause": "input-normalization", "confidence": "high", "explains": ["update-ratio"],
                 "confirmed": {"intervention": "inputs standardised", "probe": "overfit-tiny-batch",
                               "before": "not fitted in 100 steps", "after": "fitted in 37 steps"},
                 "summary": "the inputs are not standardised"}
    html = _report(diagnosis=diagnosis)._repr_html_()
    assert html.index("Diagnosis:") < html.index("<table")
    assert "fitted in 37 steps" in html and "high confidence" in html
    # The report diagnoses itself: its error (input-normalization) leads.
    assert "<code>input-normalization</code>" in _report()._repr_html_()
    assert "Diagnosis:" not in _report(diagnosis=None)._repr_html_()  # no diagnosis, no block


def test_html_healthy_report():
    html = Report(checks_run=["a", "b"])._repr_html_()
    assert "No problem found by the 2 checks" in html
    assert "<table" not in html


def test_rich_protocol_renders_the_console_report():
    buf = StringIO()
    Console(file=buf, width=100, color_system=None).print(_report())
    text = buf.getvalue()
    assert "error[input-normalization]" in text
    assert "warning[update-ratio]" in text
    assert "Report(" not in text


# -- the intervention's real outcome (issue 10: not every intervention confirms) -----------
class _Text(HTMLParser):
    """The visible text of the diagnosis block, tags dropped."""

    def __init__(self):
        super().__init__()
        self.depth, self.text = 0, ""

    def handle_starttag(self, tag, attrs):
        if self.depth or ("class", "nndoctor-diagnosis") in attrs:
            self.depth += 1

    def handle_endtag(self, tag):
        if self.depth:
            self.depth -= 1

    def handle_data(self, data):
        if self.depth:
            self.text += data


def _diagnosis_text(report):
    parser = _Text()
    parser.feed(report._repr_html_())
    return " ".join(parser.text.split())


def _says_confirmed(text):
    """"confirmed" said as a verdict, not inside "not confirmed"."""
    return re.search(r"(?<!not )\bconfirmed\b", text) is not None


@pytest.mark.parametrize("outcome", ["not confirmed", "inconclusive"])
def test_html_renders_an_intervention_that_did_not_confirm_as_such(outcome):
    report = _report()
    assert report.diagnosis.cause == "input-normalization"
    report.diagnosis.confirm("inputs standardised", "overfit-tiny-batch", "not fitted in 100 steps",
                             "not fitted in 100 steps (loss 2.3 -> 2.1)", outcome=outcome)
    text = _diagnosis_text(report)
    assert (f"{outcome}: with inputs standardised, overfit-tiny-batch: not fitted in 100 steps "
            f"(loss 2.3 -> 2.1) (was: not fitted in 100 steps)") in text
    assert not _says_confirmed(text), text
    # the same after a JSON round trip (what a notebook shows for a saved report)
    again = Report.from_dict(json.loads(report.to_json()))
    assert f"{outcome}: with inputs standardised" in _diagnosis_text(again)
    assert not _says_confirmed(_diagnosis_text(again))


def test_html_renders_a_confirmation_and_a_runner_up_that_confirmed_instead():
    report = _report()
    report.diagnosis.confirm("inputs standardised", "overfit-tiny-batch", "not fitted in 100 steps",
                             "fitted in 37 steps")
    text = _diagnosis_text(report)
    assert "confirmed: with inputs standardised, overfit-tiny-batch: fitted in 37 steps" in text
    assert "not confirmed" not in text and "high confidence" in text

    report.diagnosis.confirm("inputs standardised", "overfit-tiny-batch", "not fitted in 100 steps",
                             "not fitted in 100 steps", outcome="not confirmed")
    report.diagnosis.confirmed["runner_up_confirmed"] = {
        "cause": "update-ratio", "intervention": "learning rate x10", "probe": "overfit-tiny-batch",
        "before": "not fitted in 100 steps", "after": "fitted in 12 steps", "outcome": "confirmed"}
    text = _diagnosis_text(report)
    assert text.index("not confirmed: with inputs standardised") < text.index(
        "confirmed for update-ratio instead: with learning rate x10, overfit-tiny-batch: fitted in 12 steps")
