"""Train YOLOv3 on the synthetic shapes detection set, then decode + NMS one image.

    python examples/zoo_yolov3.py                      # tiny model (96 px, 3 classes), CPU, ~10 s
    python examples/zoo_yolov3.py --size full --device cuda --amp
    python examples/zoo_yolov3.py --inject lr-x100

Targets are rows [image_index, class, cx, cy, w, h] with coordinates in [0, 1].
"""

import argparse

import torch
from torch.utils.data import DataLoader

from nndoctor.zoo import create_loss, create_model
from nndoctor.zoo.data import ShapesDetection, collate_detection
from nndoctor.zoo.yolov3 import non_max_suppression

FAULTS = ("lr-x100", "frozen-backbone", "unnormalized-input", "no-zero-grad", "nan-log")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Train YOLOv3 on synthetic shapes.")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--amp", action="store_true", help="mixed precision (bfloat16 on CPU, float16 + GradScaler on CUDA)")
    p.add_argument("--size", choices=("tiny", "full"), default="tiny")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--images", type=int, default=64, help="size of the synthetic training set")
    p.add_argument("--inject", choices=FAULTS, default=None, help="plant a known training bug")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for, but torch.cuda.is_available() is False")
    device = torch.device(args.device)

    model = create_model("yolov3", size=args.size).to(device)
    criterion = create_loss("yolov3", model=model)
    params = list(model.parameters())
    if args.inject == "frozen-backbone":  # the bug: the optimizer gets the heads only; the backbone keeps its random init
        backbone = {id(p) for p in model.backbone.parameters()}
        params = [p for p in params if id(p) not in backbone]
    lr = args.lr * (100 if args.inject == "lr-x100" else 1)
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=5e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=args.amp and device.type == "cuda")
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16

    dataset = ShapesDetection(args.images, image_size=model.image_size, num_classes=min(model.num_classes, 8), seed=args.seed)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, collate_fn=collate_detection)
    model.train()
    step = 0
    while step < args.steps:
        for images, targets in loader:  # images (B, 3, S, S) in [0, 1]; targets (N, 6)
            if args.inject == "unnormalized-input":
                images = images * 255
            images, targets = images.to(device), targets.to(device)
            if args.inject != "no-zero-grad":
                optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=args.amp):
                outputs = model(images)  # 3 raw maps, coarse → fine
            parts = criterion.components(outputs, targets)
            loss = parts["box"] + parts["objectness"] + parts["class"]
            if args.inject == "nan-log":
                loss = loss + 0.01 * torch.log(outputs[0].float()).mean()  # log of negative raw outputs
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if step % 10 == 0 or step == args.steps - 1:
                print(f"step {step:4d}  loss {loss.item():.3f}  " + "  ".join(f"{k} {v.item():.3f}" for k, v in parts.items()))
            step += 1
            if step >= args.steps:
                break

    model.eval()
    with torch.no_grad():
        image, truth = dataset[0]
        detections = non_max_suppression(model.decode(model(image[None].to(device))), conf_threshold=0.3)[0]
    print(f"image 0: {len(truth)} objects, {len(detections)} detections after NMS (x1, y1, x2, y2, score, class):")
    for row in detections[:5].tolist():
        print("   " + ", ".join(f"{v:.1f}" for v in row[:4]) + f"  score {row[4]:.2f}  class {int(row[5])}")


if __name__ == "__main__":
    main()
