"""`nndoctor check` under torchrun: every rank runs the script, rank 0 reports once for
all ranks (real 2-process gloo group on loopback)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parent / "scripts" / "ddp_no_sampler.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_under_torchrun_reports_once_with_ddp_checks(tmp_path):
    out = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
           "-m", "nndoctor", "check", str(SCRIPT), "--steps", "6", "--no-experiments", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    ids = {f["check"] for f in report["findings"]}
    assert "ddp-same-batch-every-rank" in ids
    assert {"ddp-parameter-divergence", "ddp-unused-parameters"} <= set(report["checks_run"])
    assert proc.stdout.count("warning[ddp-same-batch-every-rank]") == 1  # rank 0 only
    assert "unused-parameter" not in ids  # the DDP wrapper is not a lost module
