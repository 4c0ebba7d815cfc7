"""The unit of diagnosis: a ``Check`` (pure Python; imports no torch).

A check reads plain-data observations and yields findings. Its docstring has fixed
sections (What it measures, Why it matters, How to fix, Known false positives, Example,
References) that the catalogue page, ``nndoctor explain`` and the fix text are made of.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable, Iterator

from .._report import Finding, Severity
from .._derive import observer_skip_reason as _observer_skip_reason

__all__ = ["Check", "Threshold", "Citation", "Skip", "SECTIONS"]

SECTIONS = (
    "What it measures",
    "Why it matters",
    "How to fix",
    "Known false positives",
    "Example",
    "References",
)


@dataclass(frozen=True)
class Threshold:
    """A documented, overridable number a check compares against."""

    name: str
    default: float
    meaning: str
    unit: str = ""


@dataclass(frozen=True)
class Citation:
    text: str
    url: str | None = None

    def __str__(self) -> str:
        return f"{self.text} <{self.url}>" if self.url else self.text


CHECKLIST = Citation(
    "The training checklist: A. Karpathy, 'A Recipe for Training Neural Networks', 2019",
    "https://karpathy.github.io/2019/04/25/recipe/",
)


class Skip(Exception):
    """Raised by ``evaluate`` when a check cannot judge (the reason is reported)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Check:
    """Base class. Subclasses set the class attributes and implement ``evaluate``."""

    id: ClassVar[str]
    title: ClassVar[str]
    family: ClassVar[str]
    severity: ClassVar[Severity]  # the worst severity this check issues
    kind: ClassVar[str] = "passive"  # "passive" (watch mode) or "experiment" (checkup)
    # An experiment check that also judges what watch() records (gradient-check: the
    # custom autograd.Functions the watched steps called); judged in both modes.
    watch_too: ClassVar[bool] = False
    thresholds: ClassVar[tuple[Threshold, ...]] = ()
    citations: ClassVar[tuple[Citation, ...]] = ()
    # Names of Observations attributes the check reads; validated when a Doctor is built.
    needs: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **overrides: float) -> None:
        known = {t.name for t in self.thresholds}
        unknown = set(overrides) - known
        if unknown:
            raise ValueError(
                f"check {self.id!r} has no threshold named {sorted(unknown)}; "
                f"its thresholds are {sorted(known) or 'none'}"
            )
        self.values: dict[str, float] = {t.name: overrides.get(t.name, t.default) for t in self.thresholds}

    def __getattr__(self, name: str) -> Any:
        # Thresholds read as attributes (``self.max_dead_fraction``). A misspelt name is a
        # bug in the check: the error names the real thresholds, and the judging policy
        # (``nndoctor._checkset.judge``) reports it as an internal error, never as a
        # plain skip; in strict mode (the test suite) it propagates.
        values = self.__dict__.get("values")
        if values is not None and name in values:
            return values[name]
        if name.startswith("__") or values is None:
            raise AttributeError(name)
        raise AttributeError(
            f"check {type(self).__name__} ({getattr(type(self), 'id', '?')}) has no attribute or "
            f"threshold {name!r}; its thresholds are {sorted(values) or 'none'}"
        )

    # -- to implement ------------------------------------------------------------------
    def evaluate(self, obs: Any) -> Iterable[Finding]:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- helpers -----------------------------------------------------------------------
    def run(self, obs: Any) -> tuple[list[Finding], str | None]:
        """Evaluate; returns (findings, skip_reason)."""
        failed = _observer_skip_reason(obs, self.id)  # an observer unit it reads from failed
        if failed is not None:
            return [], failed
        try:
            return list(self.evaluate(obs) or ()), None
        except Skip as skip:
            return [], skip.reason

    def finding(
        self,
        message: str,
        *,
        severity: Severity | str | None = None,
        where: str | None = None,
        step: int | None = None,
        fix: str | None = None,
        **evidence: Any,
    ) -> Finding:
        return Finding(
            check=self.id,
            severity=Severity.parse(severity) if severity is not None else self.severity,
            title=self.title,
            message=message,
            where=where,
            step=step,
            evidence=evidence,
            fix=fix or self.default_fix(),
        )

    @classmethod
    def sections(cls) -> dict[str, str]:
        """The docstring's ``## Section`` bodies, in order."""
        doc = inspect.cleandoc(cls.__doc__ or "")
        parts = re.split(r"^## +(.+?)\s*$", doc, flags=re.M)
        out: dict[str, str] = {}
        for i in range(1, len(parts), 2):
            out[parts[i].strip()] = parts[i + 1].strip()
        return out

    @classmethod
    def default_fix(cls) -> str:
        text = cls.sections().get("How to fix", "")
        lines = [ln.strip().lstrip("-* ").strip() for ln in text.splitlines() if ln.strip()]
        return " ".join(lines)


def iter_sections_problems(cls: type[Check]) -> Iterator[str]:
    """Why a check class breaks the unit rules (used by the registry tests)."""
    if not re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", getattr(cls, "id", "")):
        yield f"{cls.__name__}: id {getattr(cls, 'id', None)!r} is not kebab-case"
    found = list(cls.sections())
    if found != list(SECTIONS):
        yield f"{cls.__name__}: docstring sections {found} != {list(SECTIONS)}"
    if not cls.citations:
        yield f"{cls.__name__}: no citation"
    for t in cls.thresholds:
        if not t.meaning:
            yield f"{cls.__name__}: threshold {t.name} has no meaning"
