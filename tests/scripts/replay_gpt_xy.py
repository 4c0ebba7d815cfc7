"""A GPT-like language model called as ``logits, loss = model(X, Y)``: the loss is computed
inside ``forward`` with ``F.cross_entropy(..., ignore_index=-1)`` and the first targets of
each row are masked with -1 (as nanoGPT/makemore do). The next token is a fixed function of
the current one, so the model can learn it."""
import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)
V, T, B = 12, 8, 8


class TinyGPT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tok = nn.Embedding(V, 32)
        self.pos = nn.Embedding(T, 32)
        self.head = nn.Linear(32, V)

    def forward(self, idx, targets=None):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        logits = self.head(torch.tanh(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, V), targets.view(-1), ignore_index=-1)
        return logits, loss


def batch():
    start = torch.randint(0, V, (B, 1))
    seq = (start + torch.arange(T + 1)) % V
    x, y = seq[:, :-1], seq[:, 1:].clone()
    y[:, :2] = -1  # no loss on the first positions
    return x, y


model = TinyGPT()
opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
for step in range(200):
    X, Y = batch()
    logits, loss = model(X, Y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
