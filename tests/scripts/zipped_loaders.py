"""Digits classified by a small MLP, fed by two DataLoaders zipped: inputs and labels are
shuffled by two separate samplers, so the pairs are lost (the bug). ``--paired`` uses one
loader of (input, label) pairs: the healthy twin."""
import sys

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
digits = load_digits()
x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
y = torch.tensor(digits.target)
model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
opt = torch.optim.SGD(model.parameters(), lr=0.05)
loss_fn = nn.CrossEntropyLoss()
if "--paired" in sys.argv:
    batches = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
else:
    batches = zip(DataLoader(x, batch_size=32, shuffle=True), DataLoader(y, batch_size=32, shuffle=True))
for epoch in range(3):
    for xb, yb in batches:
        opt.zero_grad()
        loss = loss_fn(model(xb), yb)
        loss.backward()
        opt.step()
    if not isinstance(batches, DataLoader):
        batches = zip(DataLoader(x, batch_size=32, shuffle=True), DataLoader(y, batch_size=32, shuffle=True))
