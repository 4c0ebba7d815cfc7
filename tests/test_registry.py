"""The registry is the one table of check ids: unique, complete, documented, and it
covers every id that CONTRACT §4 promises."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import nndoctor.checks as checks_pkg
from nndoctor.checks import REGISTRY, Check
from nndoctor.checks._base import SECTIONS, iter_sections_problems

CONTRACT_IDS = {
    "chance-level-loss", "overfit-tiny-batch", "random-input-loss", "activation-std", "nan-trace",
    "frozen-layer", "gradient-check", "lr-sweep", "loss-not-decreasing", "grad-not-zeroed", "dead-relu",
    "saturated-activation", "exploding-gradient", "vanishing-gradient", "update-ratio", "weight-init",
    "input-normalization", "label-distribution", "repeated-batch", "loss-input-format", "train-eval-mode",
    "unused-parameter",
}


def all_check_classes() -> set[type[Check]]:
    found = set()
    for info in pkgutil.iter_modules(checks_pkg.__path__):
        module = importlib.import_module(f"nndoctor.checks.{info.name}")
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, Check) and obj is not Check and obj.__module__ == module.__name__:
                found.add(obj)
    return found


def test_table_equals_the_set_of_check_classes():
    assert set(REGISTRY.values()) == all_check_classes()


def test_ids_unique_and_keyed_correctly():
    assert all(cid == cls.id for cid, cls in REGISTRY.items())
    assert len({cls.id for cls in REGISTRY.values()}) == len(REGISTRY)


def test_contract_ids_are_all_present():
    passive_contract = CONTRACT_IDS - {"overfit-tiny-batch", "random-input-loss", "gradient-check", "lr-sweep"}
    assert passive_contract <= set(REGISTRY)


def test_every_check_is_documented():
    problems = [p for cls in REGISTRY.values() for p in iter_sections_problems(cls)]
    assert not problems, "\n".join(problems)
    for cls in REGISTRY.values():
        assert cls.title and cls.family and cls.severity and cls.kind in ("passive", "experiment")
        assert list(cls.sections()) == list(SECTIONS)
        assert cls.default_fix(), f"{cls.id} has an empty 'How to fix'"


def test_thresholds_are_documented_and_overridable():
    for cls in REGISTRY.values():
        names = [t.name for t in cls.thresholds]
        assert len(names) == len(set(names))
        inst = cls()
        for t in cls.thresholds:
            assert t.meaning and getattr(inst, t.name) == t.default
        if cls.thresholds:
            t = cls.thresholds[0]
            assert getattr(cls(**{t.name: t.default * 2}), t.name) == t.default * 2


def test_needs_are_fields_of_observations():
    from nndoctor._doctor import build_checks

    build_checks(None)  # raises if a check needs a field no observer produces
