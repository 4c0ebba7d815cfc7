"""Train one of the autoencoder-family pretext tasks on crops of scikit-learn's sample photos.

    python examples/zoo_autoencoder.py --task denoising     # tiny model, CPU, a few seconds
    python examples/zoo_autoencoder.py --task colorization --inject softmax-before-loss

Tasks: denoising (reconstruct the clean image from a masked one), context (inpaint the centre),
colorization (ab colour bins from L), split-brain (L→ab and ab→L).
"""

import argparse

import torch

from nndoctor.zoo import colorization, context_ae, create_loss, create_model, denoising_ae, split_brain
from nndoctor.zoo.data import ssl_images

TASKS = {"denoising": "denoising-ae", "context": "context-ae", "colorization": "colorization", "split-brain": "split-brain"}
FAULTS = ("lr-x100", "softmax-before-loss", "frozen-backbone", "unnormalized-input", "no-zero-grad", "nan-log")
CLASSIFICATION_TASKS = ("colorization", "split-brain")  # the only ones with a softmax to misplace


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Train an autoencoder-style pretext task.")
    p.add_argument("--task", choices=tuple(TASKS), default="denoising")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--amp", action="store_true", help="mixed precision (bfloat16 on CPU, float16 + GradScaler on CUDA)")
    p.add_argument("--size", choices=("tiny", "full"), default="tiny")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-4 * 5)
    p.add_argument("--data", choices=("photos", "synthetic"), default="photos")
    p.add_argument("--inject", choices=FAULTS, default=None, help="plant a known training bug")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.inject == "softmax-before-loss" and args.task not in CLASSIFICATION_TASKS:
        p.error(f"--inject softmax-before-loss needs a classification task ({', '.join(CLASSIFICATION_TASKS)}), not {args.task}")
    return args


def image_side(task, model, size):
    if task == "split-brain":
        return 32 if size == "tiny" else 180
    return model.image_size


def make_batch(task, model, images):
    """Inputs and targets for one step; see each workload module."""
    if task == "denoising":
        return denoising_ae.make_batch(images)  # (masked image, clean image) in [-1, 1]
    if task == "context":
        return context_ae.make_batch(images, overlap=model.overlap)  # (image with a hole, true centre)
    if task == "colorization":
        return colorization.make_batch(images)  # (L in [-1, 1], ab in Lab units)
    return split_brain.make_batch(images)  # (scaled Lab, raw Lab)


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for, but torch.cuda.is_available() is False")
    device = torch.device(args.device)
    name = TASKS[args.task]

    model = create_model(name, size=args.size).to(device)
    criterion = create_loss(name, model=model).to(device)
    params = list(model.parameters())
    if args.inject == "frozen-backbone":  # the bug: the encoder half / the conv trunk is left out of the optimizer
        frozen = model.blocks if args.task == "colorization" else model.l_to_ab if args.task == "split-brain" else model.encoder
        left_out = {id(p) for p in frozen.parameters()}
        params = [p for p in params if id(p) not in left_out]
    lr = args.lr * (100 if args.inject == "lr-x100" else 1)
    optimizer = torch.optim.Adam(params, lr=lr, betas=(0.5, 0.999))
    scaler = torch.amp.GradScaler("cuda", enabled=args.amp and device.type == "cuda")
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16

    pool = ssl_images(128, image_side(args.task, model, args.size), seed=args.seed, source=args.data)
    model.train()
    for step in range(args.steps):
        batch = pool[torch.randint(len(pool), (args.batch_size,))]
        inputs, targets = make_batch(args.task, model, batch)
        if args.inject == "unnormalized-input":  # raw 0..255 (or 0..100 for L) instead of [-1, 1]
            inputs = (inputs + 1) * 127.5 if args.task in ("denoising", "context") else (inputs + 1) * 50
        inputs, targets = inputs.to(device), targets.to(device)

        if args.inject != "no-zero-grad":
            optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=args.amp):
            outputs = model(inputs)
        if args.inject == "softmax-before-loss":  # the loss applies log-softmax itself
            outputs = outputs.softmax(dim=1) if torch.is_tensor(outputs) else tuple(o.softmax(dim=1) for o in outputs)
        loss = criterion(outputs, targets)
        if args.inject == "nan-log":
            first = outputs if torch.is_tensor(outputs) else outputs[0]
            loss = loss + 0.01 * torch.log(first.float()).mean()  # log of negative outputs
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

        if step % 10 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  {args.task} loss {loss.item():.4f}")


if __name__ == "__main__":
    main()
