"""A word-language-model-style LSTM: sequence-first inputs ``model(data, hidden)`` with
data (T, N) and hidden ((layers, N, H), (layers, N, H)), log-probabilities flattened to
(T*N, V) and targets flattened to (T*N,) by the script, ``nn.NLLLoss``."""
import torch
from torch import nn

torch.manual_seed(0)
V, H, T, N = 20, 32, 10, 8


class RNNModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Embedding(V, H)
        self.rnn = nn.LSTM(H, H, 2)
        self.decoder = nn.Linear(H, V)

    def forward(self, input, hidden):
        out, hidden = self.rnn(self.encoder(input), hidden)
        return torch.log_softmax(self.decoder(out).view(-1, V), dim=1), hidden

    def init_hidden(self, n):
        return (torch.zeros(2, n, H), torch.zeros(2, n, H))


stream = (torch.arange(4000) * 3) % V  # a learnable sequence
data = stream.view(-1, N)
model = RNNModel()
criterion = nn.NLLLoss()
opt = torch.optim.Adam(model.parameters(), lr=1e-2)
hidden = model.init_hidden(N)
for i in range(0, data.size(0) - 1 - T, T):
    x, targets = data[i:i + T], data[i + 1:i + 1 + T].reshape(-1)
    hidden = tuple(h.detach() for h in hidden)
    opt.zero_grad()
    output, hidden = model(x, hidden)
    loss = criterion(output, targets)
    loss.backward()
    opt.step()
