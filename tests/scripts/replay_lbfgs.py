"""Full-batch LBFGS with a closure (the closure runs several forward/backward passes
inside one optimizer step). Prints one line per optimizer step."""
import torch
from torch import nn

torch.manual_seed(0)
X = torch.linspace(-2, 2, 64)[:, None]
y = torch.sin(2 * X)
model = nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 1))
criterion = nn.MSELoss()
opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=5)


def closure():
    opt.zero_grad()
    loss = criterion(model(X), y)
    loss.backward()
    return loss


for step in range(50):
    print(f"lbfgs-step {step}")
    opt.step(closure)
