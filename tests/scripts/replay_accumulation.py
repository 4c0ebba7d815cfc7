"""Gradient accumulation: four micro-batch backwards of ``loss / 4`` per optimizer step.
Prints one line per optimizer step with the backwards done so far."""
import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)
X = torch.randn(256, 10)
y = (X[:, 0] + X[:, 1] > 0).long()
model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))
opt = torch.optim.Adam(model.parameters(), lr=1e-2)
ACCUMULATE = 4
backwards = 0
for step in range(100):
    for micro in range(ACCUMULATE):
        idx = torch.randint(0, 256, (16,))
        loss = F.cross_entropy(model(X[idx]), y[idx]) / ACCUMULATE
        loss.backward()
        backwards += 1
    print(f"optimizer-step {step} after {backwards} backwards")
    opt.step()
    opt.zero_grad()
