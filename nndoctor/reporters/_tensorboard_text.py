"""The TensorBoard reporter's pages that are not time series: the findings, their
evidence and the run's summary as Markdown (TensorBoard's Text dashboard), and the
layout of its Custom Scalars dashboard. Pure Python: no tensor, no TensorBoard import.
:mod:`nndoctor.reporters.tensorboard` writes them and re-exports the public ones."""

from __future__ import annotations

import json
import re
from typing import Any

from ._words import intervention_lines

__all__ = ["findings_markdown", "evidence_markdown", "summary_markdown", "custom_scalars_layout"]


# -- Markdown ------------------------------------------------------------------------
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")


def _md_cell(text: Any) -> str:
    """One Markdown table cell. Pipes outside code spans are escaped (TensorBoard's
    Markdown keeps pipes inside code spans within the cell); newlines become ``<br>``
    (an allowed tag in TensorBoard's sanitiser); HTML is left to the sanitiser, which
    escapes tags it does not allow."""
    if text is None:
        return ""
    lines = []
    for line in str(text).replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        out, pos = [], 0
        for match in _CODE_SPAN.finditer(line):
            out.append(line[pos:match.start()].replace("|", r"\|"))
            out.append(match.group(0))
            pos = match.end()
        out.append(line[pos:].replace("|", r"\|"))
        lines.append("".join(out).strip())
    return "<br>".join(lines)


def findings_markdown(report: Any) -> str:
    """The findings as a Markdown table (worst first), or a line saying there are none."""
    findings = list(getattr(report, "findings", None) or [])
    run = len(getattr(report, "checks_run", None) or [])
    if not findings:
        return f"No findings: {run} check{'s' if run != 1 else ''} ran and passed."
    rows = [
        "| severity | check | where | message | fix |",
        "|---|---|---|---|---|",
    ]
    for f in findings:
        severity = getattr(f.severity, "value", f.severity)
        where = f.where if f.where is not None else ""
        if f.step is not None:
            where = f"{where} (step {f.step})" if where else f"step {f.step}"
        message = f.message
        if getattr(f, "explained_by", None):
            message += f"\n(explained by `{f.explained_by}`)"
        rows.append(
            "| " + " | ".join(_md_cell(c) for c in (f"**{severity}**", f.check, where, message, f.fix)) + " |"
        )
    counts: dict[str, int] = {}
    for f in findings:
        key = str(getattr(f.severity, "value", f.severity))
        counts[key] = counts.get(key, 0) + 1
    head = ", ".join(f"{n} {sev}" for sev, n in counts.items())
    checks = f"{run} check{'s' if run != 1 else ''} run"
    return (f"{len(findings)} finding{'s' if len(findings) != 1 else ''} ({head}); {checks}.\n\n"
            + _diagnosis_markdown(getattr(report, "diagnosis", None)) + "\n".join(rows))


def _diagnosis_markdown(diagnosis: Any) -> str:
    """The lead of the findings page, as the console's: the root cause, why, what it
    explains, and the intervention's real outcome; "" without a diagnosis."""
    if diagnosis is None or not getattr(diagnosis, "cause", None):
        return ""
    lines = [f"**Diagnosis:** `{diagnosis.cause}` ({diagnosis.confidence} confidence) — {diagnosis.summary}"]
    lines += [sentence for _, sentence in intervention_lines(diagnosis.confirmed)]
    if diagnosis.explains:
        lines.append("explains: " + ", ".join(f"`{e}`" for e in diagnosis.explains))
    return "<br>".join(_md_cell(line) for line in lines) + "\n\n"


def evidence_markdown(report: Any) -> str:
    parts = []
    for f in getattr(report, "findings", None) or []:
        evidence = f.to_dict().get("evidence") if hasattr(f, "to_dict") else getattr(f, "evidence", {})
        parts.append(f"### {f.check}" + (f" — `{f.where}`" if f.where else "") + f"\n\n{f.title}\n\n"
                     "```json\n" + json.dumps(evidence, indent=2, sort_keys=True, default=str) + "\n```")
    return "\n\n".join(parts) if parts else "No findings."


def summary_markdown(report: Any) -> str:
    model = getattr(report, "model", None) or {}
    lines = ["| | |", "|---|---|"]
    if getattr(report, "script", None):
        lines.append(f"| script | {_md_cell(report.script)} |")
    if model:
        lines.append(f"| model | {_md_cell(model.get('class', ''))} |")
        for key in ("parameters", "trainable"):
            if key in model:
                lines.append(f"| {key} | {_md_cell(model[key])} |")
    lines.append(f"| steps observed | {int(getattr(report, 'steps_observed', 0) or 0)} |")
    run = list(getattr(report, "checks_run", None) or [])
    lines.append(f"| checks run | {_md_cell(', '.join(run)) or '—'} |")
    skipped = list(getattr(report, "checks_skipped", None) or [])
    for s in skipped:
        lines.append(f"| skipped `{_md_cell(s.get('check', '?'))}` | {_md_cell(s.get('reason', ''))} |")
    return "\n".join(lines)


# -- custom scalars ------------------------------------------------------------------
def custom_scalars_layout(
    activation_band: tuple[float, float] | None = None,
) -> dict[str, dict[str, list[Any]]]:
    """The layout for TensorBoard's Custom Scalars dashboard (tags are regexes).
    ``activation_band``: the ``activation-std`` check's (low, high) as it judges with
    them (a user's override included), named in the chart's title; by default the
    check's documented defaults."""
    if activation_band is None:
        from ..checks._registry import REGISTRY  # pure Python: the catalogue of defaults

        defaults = {t.name: t.default for t in REGISTRY["activation-std"].thresholds}
        activation_band = (defaults["low"], defaults["high"])
    low, high = activation_band

    def rx(*parts: str) -> str:
        return re.escape("nndoctor/" + "/".join(parts))

    return {
        "nndoctor: training": {
            "loss": ["Multiline", [rx("loss", "value")]],
            "learning rate": ["Multiline", [rx("optimizer", "lr")]],
            "total gradient norm": ["Multiline", [rx("gradient", "total_norm")]],
            "non-finite values": ["Multiline", [rx("nonfinite") + "/.*"]],
        },
        "nndoctor: activations": {
            f"std per layer (activation-std band {low:g}-{high:g})": ["Multiline", [rx("activation", "std") + "/.*"]],
            "mean per layer": ["Multiline", [rx("activation", "mean") + "/.*"]],
            "dead fraction (ReLU)": ["Multiline", [rx("activation", "dead_fraction") + "/.*"]],
            "saturated fraction (sigmoid/tanh)": ["Multiline", [rx("activation", "saturated_fraction") + "/.*"]],
        },
        "nndoctor: gradients and updates": {
            "gradient norm per parameter": ["Multiline", [rx("gradient", "norm") + "/.*"]],
            "update/weight ratio (about 1e-3)": ["Multiline", [rx("update", "ratio") + "/.*"]],
        },
        "nndoctor: experiments": {
            "overfit a tiny batch": ["Multiline", [rx("experiment", "overfit") + "/.*"]],
            "learning-rate sweep": ["Multiline", [rx("experiment", "lr_sweep") + "/.*"]],
            "learning-rate range test": ["Multiline", [rx("experiment", "lr_range", "loss")]],
            "real vs random inputs": ["Multiline", [rx("experiment", "random_input") + "/.*"]],
        },
    }
