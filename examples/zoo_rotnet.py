"""Train RotNet (predict 0/90/180/270° rotations) on crops of scikit-learn's sample photos.

    python examples/zoo_rotnet.py                      # tiny model, CPU, ~10 s
    python examples/zoo_rotnet.py --inject lr-x100     # plant a known bug for nndoctor to find

Chance level is ln 4 = 1.386; a healthy run goes below it within a few dozen steps.
"""

import argparse

import torch

from nndoctor.zoo import create_loss, create_model, rotnet
from nndoctor.zoo.data import normalize, ssl_images

FAULTS = ("lr-x100", "softmax-before-loss", "frozen-backbone", "unnormalized-input", "no-zero-grad", "nan-log")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Train RotNet on unlabelled photo crops.")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--amp", action="store_true", help="mixed precision (bfloat16 on CPU, float16 + GradScaler on CUDA)")
    p.add_argument("--size", choices=("tiny", "full"), default="tiny")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=8, help="images per step (each is shown in 4 rotations)")
    p.add_argument("--lr", type=float, default=0.05)
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

    model = create_model("rotnet", size=args.size).to(device)
    criterion = create_loss("rotnet")
    params = list(model.parameters())
    if args.inject == "frozen-backbone":  # the bug: the optimizer gets the head only; the trunk keeps its random init
        trunk = {id(p) for p in model.trunk.parameters()}
        params = [p for p in params if id(p) not in trunk]
    lr = args.lr * (100 if args.inject == "lr-x100" else 1)
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=args.amp and device.type == "cuda")
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16

    pool = ssl_images(256, model.image_size, seed=args.seed, source=args.data)  # (N, 3, S, S) in [0, 1]
    model.train()
    for step in range(args.steps):
        batch = pool[torch.randint(len(pool), (args.batch_size,))]
        inputs, labels = rotnet.rotate_batch(batch)  # (4B, 3, S, S), (4B,)
        inputs = inputs * 255 if args.inject == "unnormalized-input" else normalize(inputs)
        inputs, labels = inputs.to(device), labels.to(device)

        if args.inject != "no-zero-grad":
            optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=args.amp):
            logits = model(inputs)
        logits = logits.float()
        if args.inject == "softmax-before-loss":
            logits = logits.softmax(dim=1)  # CrossEntropyLoss already applies log-softmax
        loss = criterion(logits, labels)
        if args.inject == "nan-log":
            loss = loss + 0.01 * torch.log(logits).mean()  # log of negative logits
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

        if step % 10 == 0 or step == args.steps - 1:
            acc = (logits.argmax(dim=1) == labels).float().mean().item()
            print(f"step {step:4d}  loss {loss.item():.4f}  rotation accuracy {acc:.3f}")


if __name__ == "__main__":
    main()
