"""Regression with ``nn.MSELoss(reduction='sum')``: the experiments must replay that loss
instance, not a default (mean) MSE."""
import torch
from torch import nn

torch.manual_seed(0)
X = torch.randn(64, 4)
y = X @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1
model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
criterion = nn.MSELoss(reduction="sum")
opt = torch.optim.SGD(model.parameters(), lr=2e-3)
for step in range(200):
    opt.zero_grad()
    loss = criterion(model(X), y)
    loss.backward()
    opt.step()
