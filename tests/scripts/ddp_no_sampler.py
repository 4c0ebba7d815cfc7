import torch, torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, TensorDataset, DistributedSampler

dist.init_process_group("gloo")
torch.manual_seed(0)
model = DDP(nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3)))
g = torch.Generator().manual_seed(1)
x = torch.randn(256, 8, generator=g); y = (x @ torch.randn(8, 3, generator=g)).argmax(1)
ds = TensorDataset(x, y)
loader = DataLoader(ds, batch_size=16, shuffle=True)  # the bug: no DistributedSampler
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for epoch in range(3):
    for xb, yb in loader:
        opt.zero_grad()
        nn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()
dist.destroy_process_group()
