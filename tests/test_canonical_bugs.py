"""benchmarks/canonical_bugs.py runs the peer comparison's bugs as ordinary scripts through
`nndoctor check`. Two of its cases, end to end (the whole set takes minutes): a bug whose
report must lead with its root cause, and a healthy script that must raise nothing."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "canonical_bugs.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("canonical_bugs", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_set_is_the_peer_comparisons_fourteen_bugs_and_three_healthy_scripts():
    bench = load_benchmark()
    bugs = [c for c in bench.CASES if not c.healthy]
    assert len(bugs) == 14 and len([c for c in bench.CASES if c.healthy]) == 3
    for case in bench.CASES:  # every script is valid Python
        compile(case.script(), case.name, "exec")


def test_a_bug_leads_with_its_root_cause_and_a_healthy_script_stays_quiet(tmp_path, capsys):
    bench = load_benchmark()
    assert bench.main(["--only", "missing-zero-grad", "healthy-gradient-accumulation",
                       "--keep", str(tmp_path)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    by = {r["case"]: r for r in rows}
    assert by["missing-zero-grad"]["leads"] and by["missing-zero-grad"]["rc"] == 1, by
    assert by["healthy-gradient-accumulation"]["raised"] == [] and by["healthy-gradient-accumulation"]["rc"] == 0
    report = json.loads((tmp_path / "missing-zero-grad.json").read_text())
    assert report["findings"][0]["check"] == "grad-not-zeroed"
