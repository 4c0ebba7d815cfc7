"""Bug: a hand-written cross-entropy takes log(softmax), and log(0) = -inf.

    python examples/bug_nan_log.py
    nndoctor check examples/bug_nan_log.py                # -> nan-trace

With a high learning rate the logits grow, softmax underflows to exactly 0 for some
class, log(0) is -inf, and 0 * -inf is NaN: the loss and then every weight become NaN.
Fix: use F.cross_entropy / F.log_softmax (computed stably), or clamp before the log.
"""

import torch
from torch import nn


def my_cross_entropy(logits, labels):
    probs = torch.softmax(logits, dim=1)
    one_hot = nn.functional.one_hot(labels, probs.shape[1]).float()
    return -(one_hot * torch.log(probs)).sum(1).mean()  # BUG: log(0) = -inf -> NaN


def main():
    torch.manual_seed(0)
    x = torch.randn(1024, 10) * 3
    y = (x[:, 0] > 0).long()
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=50.0)  # large steps -> saturated softmax
    for step in range(100):
        idx = torch.randint(0, 1024, (64,))
        optimizer.zero_grad()
        loss = my_cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        optimizer.step()
        if step % 10 == 0:
            print(f"step {step}: loss {loss.item():.4f}")


if __name__ == "__main__":
    main()
