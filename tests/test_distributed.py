"""Distributed runs: real 2-process gloo groups on CPU (loopback only), a Doctor on every
rank, and ``gather_reports`` merging them into one report on rank 0.

Each scenario starts two fresh Python processes running this file as a script (the
worker at the bottom), rendezvous through a file store in a temporary folder (no TCP
port to race for; gloo itself talks over the loopback interface), and writes each
rank's result as JSON there. Processes are joined with a timeout and killed on any
failure, so no test leaves a process behind.

The pure parts (merging findings, the four DDP checks on plain facts) are also tested
without processes, below the scenario tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

WORLD_SIZE = 2
TIMEOUT_S = 50


# --------------------------------------------------------------------------------------
# Launching a 2-process group
# --------------------------------------------------------------------------------------
def run_group(scenario: str, tmp_path: Path) -> list[dict[str, Any]]:
    """Start WORLD_SIZE workers for ``scenario``; return each rank's JSON result."""
    store = tmp_path / "store"
    env_base = {
        **os.environ,
        "WORLD_SIZE": str(WORLD_SIZE),
        "NNDOCTOR_STORE": str(store),
        "MASTER_ADDR": "127.0.0.1",
        "GLOO_SOCKET_IFNAME": "lo",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    procs: list[subprocess.Popen] = []
    logs = []
    try:
        for rank in range(WORLD_SIZE):
            log = open(tmp_path / f"rank{rank}.log", "w")
            logs.append(log)
            procs.append(subprocess.Popen(
                [sys.executable, __file__, "worker", scenario, str(tmp_path)],
                env={**env_base, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                stdout=log, stderr=subprocess.STDOUT,
            ))
        deadline = time.monotonic() + TIMEOUT_S
        for p in procs:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pytest.fail(f"scenario {scenario!r} did not finish in {TIMEOUT_S} s:\n{_logs(tmp_path)}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
        for log in logs:
            log.close()
    codes = [p.returncode for p in procs]
    assert codes == [0] * WORLD_SIZE, f"worker exit codes {codes}:\n{_logs(tmp_path)}"
    return [json.loads((tmp_path / f"result{r}.json").read_text()) for r in range(WORLD_SIZE)]


def _logs(tmp_path: Path) -> str:
    return "\n".join(f"--- rank {r}\n{(tmp_path / f'rank{r}.log').read_text()[-3000:]}"
                     for r in range(WORLD_SIZE) if (tmp_path / f"rank{r}.log").exists())


def ddp_findings(report: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for f in report["findings"]:
        if f["check"].startswith("ddp-"):
            out.setdefault(f["check"], []).append(f)
    return out


DDP_IDS = {"ddp-parameter-divergence", "ddp-same-batch-every-rank", "ddp-unused-parameters", "ddp-set-epoch-missing"}


def only_rank0_merges(results: list[dict[str, Any]]) -> dict[str, Any]:
    assert results[0]["merged"] is not None
    assert all(r["merged"] is None for r in results[1:])
    return results[0]["merged"]


# --------------------------------------------------------------------------------------
# Scenarios (real process groups)
# --------------------------------------------------------------------------------------
def test_healthy_ddp_run_has_no_ddp_finding(tmp_path):
    results = run_group("healthy", tmp_path)
    merged = only_rank0_merges(results)
    assert not ddp_findings(merged), ddp_findings(merged)
    assert not [f for f in merged["findings"] if f["severity"] == "error"], merged["findings"]
    # The DDP checks ran on the gathered facts (they skip on each rank alone).
    assert DDP_IDS <= set(merged["checks_run"]), merged["checks_skipped"]
    for r in results:
        skipped = {s["check"]: s["reason"] for s in r["local"]["checks_skipped"]}
        assert skipped["ddp-parameter-divergence"] == "not a distributed run"
    # Findings seen on both ranks are reported once, with the ranks listed.
    for f in merged["findings"]:
        assert f["evidence"]["ranks"] in ([0], [1], [0, 1])
    assert merged["model"]["class"] == "Net"  # the wrapped module is what is watched


def test_no_distributed_sampler_every_rank_sees_the_same_batch(tmp_path):
    merged = only_rank0_merges(run_group("no_sampler", tmp_path))
    found = ddp_findings(merged)
    assert set(found) == {"ddp-same-batch-every-rank"}, found
    f = found["ddp-same-batch-every-rank"][0]
    assert f["severity"] == "warning"
    assert f["evidence"]["share"] == 1.0 and f["evidence"]["compared_steps"] >= 2
    assert "no DistributedSampler was found" in f["message"]


def test_parameter_perturbed_on_rank1_diverges(tmp_path):
    merged = only_rank0_merges(run_group("diverge", tmp_path))
    found = ddp_findings(merged)
    assert set(found) == {"ddp-parameter-divergence"}, found
    f = found["ddp-parameter-divergence"][0]
    assert f["severity"] == "error"
    assert f["where"] == "fc1.weight"
    assert f["evidence"]["diverged_ranks"] == [1]
    assert f["message"].startswith("The parameters of rank 1 differ from rank 0's")
    assert f["evidence"]["ranks"] == [1]
    assert f["evidence"]["parameters"] == ["fc1.weight"]


def test_unused_layer_under_find_unused_parameters(tmp_path):
    merged = only_rank0_merges(run_group("unused", tmp_path))
    found = ddp_findings(merged)
    assert set(found) == {"ddp-unused-parameters"}, found
    f = found["ddp-unused-parameters"][0]
    assert f["severity"] == "warning"
    assert f["evidence"]["parameters"] == ["aux.bias", "aux.weight"]
    assert f["evidence"]["find_unused_parameters"] is True
    assert "find_unused_parameters=True" in f["message"]
    # The generic per-rank check fires on both ranks: merged into one finding.
    unused = [g for g in merged["findings"] if g["check"] == "unused-parameter"]
    assert len(unused) == 1 and unused[0]["evidence"]["ranks"] == [0, 1]
    assert not unused[0]["message"].startswith("on rank")


def test_set_epoch_never_called_across_two_epochs(tmp_path):
    merged = only_rank0_merges(run_group("no_set_epoch", tmp_path))
    found = ddp_findings(merged)
    assert set(found) == {"ddp-set-epoch-missing"}, found
    f = found["ddp-set-epoch-missing"][0]
    assert f["severity"] == "warning"
    assert f["evidence"]["iter_epochs"] == [0, 0] and f["evidence"]["set_epoch_calls"] == 0
    assert f["evidence"]["ranks"] == [0, 1]


def test_rank_specific_finding_names_the_rank(tmp_path):
    merged = only_rank0_merges(run_group("rank1_raw_inputs", tmp_path))
    norm = [f for f in merged["findings"] if f["check"] == "input-normalization"]
    assert len(norm) == 1, merged["findings"]
    assert norm[0]["message"].startswith("on rank 1: ")
    assert norm[0]["evidence"]["ranks"] == [1]
    assert not ddp_findings(merged)


# --------------------------------------------------------------------------------------
# Without a process group: no-ops
# --------------------------------------------------------------------------------------
def test_gather_reports_is_a_noop_without_a_process_group():
    import torch
    from torch import nn

    from nndoctor import Doctor
    from nndoctor._distributed import gather_reports, is_distributed

    assert not is_distributed()
    model = nn.Linear(4, 2)
    doctor = Doctor(model)
    with doctor.watch():
        model(torch.randn(3, 4)).sum().backward()
    report = doctor.report()
    assert gather_reports(report) is report
    assert gather_reports(doctor).to_dict() == report.to_dict()
    assert {s["check"]: s["reason"] for s in report.checks_skipped}["ddp-same-batch-every-rank"] == "not a distributed run"


def test_track_samplers_counts_epochs_and_restores_the_class():
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    from torch.utils.data.distributed import DistributedSampler

    from nndoctor._distributed import track_samplers

    original = DistributedSampler.__dict__["__iter__"], DistributedSampler.__dict__["set_epoch"]
    ds = TensorDataset(torch.arange(8.0))
    sampler = DistributedSampler(ds, num_replicas=2, rank=0, shuffle=True)
    loader = DataLoader(ds, batch_size=2, sampler=sampler)
    with track_samplers() as outer, track_samplers() as inner:
        for epoch in range(3):
            if epoch:
                sampler.set_epoch(epoch)
            list(loader)
    assert (DistributedSampler.__dict__["__iter__"], DistributedSampler.__dict__["set_epoch"]) == original
    for tracker in (outer, inner):
        (facts,) = tracker.facts()
        assert facts["iter_epochs"] == [0, 1, 2] and facts["set_epoch_calls"] == 2 and facts["shuffle"]
    list(loader)  # untracked after the block
    assert outer.facts()[0]["iter_epochs"] == [0, 1, 2]


# --------------------------------------------------------------------------------------
# Pure parts: merging, and each check on plain facts (no model, no processes)
# --------------------------------------------------------------------------------------
def _payload(rank: int, findings: list[dict[str, Any]], facts: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "rank": rank,
        "report": {"findings": findings, "checks_run": ["activation-std"],
                   "checks_skipped": [{"check": c, "reason": "not a distributed run"} for c in sorted(DDP_IDS)],
                   "steps_observed": 3, "model": {"class": "Net"}},
        "facts": {"rank": rank, "world_size": 2, **(facts or {})},
    }


def _finding(check: str, message: str, where: str | None = None) -> dict[str, Any]:
    return {"check": check, "severity": "warning", "title": "t", "message": message, "where": where,
            "step": 0, "evidence": {}, "fix": "f"}


def test_merge_reports_once_with_ranks_and_names_rank_specific_findings():
    from nndoctor._distributed import merge_rank_payloads

    merged = merge_rank_payloads([
        _payload(1, [_finding("dead-relu", "half dead", "relu1"), _finding("activation-std", "big on 1", "fc")]),
        _payload(0, [_finding("dead-relu", "half dead", "relu1")]),
    ])
    by_check = {f.check: f for f in merged.findings}
    assert len(merged.findings) == 2
    assert by_check["dead-relu"].evidence["ranks"] == [0, 1]
    assert by_check["dead-relu"].message == "half dead"
    assert by_check["activation-std"].message == "on rank 1: big on 1"
    assert by_check["activation-std"].evidence["ranks"] == [1]
    # No facts for the DDP checks: they skip once each, with a reason.
    assert {s["check"] for s in merged.checks_skipped} == DDP_IDS
    assert "activation-std" in merged.checks_run


def _obs(ranks: list[dict[str, Any]]):
    from nndoctor._observations import Observations

    return Observations(experiments={"distributed": {"world_size": len(ranks), "ranks": ranks}})


def _rank(rank: int, **facts: Any) -> dict[str, Any]:
    base = {"rank": rank, "world_size": 2, "ddp": True, "sharded": False, "find_unused_parameters": False,
            "static_graph": False, "params": {"w": [1.0, 4.0, 4]}, "inputs": [[0, 1.0, 2.0], [1, 3.0, 4.0]],
            "grads_never": [], "sampled_backward_steps": 2, "samplers": []}
    base.update(facts)
    return base


FACT_CASES = {
    # id: (check id, per-rank facts, expected finding count or "skip")
    "divergence-silent": ("ddp-parameter-divergence", [_rank(0), _rank(1)], 0),
    "divergence-below-tol": ("ddp-parameter-divergence", [_rank(0), _rank(1, params={"w": [1.0, 4.0 * (1 + 1e-7), 4]})], 0),
    "divergence-fires": ("ddp-parameter-divergence", [_rank(0), _rank(1, params={"w": [1.1, 4.0, 4]})], 1),
    "divergence-sharded-skips": ("ddp-parameter-divergence", [_rank(0, sharded=True), _rank(1, params={"w": [9.0, 9.0, 4]})], "skip"),
    "divergence-single-process-skips": ("ddp-parameter-divergence", [_rank(0)], "skip"),
    "same-batch-fires": ("ddp-same-batch-every-rank", [_rank(0), _rank(1)], 1),
    "same-batch-silent": ("ddp-same-batch-every-rank", [_rank(0), _rank(1, inputs=[[0, 1.5, 2.0], [1, 3.5, 4.0]])], 0),
    "same-batch-one-step-skips": ("ddp-same-batch-every-rank", [_rank(0, inputs=[[0, 1.0, 2.0]]), _rank(1, inputs=[[0, 1.0, 2.0]])], "skip"),
    "unused-fires": ("ddp-unused-parameters", [_rank(0, grads_never=["aux.weight"]), _rank(1, grads_never=["aux.weight"])], 1),
    "unused-used-on-one-rank": ("ddp-unused-parameters", [_rank(0, grads_never=["aux.weight"]), _rank(1)], 0),
    "unused-not-ddp-skips": ("ddp-unused-parameters", [_rank(0, ddp=False), _rank(1, ddp=False)], "skip"),
    "unused-flag-for-nothing-is-info": ("ddp-unused-parameters", [_rank(0, find_unused_parameters=True), _rank(1, find_unused_parameters=True)], 1),
    "set-epoch-fires": ("ddp-set-epoch-missing", [_rank(0, samplers=[{"shuffle": True, "tracked": True, "iter_epochs": [0, 0], "set_epoch_calls": 0}]), _rank(1)], 1),
    "set-epoch-silent": ("ddp-set-epoch-missing", [_rank(0, samplers=[{"shuffle": True, "tracked": True, "iter_epochs": [0, 1], "set_epoch_calls": 2}]), _rank(1)], 0),
    "set-epoch-one-epoch-skips": ("ddp-set-epoch-missing", [_rank(0, samplers=[{"shuffle": True, "tracked": True, "iter_epochs": [0], "set_epoch_calls": 0}]), _rank(1)], "skip"),
    "set-epoch-untracked-skips": ("ddp-set-epoch-missing", [_rank(0, samplers=[{"shuffle": True, "tracked": False, "iter_epochs": None, "epoch": 0}]), _rank(1)], "skip"),
    "set-epoch-no-shuffle-skips": ("ddp-set-epoch-missing", [_rank(0, samplers=[{"shuffle": False, "tracked": True, "iter_epochs": [0, 0], "set_epoch_calls": 0}]), _rank(1)], "skip"),
}


@pytest.mark.parametrize("case", list(FACT_CASES), ids=list(FACT_CASES))
def test_ddp_checks_on_plain_facts(case):
    from nndoctor.checks import REGISTRY

    check_id, ranks, expected = FACT_CASES[case]
    findings, reason = REGISTRY[check_id]().run(_obs(ranks))
    if expected == "skip":
        assert reason is not None and not findings
    else:
        assert reason is None, reason
        assert len(findings) == expected, findings


def test_ddp_checks_skip_without_facts():
    from nndoctor._observations import Observations
    from nndoctor.checks import REGISTRY

    for cid in DDP_IDS:
        assert REGISTRY[cid]().run(Observations()) == ([], "not a distributed run")


# --------------------------------------------------------------------------------------
# The worker (runs in each spawned process)
# --------------------------------------------------------------------------------------
def _worker(scenario: str, outdir: str) -> None:
    from datetime import timedelta

    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader, TensorDataset
    from torch.utils.data.distributed import DistributedSampler

    from nndoctor import Doctor
    from nndoctor._distributed import gather_reports, track_samplers

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", init_method=f"file://{os.environ['NNDOCTOR_STORE']}",
                            rank=rank, world_size=world, timeout=timedelta(seconds=40))
    torch.set_num_threads(1)

    class Net(nn.Module):
        def __init__(self, unused: bool) -> None:
            super().__init__()
            self.fc1, self.act, self.fc2 = nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)
            self.aux = nn.Linear(16, 3) if unused else None

        def forward(self, x):
            return self.fc2(self.act(self.fc1(x)))

    torch.manual_seed(rank)  # different inits: DDP broadcasts rank 0's weights
    model = Net(unused=scenario == "unused")
    ddp = DistributedDataParallel(model, find_unused_parameters=scenario == "unused")
    g = torch.Generator().manual_seed(1234)  # the same data set on every rank
    inputs = torch.randn(64, 8, generator=g)
    labels = (inputs @ torch.randn(8, 3, generator=g)).argmax(dim=1)  # learnable
    ds = TensorDataset(inputs, labels)
    sampler = None
    if scenario == "no_sampler":
        loader = DataLoader(ds, batch_size=8, shuffle=False)
    else:
        sampler = DistributedSampler(ds, shuffle=True, seed=0)
        loader = DataLoader(ds, batch_size=8, sampler=sampler)
    criterion = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(ddp.parameters(), lr=0.2)
    doctor = Doctor(ddp, optimizer=opt, loss_fn=criterion)
    with track_samplers() as samplers, doctor.watch():
        for epoch in range(2):
            if sampler is not None and scenario != "no_set_epoch":
                sampler.set_epoch(epoch)
            for i, (x, y) in enumerate(loader):
                if scenario == "rank1_raw_inputs" and rank == 1:
                    x = x * 300.0
                opt.zero_grad()
                loss = criterion(ddp(x), y)
                loss.backward()
                opt.step()
                if scenario == "diverge" and rank == 1 and epoch == 0 and i == 1:
                    with torch.no_grad():  # outside DDP's gradient sync: never undone
                        ddp.module.fc1.weight.add_(0.05)
    merged = gather_reports(doctor, samplers=samplers)
    result = {"rank": rank, "merged": merged.to_dict() if merged is not None else None,
              "local": doctor.report().to_dict()}
    Path(outdir, f"result{rank}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()
    # The result is written and the group is destroyed. Leave without interpreter
    # teardown: with find_unused_parameters=True, torch 2.13's DDP reducer/gloo threads
    # sometimes abort at exit ("terminate called without an active exception", SIGABRT)
    # after everything above has finished (seen in about 1 run in 4).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "worker":
    _worker(sys.argv[2], sys.argv[3])
