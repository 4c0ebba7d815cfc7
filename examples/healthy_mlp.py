"""A healthy baseline: an MLP classifying 8x8 handwritten digits.

    python examples/healthy_mlp.py                  # ~3 s on a laptop CPU
    nndoctor check examples/healthy_mlp.py          # nndoctor finds nothing wrong
    nndoctor check examples/healthy_mlp.py -- --workers 2 --epochs 1

Uses scikit-learn's bundled digits (1,797 images, no download) when scikit-learn is
installed, otherwise a synthetic 10-class problem of the same shape.
"""

import argparse

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def load_data(seed):
    try:
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = torch.tensor(digits.data, dtype=torch.float32)
        y = torch.tensor(digits.target, dtype=torch.long)
    except ImportError:
        g = torch.Generator().manual_seed(seed)
        centers = torch.randn(10, 64, generator=g) * 2
        y = torch.randint(0, 10, (1797,), generator=g)
        x = centers[y] + torch.randn(1797, 64, generator=g)
    # standardise every pixel with the training statistics
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    n_train = int(0.8 * len(y))
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])


def main():
    parser = argparse.ArgumentParser(description="Train an MLP on the digits data set.")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    (x_train, y_train), (x_val, y_val) = load_data(args.seed)
    loader = DataLoader(TensorDataset(x_train, y_train), batch_size=args.batch_size, shuffle=True,
                        num_workers=args.workers)
    model = nn.Sequential(
        nn.Linear(64, args.hidden), nn.ReLU(),
        nn.Linear(args.hidden, args.hidden), nn.ReLU(),
        nn.Linear(args.hidden, 10),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    criterion = nn.CrossEntropyLoss()

    for epoch in range(args.epochs):
        model.train()
        total = 0.0
        for xb, yb in loader:
            optimizer.zero_grad()
            loss = criterion(model(xb), yb)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(yb)
        model.eval()
        with torch.no_grad():
            accuracy = (model(x_val).argmax(1) == y_val).float().mean().item()
        print(f"epoch {epoch + 1}: train loss {total / len(y_train):.4f}, val accuracy {accuracy:.3f}")


if __name__ == "__main__":
    main()
