"""Small training scripts for the runner and CLI tests, written to a temporary folder.
Each is an ordinary script a user could write (none imports nndoctor)."""

from __future__ import annotations

import textwrap
from pathlib import Path

TRAIN = """
import sys
import torch
from torch import nn

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
g = torch.Generator().manual_seed(1)
x_all = torch.randn(512, 4, generator=g)
y_all = (x_all @ torch.randn(4, 3, generator=g)).argmax(1)
for step in range({steps}):
    idx = torch.randint(0, 512, (32,))
    loss = nn.functional.cross_entropy(model(x_all[idx]), y_all[idx])
    opt.zero_grad()
    loss.backward()
    opt.step()
    print(f"step {{step}} loss {{loss.item():.6f}}")
    {extra}
"""

SCRIPTS = {
    "train": TRAIN.format(steps=40, extra="pass"),
    "raise_during": TRAIN.format(steps=40, extra="if step == 3: ratio = 1 / 0"),
    "exit_during": TRAIN.format(steps=40, extra="if step == 5: sys.exit(0)"),
    "swallow": TRAIN.format(steps=40, extra="pass").replace(
        "    loss.backward()\n", "    try:\n        loss.backward()\n    except Exception:\n        pass\n"),
    "raise_before": """
        import torch

        def load_data():
            raise FileNotFoundError("data/train.csv not found")

        load_data()
    """,
    "syntax_error": """
        import torch
        x = = 1
    """,
    "never_trains": """
        import torch
        from torch import nn
        model = nn.Linear(4, 2)
        with torch.no_grad():
            print(model(torch.randn(3, 4)).shape)
    """,
    "no_backward": """
        import torch
        from torch import nn
        model = nn.Linear(4, 2)
        for _ in range(3):
            out = model(torch.randn(3, 4))
    """,
    "no_torch": """
        print("hello")
    """,
    "sleepy": """
        import time
        time.sleep(30)
    """,
    "stdin": """
        import sys
        import torch
        from torch import nn
        line = sys.stdin.readline()
        assert line == "", line
        model = nn.Linear(4, 2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for step in range(20):
            loss = nn.functional.cross_entropy(model(torch.randn(8, 4)), torch.randint(0, 2, (8,)))
            opt.zero_grad(); loss.backward(); opt.step()
    """,
    "input_eof": """
        name = input("run name? ")
    """,
    "with_args": """
        import argparse
        import torch
        from torch import nn

        parser = argparse.ArgumentParser()
        parser.add_argument("--lr", type=float, required=True)
        parser.add_argument("--out", required=True)
        args = parser.parse_args()
        with open(args.out, "w") as f:
            f.write(f"{args.lr}")
        model = nn.Linear(4, 2)
        opt = torch.optim.SGD(model.parameters(), lr=args.lr)
        for step in range(20):
            loss = nn.functional.cross_entropy(model(torch.randn(8, 4)), torch.randint(0, 2, (8,)))
            opt.zero_grad(); loss.backward(); opt.step()
    """,
    "scaled_loss": TRAIN.format(steps=40, extra="pass").replace(
        "loss = nn.functional.cross_entropy(model(x_all[idx]), y_all[idx])",
        "loss = 0.5 * nn.functional.cross_entropy(model(x_all[idx]), y_all[idx])"),
    "custom_loss": TRAIN.format(steps=40, extra="pass").replace(
        "loss = nn.functional.cross_entropy(model(x_all[idx]), y_all[idx])",
        "loss = -torch.log_softmax(model(x_all[idx]), 1).gather(1, y_all[idx][:, None]).mean()"),
}


def write(folder: Path, name: str) -> Path:
    path = folder / f"{name}.py"
    text = SCRIPTS[name]
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path
