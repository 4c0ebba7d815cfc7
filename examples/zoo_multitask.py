"""Train the multi-task self-supervised network (Doersch & Zisserman 2017) on scikit-learn's photos.

    python examples/zoo_multitask.py                   # tiny model, CPU, ~10 s
    python examples/zoo_multitask.py --inject lr-x100

One shared ResNet-v2 trunk, three heads: relative patch position, colorization, exemplar (triplet
form); the loss is their sum.
"""

import argparse

import torch

from nndoctor.zoo import create_loss, create_model, multitask
from nndoctor.zoo.data import ssl_images

FAULTS = ("lr-x100", "softmax-before-loss", "frozen-backbone", "unnormalized-input", "no-zero-grad", "nan-log")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Train the multi-task self-supervised network.")
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

    model = create_model("multitask", size=args.size).to(device)
    criterion = create_loss("multitask").to(device)
    params = list(model.parameters())
    if args.inject == "frozen-backbone":  # the bug: the optimizer gets the heads only; the trunk keeps its random init
        trunk = {id(p) for p in model.trunk.parameters()}
        params = [p for p in params if id(p) not in trunk]
    lr = args.lr * (100 if args.inject == "lr-x100" else 1)
    optimizer = torch.optim.Adam(params, lr=lr)
    scaler = torch.amp.GradScaler("cuda", enabled=args.amp and device.type == "cuda")
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16

    from nndoctor.zoo.relative_patch import grid_extent

    side = grid_extent(model.patch_size, model.gap, model.jitter) + 4
    pool = ssl_images(128, side, seed=args.seed, source=args.data)
    model.train()
    for step in range(args.steps):
        batch = pool[torch.randint(len(pool), (args.batch_size,))]
        inputs, targets = multitask.make_batch(batch, model.patch_size, model.gap, model.jitter)
        if args.inject == "unnormalized-input":
            inputs = {k: (v + 1) * 127.5 if k != "relative_position" else v * 60 + 128 for k, v in inputs.items()}
        inputs = {k: v.to(device) for k, v in inputs.items()}
        targets = {k: v.to(device) for k, v in targets.items()}

        if args.inject != "no-zero-grad":
            optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=args.amp):
            outputs = model(inputs)
        if args.inject == "softmax-before-loss":
            outputs["relative_position"] = outputs["relative_position"].softmax(dim=1)
        terms = criterion.terms(outputs, targets)
        loss = sum(criterion.weights[k] * v for k, v in terms.items())
        if args.inject == "nan-log":
            loss = loss + 0.01 * torch.log(outputs["relative_position"].float()).mean()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

        if step % 10 == 0 or step == args.steps - 1:
            parts = "  ".join(f"{k} {v.item():.3f}" for k, v in terms.items())
            print(f"step {step:4d}  loss {loss.item():.4f}  ({parts})")


if __name__ == "__main__":
    main()
