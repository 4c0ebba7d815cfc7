"""Train EfficientDet on the synthetic shapes detection set.

    python examples/zoo_efficientdet.py                # tiny model (128 px, 3 classes), CPU, ~10 s
    python examples/zoo_efficientdet.py --size full --device cuda --amp     # D0 at 512 px
    python examples/zoo_efficientdet.py --inject unnormalized-input

Loss: focal loss on the class logits + 50 × Huber on the box deltas of positive anchors.
"""

import argparse

import torch
from torch.utils.data import DataLoader

from nndoctor.zoo import create_loss, create_model
from nndoctor.zoo.data import ShapesDetection, collate_detection, normalize

FAULTS = ("lr-x100", "frozen-backbone", "unnormalized-input", "no-zero-grad", "nan-log")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Train EfficientDet on synthetic shapes.")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--amp", action="store_true", help="mixed precision (bfloat16 on CPU, float16 + GradScaler on CUDA)")
    p.add_argument("--size", choices=("tiny", "full"), default="tiny")
    p.add_argument("--phi", type=int, default=0, choices=range(8), help="compound coefficient for --size full (D0–D7)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--images", type=int, default=32, help="size of the synthetic training set")
    p.add_argument("--inject", choices=FAULTS, default=None, help="plant a known training bug")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for, but torch.cuda.is_available() is False")
    device = torch.device(args.device)

    name = f"efficientdet-d{args.phi}"
    model = create_model(name, size=args.size, **({"num_classes": 3} if args.size == "full" else {})).to(device)
    criterion = create_loss(name, model=model)
    params = list(model.parameters())
    if args.inject == "frozen-backbone":  # the bug: the optimizer gets the heads only; the backbone keeps its random init
        backbone = {id(p) for p in model.backbone.parameters()}
        params = [p for p in params if id(p) not in backbone]
    lr = args.lr * (100 if args.inject == "lr-x100" else 1)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=4e-5)
    scaler = torch.amp.GradScaler("cuda", enabled=args.amp and device.type == "cuda")
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16

    dataset = ShapesDetection(args.images, image_size=model.image_size, num_classes=min(model.num_classes, 8), seed=args.seed, size_range=(0.2, 0.7))
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, collate_fn=collate_detection)
    model.train()
    step = 0
    while step < args.steps:
        for images, targets in loader:
            images = images * 255 if args.inject == "unnormalized-input" else normalize(images)
            images, targets = images.to(device), targets.to(device)
            if args.inject != "no-zero-grad":
                optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=args.amp):
                class_outputs, box_outputs = model(images)
            parts = criterion.components((class_outputs, box_outputs), targets)
            loss = parts["class"] + criterion.box_weight * parts["box"]
            if args.inject == "nan-log":
                loss = loss + 0.01 * torch.log(box_outputs[0].float()).mean()
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)  # the official recipe clips at 10
            scaler.step(optimizer)
            scaler.update()
            if step % 10 == 0 or step == args.steps - 1:
                print(f"step {step:4d}  loss {loss.item():.4f}  class {parts['class'].item():.4f}  box {parts['box'].item():.4f}")
            step += 1
            if step >= args.steps:
                break


if __name__ == "__main__":
    main()
