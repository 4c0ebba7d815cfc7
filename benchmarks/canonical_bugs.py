"""The 14 canonical training bugs of the peer comparison, run through `nndoctor check`.

    python benchmarks/canonical_bugs.py [--only NAME ...] [--steps 20] [--keep DIR]

Each case is an ordinary training script, written to a temporary folder from one template
(scikit-learn's digits, 8x8 gray images, 10 classes; a small MLP or CNN; a plain
zero_grad / forward / loss / backward / step loop) with one fault put in; three healthy
scripts (an MLP, a CNN with BatchNorm and dropout, gradient accumulation) are the
false-alarm control. Each is run as a user would run it, `nndoctor check SCRIPT --steps N
--json F` in a subprocess, and the JSON report is read back:

  named    the root cause is among the warning/error findings
  leads    the report's diagnosis (its first finding) is the root cause
  alarms   warning/error findings on a healthy script (should be none)

The figures are the peer comparison's: root cause named on N/14, led with on N/14, false
alarms on the 3 healthy scripts. Takes a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

TEMPLATE = '''\
import torch
from torch import nn
import torch.nn.functional as F
from sklearn.datasets import load_digits

torch.manual_seed(0)
digits = load_digits()
X = torch.tensor(digits.data, dtype=torch.float32)
y = torch.tensor(digits.target)
{data}
{extra}

class Net(nn.Module):
    def __init__(self):
        super().__init__()
{layers}

    def forward(self, x):
{forward}

model = Net()
{init}
opt = {optimizer}
loss_fn = {loss}
g = torch.Generator().manual_seed(1)
step = 0
for epoch in range(50):
    order = torch.randperm(len(X), generator=g)
    for i in range(0, len(X) - 63, 64):
        idx = order[i:i + 64]
{loop}
        step += 1
print("trained", step, "steps")
'''

STANDARDISE = "X = (X - X.mean(0)) / (X.std(0) + 1e-6)"
MLP_LAYERS = ("        self.fc1 = nn.Linear(64, 128)\n        self.fc2 = nn.Linear(128, 128)\n"
              "        self.fc3 = nn.Linear(128, 10)")
MLP_FORWARD = "        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))"
LOOP = ("        opt.zero_grad()\n        loss = loss_fn(model(X[idx]), y[idx])\n"
        "        loss.backward()\n        opt.step()")
BASE = dict(data=STANDARDISE, extra="", layers=MLP_LAYERS, forward=MLP_FORWARD, init="",
            optimizer="torch.optim.SGD(model.parameters(), lr=0.1)", loss="nn.CrossEntropyLoss()",
            loop=LOOP)

WRONG_BACKWARD = '''
class MyReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x < 0)  # the bug: the mask is inverted
'''
LOG_LOSS = '''
def loss_fn(logits, target):
    p = torch.softmax(logits * 200.0, dim=1)   # over-confident probabilities underflow to 0
    return -torch.log(p.gather(1, target[:, None])).mean()
'''


@dataclass
class Case:
    name: str
    roots: tuple[str, ...]          # the ids that count as naming the root cause
    slots: dict = field(default_factory=dict)
    healthy: bool = False

    def script(self) -> str:
        return TEMPLATE.format(**{**BASE, **self.slots})


CASES = [
    Case("softmax-into-cross-entropy", ("loss-input-format",),
         {"forward": "        return F.softmax(self.fc3(F.relu(self.fc2(F.relu(self.fc1(x))))), dim=1)"}),
    Case("lr-100x", ("update-ratio", "lr-sweep"),
         {"optimizer": "torch.optim.SGD(model.parameters(), lr=10.0)"}),
    Case("lr-1e-4x", ("update-ratio", "lr-sweep", "loss-not-decreasing"),
         {"optimizer": "torch.optim.SGD(model.parameters(), lr=1e-5)"}),
    Case("frozen-layer", ("frozen-layer",), {"init": "model.fc2.weight.requires_grad_(False)\n"
                                                    "model.fc2.bias.requires_grad_(False)"}),
    Case("layers-in-a-python-list", ("unused-parameter", "frozen-layer"),
         {"layers": "        self.fc1 = nn.Linear(64, 128)\n"
                    "        self.hidden = [nn.Linear(128, 128), nn.Linear(128, 128)]\n"
                    "        self.fc3 = nn.Linear(128, 10)",
          "forward": "        h = F.relu(self.fc1(x))\n        for layer in self.hidden:\n"
                     "            h = F.relu(layer(h))\n        return self.fc3(h)"}),
    Case("detach-in-forward", ("frozen-layer",),
         {"forward": "        h = F.relu(self.fc2(F.relu(self.fc1(x)))).detach()\n"
                     "        return self.fc3(h)"}),
    Case("labels-shuffled-separately", ("random-input-loss",),
         {"data": STANDARDISE + "\nX = X[torch.randperm(len(X))]\ny = y[torch.randperm(len(y))]"}),
    Case("inputs-0-255", ("input-normalization",), {"data": "X = X * 255.0 / 16.0"}),
    Case("all-zero-inputs", ("input-normalization",), {"data": "X = torch.zeros_like(X)"}),
    Case("std-1-init", ("weight-init",),
         {"init": "for m in model.modules():\n    if isinstance(m, nn.Linear):\n"
                  "        nn.init.normal_(m.weight, std=1.0)"}),
    Case("dead-relu-bias", ("dead-relu",),
         {"init": "with torch.no_grad():\n    model.fc1.bias.fill_(-10.0)"}),
    Case("log-of-zero", ("nan-trace",), {"extra": LOG_LOSS, "loss": "loss_fn"}),
    Case("wrong-custom-backward", ("gradient-check",),
         {"extra": WRONG_BACKWARD,
          "forward": "        return self.fc3(MyReLU.apply(self.fc2(F.relu(self.fc1(x)))))"}),
    Case("missing-zero-grad", ("grad-not-zeroed",),
         {"loop": LOOP.replace("        opt.zero_grad()\n", "")}),
    # healthy controls
    Case("healthy-mlp-adam", (), {"optimizer": "torch.optim.Adam(model.parameters(), lr=1e-3)"},
         healthy=True),
    Case("healthy-cnn-bn-dropout", (), {
        "layers": "        self.body = nn.Sequential(\n"
                  "            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),\n"
                  "            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),\n"
                  "            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Dropout(0.3), nn.Linear(128, 10))",
        "forward": "        return self.body(x.view(-1, 1, 8, 8))",
        "optimizer": "torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)"}, healthy=True),
    Case("healthy-gradient-accumulation", (), {
        "loop": "        loss = loss_fn(model(X[idx]), y[idx]) / 4\n        loss.backward()\n"
                "        if (step + 1) % 4 == 0:\n            opt.step()\n            opt.zero_grad()"},
         healthy=True),
]


def run_case(case: Case, folder: Path, steps: int) -> dict:
    script = folder / f"{case.name}.py"
    script.write_text(case.script())
    out = folder / f"{case.name}.json"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "nndoctor", "check", str(script), "--steps", str(steps),
                           "--json", str(out)], cwd=folder, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if not out.exists():
        return {"case": case.name, "rc": proc.returncode, "wall": wall, "error": proc.stderr[-800:]}
    report = json.loads(out.read_text())
    raised = [f["check"] for f in report["findings"] if f["severity"] in ("warning", "error")]
    cause = (report.get("diagnosis") or {}).get("cause")
    return {"case": case.name, "rc": proc.returncode, "wall": round(wall, 1), "raised": raised,
            "cause": cause, "named": bool(set(raised) & set(case.roots)),
            "leads": cause in case.roots, "healthy": case.healthy}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="run only these cases")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--keep", type=Path, help="write the scripts and reports here (kept)")
    args = parser.parse_args(argv)
    cases = [c for c in CASES if not args.only or c.name in args.only]
    folder = args.keep or Path(tempfile.mkdtemp(prefix="nndoctor-canonical-"))
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in cases:
        row = run_case(case, folder, args.steps)
        rows.append(row)
        print(json.dumps(row), flush=True)
    bugs = [r for r in rows if not r.get("healthy")]
    healthy = [r for r in rows if r.get("healthy")]
    print(f"\nroot cause named: {sum(bool(r.get('named')) for r in bugs)}/{len(bugs)}; "
          f"led with: {sum(bool(r.get('leads')) for r in bugs)}/{len(bugs)}; "
          f"false alarms on healthy: {sum(len(r.get('raised', [])) for r in healthy)} "
          f"(on {sum(bool(r.get('raised')) for r in healthy)}/{len(healthy)} scripts)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
