"""Bug: `optimizer.zero_grad()` is never called, so gradients pile up step after step.

    python examples/bug_missing_zero_grad.py
    nndoctor check examples/bug_missing_zero_grad.py      # -> grad-not-zeroed

Each `loss.backward()` adds to `.grad`; after k steps the update is the sum of k
gradients, and SGD with momentum blows up or oscillates.
"""

import torch
from torch import nn


def main():
    torch.manual_seed(0)
    x = torch.randn(512, 20)
    y = (x @ torch.randn(20, 4)).argmax(1)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    for step in range(200):
        idx = torch.randint(0, 512, (32,))
        loss = criterion(model(x[idx]), y[idx])
        loss.backward()          # BUG: no optimizer.zero_grad() before this
        optimizer.step()
        if step % 20 == 0:
            print(f"step {step}: loss {loss.item():.4f}")


if __name__ == "__main__":
    main()
