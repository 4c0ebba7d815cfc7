"""The one check set: which checks run, with which thresholds, resolved once.

Settings come in layers, later ones winning: ``[tool.nndoctor]``, then the Python
keyword arguments or the command-line options, then a call's own ``select``/``ignore``
(``doctor.checkup(batch, select=[...])``). A layer's ``select`` (when given) replaces the
selection so far; its ``ignore`` removes ids from it; its ``thresholds`` override the
earlier values name by name. Every check of every kind (passive, experiment,
distributed) is built when the set is resolved, so an unknown id or an unknown threshold
name fails at once, naming the valid ones, not when a checkup or a DDP merge first needs
the check.

Judging (``judge``) is here too, with the policy for a check that crashes: it is listed
in ``checks_skipped`` with a reason starting "internal error" and a note in the report
(shown by the console), and in strict mode (``NNDOCTOR_STRICT=1``, which the test suite
turns on) the exception propagates.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from .checks._base import Check
from .checks._registry import REGISTRY

__all__ = ["CheckSet", "Judgement", "judge", "is_strict", "internal_error", "STRICT_ENV", "split_ids"]

STRICT_ENV = "NNDOCTOR_STRICT"
#: Checks whose data the checkup's probes produce (the experiment checks, and the
#: chance-level-loss check judging the "loss at init" probe).
CHECKUP_PASSIVE = ("chance-level-loss",)


def is_strict() -> bool:
    """Strict mode: an internal error (a check or a probe that crashes) raises instead of
    being reported as a skip. On with ``NNDOCTOR_STRICT=1`` (the test suite sets it)."""
    return os.environ.get(STRICT_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def internal_error(what: str, exc: BaseException) -> str:
    """The reason recorded for a crash of ``what`` (a check or a probe). Re-raises the
    exception in strict mode, so the test suite cannot count a crash as a silence."""
    if is_strict():
        raise exc
    return f"internal error in {what}: {type(exc).__name__}: {exc}"


def _usage_error(message: str) -> Exception:
    from ._doctor import NNDoctorUsageError

    return NNDoctorUsageError(message)


def split_ids(value: "str | Iterable[str] | None") -> list[str] | None:
    """``"a,b"`` or ``["a", "b"]`` -> ``["a", "b"]``; None stays None."""
    if value is None:
        return None
    if isinstance(value, str):
        value = value.split(",")
    try:
        items = list(value)
    except TypeError:
        raise _usage_error(
            f"select/ignore take check ids as a list or a comma-separated string, got {type(value).__name__}"
        ) from None
    out = []
    for v in items:
        if not isinstance(v, str):
            raise _usage_error(f"check ids are strings, got {v!r} ({type(v).__name__})")
        if v.strip():
            out.append(v.strip())
    return out


def _unknown_id(cid: str, where: str) -> Exception:
    close = difflib.get_close_matches(cid, list(REGISTRY), n=3)
    return _usage_error(
        f"unknown check id {cid!r} in {where}"
        + (f" (did you mean {' or '.join(close)}?)" if close else "")
        + f". Valid ids: {', '.join(REGISTRY)}. `nndoctor checks` describes them."
    )


def _validate_thresholds(thresholds: Any, where: str) -> dict[str, dict[str, float]]:
    if thresholds is None:
        return {}
    if not isinstance(thresholds, Mapping):
        raise _usage_error(f"{where} must map check ids to {{threshold name: number}}, got {type(thresholds).__name__}")
    out: dict[str, dict[str, float]] = {}
    for cid, values in thresholds.items():
        if cid not in REGISTRY:
            raise _unknown_id(cid, where)
        cls = REGISTRY[cid]
        known = [t.name for t in cls.thresholds]
        if not isinstance(values, Mapping):
            raise _usage_error(f"{where}[{cid!r}] must be a table of threshold values "
                               f"({', '.join(known) or 'this check has none'}), got {values!r}")
        for name, value in values.items():
            if name not in known:
                close = difflib.get_close_matches(str(name), known, n=2)
                raise _usage_error(
                    f"check {cid!r} has no threshold named {name!r} (in {where})"
                    + (f"; did you mean {' or '.join(close)}?" if close else ".")
                    + f" Its thresholds: {', '.join(known) or 'none'}."
                )
            if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
                raise _usage_error(f"threshold {cid}.{name} (in {where}) must be a number, got {value!r}")
        out[cid] = dict(values)
    return out


@dataclass(frozen=True)
class Judgement:
    """What the checks said about some observations."""

    findings: list = field(default_factory=list)
    run: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    # One console-visible line per check that crashed.
    notes: list[str] = field(default_factory=list)

    def __iter__(self):  # (findings, run, skipped), as ``evaluate`` always returned
        return iter((self.findings, self.run, self.skipped))


def judge(checks: Iterable[Check], obs: Any) -> Judgement:
    """Run ``checks`` on ``obs``. A check that raises (other than ``Skip``) does not hide
    the others: it is skipped with "internal error ..." and a note; in strict mode the
    exception propagates."""
    out = Judgement()
    # What each check judged with, a user's override included: the figures draw these.
    used = getattr(obs, "check_thresholds", None)
    for check in checks:
        if isinstance(used, dict):
            used[check.id] = dict(check.values)
        try:
            found, reason = check.run(obs)
        except Exception as exc:  # a broken check must not hide the others' findings
            reason = internal_error(f"the check {check.id}", exc)
            out.skipped.append({"check": check.id, "reason": reason})
            out.notes.append(f"{reason} (its verdict is missing; this is a bug in nndoctor, please report it)")
            continue
        if reason is not None:
            out.skipped.append({"check": check.id, "reason": reason})
        else:
            out.run.append(check.id)
            out.findings.extend(found)
    return out


@dataclass(frozen=True)
class CheckSet:
    """The checks selected for one Doctor (or one ``nndoctor check`` run), built with
    their thresholds. Use :meth:`resolve`; ``CheckSet()`` is every check at defaults."""

    ids: tuple[str, ...] = tuple(REGISTRY)
    thresholds: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    instances: Mapping[str, Check] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.instances:
            object.__setattr__(self, "instances", self._build(self.ids, self.thresholds))

    @staticmethod
    def _build(ids: Sequence[str], thresholds: Mapping[str, Mapping[str, float]]) -> dict[str, Check]:
        built = {}
        # Every check with overrides is built, selected or not: a bad name fails now.
        for cid in REGISTRY:
            if cid in ids or cid in thresholds:
                try:
                    check = REGISTRY[cid](**thresholds.get(cid, {}))
                except ValueError as exc:
                    raise _usage_error(str(exc)) from None
                if cid in ids:
                    built[cid] = check
        _validate_needs(built.values())
        return built

    # -- resolution ----------------------------------------------------------------------
    @classmethod
    def resolve(
        cls,
        select: "str | Iterable[str] | None" = None,
        ignore: "str | Iterable[str] | None" = None,
        thresholds: Mapping[str, Mapping[str, float]] | None = None,
        *,
        base: "CheckSet | None" = None,
        where: str = "the arguments",
    ) -> "CheckSet":
        """``base`` (every check at defaults when None) with one more layer of settings.
        Unknown ids and threshold names raise ``NNDoctorUsageError`` naming the valid ones
        and ``where`` the setting came from."""
        chosen = split_ids(select)
        dropped = split_ids(ignore) or []
        for key, cids in (("select", chosen or []), ("ignore", dropped)):
            for cid in cids:
                if cid not in REGISTRY:
                    raise _unknown_id(cid, f"{key} of {where}")
        overrides = _validate_thresholds(thresholds, f"thresholds of {where}")
        start = base.ids if base is not None else tuple(REGISTRY)
        merged = {k: dict(v) for k, v in (base.thresholds if base is not None else {}).items()}
        for cid, values in overrides.items():
            merged.setdefault(cid, {}).update(values)
        ids = [c for c in REGISTRY if (c in chosen if chosen is not None else c in start) and c not in dropped]
        return cls(ids=tuple(ids), thresholds=merged)

    @classmethod
    def from_layers(cls, *layers: tuple[Mapping[str, Any] | None, str]) -> "CheckSet":
        """Resolve ``(settings, where)`` layers in order (``settings`` has optional
        ``select``, ``ignore``, ``thresholds`` keys; None skips the layer)."""
        result: CheckSet | None = None
        for settings, where in layers:
            if settings is None:
                continue
            result = cls.resolve(settings.get("select"), settings.get("ignore"), settings.get("thresholds"),
                                 base=result, where=where)
        return result if result is not None else cls()

    def narrowed(self, select: Any = None, ignore: Any = None, *, where: str = "the call") -> "CheckSet":
        """This set with one more layer (``select`` replaces, ``ignore`` removes)."""
        if select is None and not ignore:
            return self
        return CheckSet.resolve(select, ignore, None, base=self, where=where)

    # -- views ---------------------------------------------------------------------------
    def __contains__(self, check_id: object) -> bool:
        return check_id in self.instances

    def __iter__(self):
        return iter(self.instances.values())

    def __len__(self) -> int:
        return len(self.instances)

    def get(self, check_id: str) -> Check | None:
        return self.instances.get(check_id)

    @property
    def passive(self) -> list[Check]:
        """The checks judged on watched training (distributed ones included: they skip
        outside a DDP run and are judged again on every rank's facts by ``gather``)."""
        return [c for c in self.instances.values() if c.kind == "passive" or c.watch_too]

    @property
    def experiment(self) -> list[Check]:
        return [c for c in self.instances.values() if c.kind == "experiment"]

    @property
    def distributed(self) -> list[Check]:
        return [c for c in self.instances.values() if c.family == "distributed"]

    @property
    def checkup(self) -> dict[str, Check]:
        """The checks a checkup judges: the experiment checks and the passive ones that
        read a probe's data (chance-level-loss: the loss at init)."""
        return {cid: c for cid, c in self.instances.items() if c.kind == "experiment" or cid in CHECKUP_PASSIVE}


def _validate_needs(checks: Iterable[Check]) -> None:
    """What the checks read must be something observations provide (at construction,
    not at step 10,000)."""
    from ._observations import Observations

    fields = {f.name for f in dataclasses.fields(Observations)} | {"losses", "sampled", "experiments"}
    for check in checks:
        missing = [n for n in check.needs if n not in fields]
        if missing:
            raise _usage_error(f"check {check.id!r} needs observations {missing} that no observer produces")
