"""Bug: a stray `.detach()` in forward cuts the graph, so the encoder never learns.

    python examples/bug_frozen_detach.py
    nndoctor check examples/bug_frozen_detach.py          # -> frozen-layer (at encoder)

The encoder's parameters get no gradient at all; only the head trains. Fix: remove the
.detach() (use it only where you mean to stop gradients).
"""

import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.head = nn.Linear(64, 4)

    def forward(self, x):
        features = self.encoder(x).detach()  # BUG: no gradient reaches the encoder
        return self.head(features)


def main():
    torch.manual_seed(0)
    x = torch.randn(512, 20)
    y = (x @ torch.randn(20, 4)).argmax(1)
    model = Net()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss()
    for epoch in range(20):
        for i in range(0, 512, 64):
            optimizer.zero_grad()
            loss = criterion(model(x[i:i + 64]), y[i:i + 64])
            loss.backward()
            optimizer.step()
        if epoch % 5 == 0:
            print(f"epoch {epoch}: loss {loss.item():.4f}")


if __name__ == "__main__":
    main()
