"""A model trained through ``torch.compile`` (backend from argv, default aot_eager: it
compiles in seconds on a CPU). Its state dict keys carry the ``_orig_mod.`` prefix."""
import sys

import torch
from torch import nn

torch.manual_seed(0)
backend = sys.argv[1] if len(sys.argv) > 1 else "aot_eager"
net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
model = torch.compile(net, backend=backend)
X = torch.randn(128, 4)
y = X[:, :3].argmax(1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for step in range(100):
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(X), y)
    loss.backward()
    opt.step()
