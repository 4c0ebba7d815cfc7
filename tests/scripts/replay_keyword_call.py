"""A model called with keyword arguments only (``model(features=x, scale=2.0)``) and a
weighted ``CrossEntropyLoss``."""
import torch
from torch import nn

torch.manual_seed(0)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 3))

    def forward(self, *, features, scale=1.0):
        return self.body(features) * scale


X = torch.randn(128, 6)
y = X[:, :3].argmax(1)
model = Net()
criterion = nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 0.5]))
opt = torch.optim.Adam(model.parameters(), lr=1e-2)
for step in range(100):
    idx = torch.randint(0, 128, (32,))
    opt.zero_grad()
    loss = criterion(model(features=X[idx], scale=2.0), y[idx])
    loss.backward()
    opt.step()
