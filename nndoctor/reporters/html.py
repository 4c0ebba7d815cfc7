"""The report in a notebook: ``Report._repr_html_`` (a compact table, the diagnosis
first) and ``Report.__rich__`` (the console renderables, for ``rich.print(report)`` and
rich's Jupyter display). Pure Python, no torch."""

from __future__ import annotations

from html import escape
from typing import Any

from ._words import intervention_lines

__all__ = ["render_html", "diagnosis_of"]

_COLOURS = {"error": "#c62828", "warning": "#b26a00", "info": "#1565c0"}


def _get(obj: Any, key: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(key)
    return getattr(obj, key, None)


def diagnosis_of(report: Any) -> Any:
    """``report.diagnosis`` when the report carries one (schema 2), else None."""
    return getattr(report, "diagnosis", None)


def _diagnosis_html(diagnosis: Any) -> str:
    cause = _get(diagnosis, "cause")
    if not cause:
        return ""
    summary = _get(diagnosis, "summary")
    confidence = _get(diagnosis, "confidence")
    explains = _get(diagnosis, "explains") or []
    confirmed = _get(diagnosis, "confirmed")
    parts = [f'<div class="nndoctor-diagnosis" style="margin:0.3em 0 0.6em 0">'
             f"<b>Diagnosis:</b> <code>{escape(str(cause))}</code>"]
    if confidence:
        parts.append(f" ({escape(str(confidence))} confidence)")
    if summary:
        parts.append(f" &mdash; {escape(str(summary))}")
    if explains:
        parts.append("<br><span style='opacity:0.75'>explains: "
                     + ", ".join(f"<code>{escape(str(e))}</code>" for e in explains) + "</span>")
    for outcome, sentence in intervention_lines(confirmed):
        # the intervention's real outcome: confirmed, not confirmed or inconclusive
        colour = "#2e7d32" if outcome == "confirmed" else _COLOURS["warning"]
        parts.append(f"<br><span class='nndoctor-intervention' style='color:{colour}'>{escape(sentence)}</span>")
    parts.append("</div>")
    return "".join(parts)


def render_html(report: Any) -> str:
    """A self-contained HTML fragment (inline styles only: notebooks strip <style>)."""
    model = report.model or {}
    head = ["<b>nndoctor</b>"]
    if report.script:
        head.append(escape(str(report.script)))
    if model:
        head.append(f"{escape(str(model.get('class', '?')))} ({int(model.get('parameters', 0) or 0):,} parameters, "
                    f"{int(model.get('trainable', 0) or 0):,} trainable)")
    head.append(f"{report.steps_observed} step(s) watched")
    out = ['<div class="nndoctor-report" style="font-family:sans-serif;font-size:0.9em">',
           "<div>" + " &middot; ".join(head) + "</div>",
           _diagnosis_html(diagnosis_of(report))]
    if report.findings:
        cell = "padding:0.2em 0.6em;text-align:left;vertical-align:top"
        out.append('<table style="border-collapse:collapse;margin-top:0.3em">')
        out.append("<thead><tr>" + "".join(f'<th style="{cell}">{h}</th>'
                                           for h in ("severity", "check", "where", "finding", "fix"))
                   + "</tr></thead><tbody>")
        for f in report.findings:
            sev = f.severity.value
            where = f.where or ""
            if f.step is not None:
                where = f"{where} (step {f.step})" if where else f"step {f.step}"
            explained = getattr(f, "explained_by", None)
            title = f"<b>{escape(f.title)}</b><br>{escape(f.message)}"
            if explained:
                title += f"<br><i>explained by <code>{escape(str(explained))}</code></i>"
            out.append(
                "<tr style='border-top:1px solid rgba(128,128,128,0.3)'>"
                f'<td style="{cell};color:{_COLOURS.get(sev, "inherit")};font-weight:bold">{sev}</td>'
                f'<td style="{cell}"><code>{escape(f.check)}</code></td>'
                f'<td style="{cell}">{escape(where)}</td>'
                f'<td style="{cell}">{title}</td>'
                f'<td style="{cell}">{escape(f.fix)}</td></tr>'
            )
        out.append("</tbody></table>")
    else:
        out.append(f'<div style="color:#2e7d32">No problem found by the {len(report.checks_run)} '
                   f"checks that ran.</div>")
    n_notes = len(report.findings) - len(report.errors) - len(report.warnings)
    out.append(f'<div style="margin-top:0.4em;opacity:0.8">{len(report.errors)} error(s), '
               f"{len(report.warnings)} warning(s), {n_notes} note(s); {len(report.checks_run)} check(s) ran, "
               f"{len(report.checks_skipped)} skipped.</div>")
    if report.checks_skipped:
        out.append("<details><summary>skipped checks</summary><ul>"
                   + "".join(f"<li><code>{escape(s['check'])}</code>: {escape(s['reason'])}</li>"
                             for s in report.checks_skipped)
                   + "</ul></details>")
    for note in report.notes:
        out.append(f'<div style="opacity:0.7">note: {escape(note)}</div>')
    out.append("</div>")
    return "\n".join(p for p in out if p)
