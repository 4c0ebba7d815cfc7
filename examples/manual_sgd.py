"""Plain SGD written by hand, at the top level of the file (no torch.optim, no main()).

    python examples/manual_sgd.py
    nndoctor check examples/manual_sgd.py     # each backward + hand update is one step

A small classifier of 2-D points (three interleaved spirals) with hand-written updates.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)
n_per_class, classes = 200, 3
t = torch.linspace(0.2, 1.0, n_per_class)
points, labels = [], []
for c in range(classes):
    angle = 4.0 * t + c * 2 * math.pi / classes + 0.2 * torch.randn(n_per_class)
    points.append(torch.stack([t * torch.cos(angle), t * torch.sin(angle)], 1))
    labels.append(torch.full((n_per_class,), c))
x, y = torch.cat(points) * 2, torch.cat(labels)

model = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, classes))
lr = 0.2

for step in range(200):
    idx = torch.randint(0, len(y), (64,))
    loss = F.cross_entropy(model(x[idx]), y[idx])
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= lr * p.grad
            p.grad = None
    if step % 50 == 0:
        print(f"step {step}: loss {loss.item():.4f}")
