"""A tiny character-level LSTM language model in the style of pytorch/examples'
word_language_model: the model returns (output, hidden), the script reshapes the
output before the loss, and updates weights by hand through p.data."""
import argparse

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float, default=2.0)
parser.add_argument("--steps", type=int, default=60)
parser.add_argument("--seq-first", action="store_true", help="(T, B) batches instead of (B, T)")
args = parser.parse_args()

torch.manual_seed(0)
text = "the quick brown fox jumps over the lazy dog " * 40
vocab = sorted(set(text))
data = torch.tensor([vocab.index(c) for c in text])


class LM(nn.Module):
    def __init__(self, ntoken, nhid=32):
        super().__init__()
        self.emb = nn.Embedding(ntoken, nhid)
        self.rnn = nn.LSTM(nhid, nhid, batch_first=not args.seq_first)
        self.dec = nn.Linear(nhid, ntoken)

    def forward(self, x):
        out, hidden = self.rnn(self.emb(x))
        return self.dec(out), hidden  # (B, T, ntoken) or (T, B, ntoken), and (h, c)


model = LM(len(vocab))
criterion = nn.CrossEntropyLoss()
bptt, batch = 16, 8
starts = torch.arange(0, len(data) - bptt - 1, bptt)
for step in range(args.steps):
    idx = starts[torch.randint(0, len(starts), (batch,))]
    dim = 1 if args.seq_first else 0
    x = torch.stack([data[i:i + bptt] for i in idx], dim)
    y = torch.stack([data[i + 1:i + 1 + bptt] for i in idx], dim)
    model.zero_grad()
    output, _ = model(x)
    loss = criterion(output.view(-1, len(vocab)), y.reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
    for p in model.parameters():
        p.data.add_(p.grad, alpha=-args.lr)
    if step % 20 == 0:
        print(f"step {step} loss {loss.item():.3f}")
