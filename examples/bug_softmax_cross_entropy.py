"""Bug: the model ends with Softmax, and its probabilities go into CrossEntropyLoss,
which applies log-softmax itself.

    python examples/bug_softmax_cross_entropy.py
    nndoctor check examples/bug_softmax_cross_entropy.py  # -> loss-input-format

The loss is squashed into a narrow range and the gradients nearly vanish: training
crawls. Fix: drop the final Softmax (CrossEntropyLoss wants raw logits).
"""

import torch
from torch import nn


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5))
        self.softmax = nn.Softmax(dim=1)  # BUG: CrossEntropyLoss already does this

    def forward(self, x):
        return self.softmax(self.body(x))


def main():
    torch.manual_seed(0)
    x = torch.randn(1024, 20)
    y = (x @ torch.randn(20, 5)).argmax(1)
    model = Classifier()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    criterion = nn.CrossEntropyLoss()
    for epoch in range(5):
        for i in range(0, 1024, 64):
            optimizer.zero_grad()
            loss = criterion(model(x[i:i + 64]), y[i:i + 64])
            loss.backward()
            optimizer.step()
        print(f"epoch {epoch}: loss {loss.item():.4f}")


if __name__ == "__main__":
    main()
