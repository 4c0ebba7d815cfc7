"""Plain-text phrasing the console and the notebook views share, so the two never word
the same record differently. Pure Python."""

from __future__ import annotations

from typing import Any, Mapping

__all__ = ["intervention_lines"]


def _sentence(outcome: str, record: Mapping[str, Any]) -> str:
    """"<outcome>: with <intervention>, <probe>: <after> (was: <before>)"."""
    text = f"{outcome}:"
    if record.get("intervention"):
        text += f" with {record['intervention']},"
    if record.get("probe"):
        text += f" {record['probe']}:"
    if record.get("after"):
        text += f" {record['after']}"
    if record.get("before"):
        text += f" (was: {record['before']})"
    return text


def intervention_lines(confirmed: Any) -> list[tuple[str, str]]:
    """``(outcome, sentence)`` for the intervention recorded on a diagnosis
    (``Diagnosis.confirmed``): its real outcome, "confirmed", "not confirmed" or
    "inconclusive" (a record without one, from ``Diagnosis.confirm``'s default, is
    "confirmed"); then, when the leading cause's fix did not confirm it but a runner-up's
    fix did (``runner_up_confirmed``), a second line naming that cause. ``[]`` when no
    intervention ran."""
    if not isinstance(confirmed, Mapping) or not confirmed:
        return []
    outcome = str(confirmed.get("outcome") or "confirmed")
    lines = [(outcome, _sentence(outcome, confirmed))]
    runner_up = confirmed.get("runner_up_confirmed")
    if isinstance(runner_up, Mapping) and runner_up.get("cause"):
        other = str(runner_up.get("outcome") or "confirmed")
        lines.append((other, _sentence(f"{other} for {runner_up['cause']} instead", runner_up)))
    return lines
