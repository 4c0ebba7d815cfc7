"""Train an Exemplar-CNN (surrogate classes from augmented seed patches) on scikit-learn's photos.

    python examples/zoo_exemplar.py                    # tiny model, CPU, ~10 s
    python examples/zoo_exemplar.py --inject softmax-before-loss

Seed patches are cut where the photos have strong gradients; each seed is a class, and randomly
transformed copies of it must be recognised as that seed. Chance level ln N.
"""

import argparse

import torch

from nndoctor.zoo import create_loss, create_model, exemplar
from nndoctor.zoo.data import normalize, ssl_images

FAULTS = ("lr-x100", "softmax-before-loss", "frozen-backbone", "unnormalized-input", "no-zero-grad", "nan-log")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Train an Exemplar-CNN on surrogate classes.")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--amp", action="store_true", help="mixed precision (bfloat16 on CPU, float16 + GradScaler on CUDA)")
    p.add_argument("--size", choices=("tiny", "full"), default="tiny")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=64)
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

    model = create_model("exemplar", size=args.size).to(device)
    criterion = create_loss("exemplar")
    params = list(model.parameters())
    if args.inject == "frozen-backbone":  # the bug: the optimizer gets the heads only; the trunk keeps its random init
        trunk = {id(p) for p in model.trunk.parameters()}
        params = [p for p in params if id(p) not in trunk]
    lr = args.lr * (100 if args.inject == "lr-x100" else 1)
    optimizer = torch.optim.Adam(params, lr=lr)
    scaler = torch.amp.GradScaler("cuda", enabled=args.amp and device.type == "cuda")
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16

    photos = ssl_images(8, 4 * model.patch_size, seed=args.seed, source=args.data)
    seeds = exemplar.sample_seeds(photos, model.num_classes, model.patch_size)  # (N, 3, 1.5p, 1.5p): one per class
    model.train()
    for step in range(args.steps):
        labels = torch.randint(model.num_classes, (args.batch_size,))
        inputs = exemplar.transform_seeds(seeds[labels], model.patch_size)  # a fresh random view of each seed
        inputs = inputs * 255 if args.inject == "unnormalized-input" else normalize(inputs)
        inputs, labels = inputs.to(device), labels.to(device)

        if args.inject != "no-zero-grad":
            optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=args.amp):
            logits = model(inputs)
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
            print(f"step {step:4d}  loss {loss.item():.4f}  surrogate-class accuracy {acc:.3f}")


if __name__ == "__main__":
    main()
