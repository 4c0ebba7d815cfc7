"""Training that happens only in ``torch.multiprocessing.spawn`` children."""
import torch
import torch.multiprocessing as mp
from torch import nn


def worker(rank):
    torch.manual_seed(rank)
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 4)).sum().backward()
        opt.step()


if __name__ == "__main__":
    mp.spawn(worker, nprocs=2)
