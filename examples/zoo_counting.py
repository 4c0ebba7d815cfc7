"""Train the counting pretext task (Noroozi et al. 2017) on crops of scikit-learn's sample photos.

    python examples/zoo_counting.py                    # tiny model, CPU, a few seconds
    python examples/zoo_counting.py --inject nan-log

The counts of an image's 4 tiles must add up to the counts of the whole image down-sampled; a
contrastive term (margin 10) keeps a different image's counts different.
"""

import argparse

import torch

from nndoctor.zoo import counting, create_loss, create_model
from nndoctor.zoo.data import normalize, ssl_images

FAULTS = ("lr-x100", "frozen-backbone", "unnormalized-input", "no-zero-grad", "nan-log")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Train the counting pretext task.")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--amp", action="store_true", help="mixed precision (bfloat16 on CPU, float16 + GradScaler on CUDA)")
    p.add_argument("--size", choices=("tiny", "full"), default="tiny")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--data", choices=("photos", "synthetic"), default="photos")
    p.add_argument("--inject", choices=FAULTS, default=None, help="plant a known training bug")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for, but torch.cuda.is_available() is False")
    device = torch.device(args.device)

    model = create_model("counting", size=args.size).to(device)
    criterion = create_loss("counting")
    params = list(model.parameters())
    if args.inject == "frozen-backbone":  # the bug: the optimizer gets the heads only; the trunk keeps its random init
        trunk = {id(p) for p in model.trunk.parameters()}
        params = [p for p in params if id(p) not in trunk]
    lr = args.lr * (100 if args.inject == "lr-x100" else 1)
    optimizer = torch.optim.Adam(params, lr=lr)
    scaler = torch.amp.GradScaler("cuda", enabled=args.amp and device.type == "cuda")
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16

    pool = ssl_images(128, 2 * model.tile_size, seed=args.seed, source=args.data)
    model.train()
    for step in range(args.steps):
        batch = pool[torch.randint(len(pool), (args.batch_size,))]
        batch = batch * 255 if args.inject == "unnormalized-input" else normalize(batch)
        views = counting.counting_views(batch).to(device)  # (B, 6, 3, s, s)

        if args.inject != "no-zero-grad":
            optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=args.amp):
            counts = model(views)  # (B, 6, K), all >= 0
        loss = criterion(counts)
        if args.inject == "nan-log":
            loss = loss + 0.01 * torch.log(counts.float() - 1).mean()  # counts below 1 → log of negatives
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

        if step % 10 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {loss.item():.4f}  mean count {counts.float().mean().item():.3f}")


if __name__ == "__main__":
    main()
