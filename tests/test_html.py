"""The notebook view: Report._repr_html_ and Report.__rich__."""

from __future__ import annotations

from html.parser import HTMLParser
from io import StringIO

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
