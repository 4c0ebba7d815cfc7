"""A block that stores its MLP as a lambda (as minGPT's ``Block.mlpf`` does): a plain
``copy.deepcopy`` of it still calls the original block's layers. With ``--unfixable`` the
lambdas sit in a list, where nndoctor cannot re-bind them: it must refuse to experiment."""
import sys

import torch
from torch import nn

torch.manual_seed(0)


class Block(nn.Module):
    def __init__(self, unfixable: bool) -> None:
        super().__init__()
        self.mlp = nn.ModuleDict(dict(c_fc=nn.Linear(8, 32), c_proj=nn.Linear(32, 8)))
        m = self.mlp
        fn = lambda x: m.c_proj(torch.relu(m.c_fc(x)))  # noqa: E731
        if unfixable:
            self.fns = [fn]
        else:
            self.mlpf = fn
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        f = self.fns[0] if hasattr(self, "fns") else self.mlpf
        return self.head(x + f(x))


model = Block("--unfixable" in sys.argv)
X = torch.randn(64, 8)
y = (X[:, 0] > 0).long()
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for step in range(100):
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(X), y)
    loss.backward()
    opt.step()
