"""Train a Jigsaw-puzzle network (CFN) on crops of scikit-learn's sample photos.

    python examples/zoo_jigsaw.py                       # tiny model, CPU, ~10 s
    python examples/zoo_jigsaw.py --inject frozen-backbone

The tiles of each crop are shuffled by one of P maximally-distant permutations; the network
predicts which one. Chance level is ln P (3.18 for the tiny P = 24, 4.61 for the paper's 100).
"""

import argparse

import torch

from nndoctor.zoo import create_loss, create_model, jigsaw
from nndoctor.zoo.data import ssl_images

FAULTS = ("lr-x100", "softmax-before-loss", "frozen-backbone", "unnormalized-input", "no-zero-grad", "nan-log")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Train a Jigsaw-puzzle network on unlabelled photo crops.")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--amp", action="store_true", help="mixed precision (bfloat16 on CPU, float16 + GradScaler on CUDA)")
    p.add_argument("--size", choices=("tiny", "full"), default="tiny")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=16)
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

    model = create_model("jigsaw", size=args.size).to(device)
    criterion = create_loss("jigsaw")
    permutations = jigsaw.select_permutations(model.num_permutations, seed=args.seed)  # (P, 9)
    params = list(model.parameters())
    if args.inject == "frozen-backbone":  # the bug: the optimizer gets the heads only; the trunk keeps its random init
        trunk = {id(p) for p in model.trunk.parameters()}
        params = [p for p in params if id(p) not in trunk]
    lr = args.lr * (100 if args.inject == "lr-x100" else 1)
    optimizer = torch.optim.Adam(params, lr=lr)
    scaler = torch.amp.GradScaler("cuda", enabled=args.amp and device.type == "cuda")
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16

    side = 3 * round(model.tile_size * 85 / 64)  # 3×3 cells, each ~25 % larger than a tile (the gap)
    pool = ssl_images(128, side, seed=args.seed, source=args.data)
    model.train()
    for step in range(args.steps):
        batch = pool[torch.randint(len(pool), (args.batch_size,))]
        if args.inject == "unnormalized-input":
            # skip the per-tile standardisation and feed 0..255 pixels
            tiles, labels = jigsaw.make_puzzles(batch * 255, permutations, model.tile_size, normalize_tiles=False)
        else:
            tiles, labels = jigsaw.make_puzzles(batch, permutations, model.tile_size)  # (B, 9, 3, t, t), (B,)
        tiles, labels = tiles.to(device), labels.to(device)

        if args.inject != "no-zero-grad":
            optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=args.amp):
            logits = model(tiles)
        logits = logits.float()
        if args.inject == "softmax-before-loss":
            logits = logits.softmax(dim=1)
        loss = criterion(logits, labels)
        if args.inject == "nan-log":
            loss = loss + 0.01 * torch.log(logits).mean()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

        if step % 10 == 0 or step == args.steps - 1:
            acc = (logits.argmax(dim=1) == labels).float().mean().item()
            print(f"step {step:4d}  loss {loss.item():.4f}  permutation accuracy {acc:.3f}")


if __name__ == "__main__":
    main()
