"""Linear evaluation: freeze a trunk up to convN and train a linear classifier on labelled digits.

    python examples/zoo_linear_eval.py --layer conv2   # RotNet trunk (random init), CPU, a few seconds
    python examples/zoo_linear_eval.py --pretrain-steps 50 --layer conv3

Optionally pre-trains the RotNet first (--pretrain-steps), then trains only a pooled linear layer
on scikit-learn's 1,797 labelled digits (chance: ln 10 = 2.303). The trunk stays in eval mode.
"""

import argparse

import torch

from nndoctor.zoo import create_model, rotnet
from nndoctor.zoo.data import load_digits_images, normalize, ssl_images
from nndoctor.zoo.linear_eval import LinearProbe

FAULTS = ("lr-x100", "softmax-before-loss", "unnormalized-input", "no-zero-grad", "nan-log")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Linear evaluation of a RotNet trunk on sklearn digits.")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--amp", action="store_true", help="mixed precision (bfloat16 on CPU, float16 + GradScaler on CUDA)")
    p.add_argument("--size", choices=("tiny", "full"), default="tiny")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--pretrain-steps", type=int, default=0, help="RotNet steps on photo crops before the probe")
    p.add_argument("--layer", default="conv2", help="freeze up to this stage (conv1 … conv4)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--inject", choices=FAULTS, default=None, help="plant a known training bug")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for, but torch.cuda.is_available() is False")
    device = torch.device(args.device)

    rot = create_model("rotnet", size=args.size).to(device)
    if args.pretrain_steps:
        opt = torch.optim.SGD(rot.parameters(), lr=0.05, momentum=0.9)
        crops = ssl_images(256, rot.image_size, seed=args.seed)
        for _ in range(args.pretrain_steps):
            x, y = rotnet.rotate_batch(crops[torch.randint(len(crops), (8,))])
            opt.zero_grad()
            torch.nn.functional.cross_entropy(rot(normalize(x).to(device)), y.to(device)).backward()
            opt.step()

    probe = LinearProbe(rot.trunk, args.layer, num_classes=10, target_dims=2048).to(device)
    criterion = torch.nn.CrossEntropyLoss()
    lr = args.lr * (100 if args.inject == "lr-x100" else 1)
    optimizer = torch.optim.SGD([p for p in probe.parameters() if p.requires_grad], lr=lr, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=args.amp and device.type == "cuda")
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16

    images, labels = load_digits_images(rot.image_size)  # (1797, 3, S, S) in [0, 1], (1797,)
    perm = torch.randperm(len(images))
    train, test = perm[:1500], perm[1500:]
    mean, std = images[train].mean(dim=(0, 2, 3)), images[train].std(dim=(0, 2, 3))  # training split only
    images = images * 255 if args.inject == "unnormalized-input" else normalize(images, mean.tolist(), std.tolist())
    probe.train()  # the trunk stays in eval mode (LinearProbe.train)
    for step in range(args.steps):
        pick = train[torch.randint(len(train), (args.batch_size,))]
        x, y = images[pick].to(device), labels[pick].to(device)
        if args.inject != "no-zero-grad":
            optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=args.amp):
            logits = probe(x)
        logits = logits.float()
        if args.inject == "softmax-before-loss":
            logits = logits.softmax(dim=1)
        loss = criterion(logits, y)
        if args.inject == "nan-log":
            loss = loss + 0.01 * torch.log(logits).mean()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if step % 20 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {loss.item():.4f}")

    probe.eval()
    with torch.no_grad():
        acc = (probe(images[test].to(device)).argmax(dim=1).cpu() == labels[test]).float().mean().item()
    print(f"linear probe on {args.layer}: test accuracy {acc:.3f} (chance 0.100)")


if __name__ == "__main__":
    main()
