"""Bug: raw 0-255 pixel values go straight into the network.

    python examples/bug_unnormalized_input.py
    nndoctor check examples/bug_unnormalized_input.py     # -> input-normalization

Inputs with mean ~128 and std ~70 make the first layer's pre-activations huge; the
loss jumps around and the network learns slowly, if at all. Fix: scale to [0, 1] and
standardise (x - mean) / std.
"""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def make_images(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.randint(0, 256, (n, 1, 12, 12), generator=g).float()
    for c in range(4):  # a bright square in a class-specific corner
        r, col = divmod(c, 2)
        x[y == c, :, r * 6:r * 6 + 6, col * 6:col * 6 + 6] = 255.0
    return x, y  # BUG: values in 0..255, never normalised


def main():
    torch.manual_seed(0)
    x, y = make_images(512)
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(8 * 6 * 6, 4),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    criterion = nn.CrossEntropyLoss()
    for epoch in range(3):
        for xb, yb in loader:
            optimizer.zero_grad()
            loss = criterion(model(xb), yb)
            loss.backward()
            optimizer.step()
        print(f"epoch {epoch}: loss {loss.item():.4f}")


if __name__ == "__main__":
    main()
