"""Train DeepCluster (k-means pseudo-labels, re-clustered every "epoch") on scikit-learn's photos.

    python examples/zoo_deepcluster.py                 # tiny model, CPU, ~10 s
    python examples/zoo_deepcluster.py --inject frozen-backbone

Every --epoch-steps steps: features of the whole pool (eval mode, top layer and last ReLU
removed) → PCA-whitening → k-means (empty clusters re-seeded) → new pseudo-labels, fresh top
layer; batches are drawn uniformly over clusters.
"""

import argparse

import torch

from nndoctor.zoo import create_loss, create_model, deepcluster, model_config
from nndoctor.zoo.data import normalize, ssl_images

FAULTS = ("lr-x100", "softmax-before-loss", "frozen-backbone", "unnormalized-input", "no-zero-grad", "nan-log")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Train DeepCluster on unlabelled photo crops.")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--amp", action="store_true", help="mixed precision (bfloat16 on CPU, float16 + GradScaler on CUDA)")
    p.add_argument("--size", choices=("tiny", "full"), default="tiny")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--epoch-steps", type=int, default=15, help="steps between two re-clusterings")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--pool", type=int, default=128, help="unlabelled images to cluster (k is capped at pool/4)")
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

    side = 32 if args.size == "tiny" else 224
    pool = ssl_images(args.pool, side, seed=args.seed, source=args.data)
    # k-means needs several images per cluster: the paper's k = 10,000 wants ImageNet, not this pool
    clusters = min(model_config("deepcluster", args.size)["num_clusters"], args.pool // 4)
    model = create_model("deepcluster", size=args.size, num_clusters=clusters).to(device)
    criterion = create_loss("deepcluster")
    left_out = set()
    if args.inject == "frozen-backbone":  # the bug: the optimizer never gets the trunk, which keeps its random init
        left_out = {id(p) for p in model.trunk.parameters()}
    lr = args.lr * (100 if args.inject == "lr-x100" else 1)
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    scaler = torch.amp.GradScaler("cuda", enabled=args.amp and device.type == "cuda")

    pool = pool * 255 if args.inject == "unnormalized-input" else normalize(pool)
    pool = pool.to(device)
    for step in range(args.steps):
        if step % args.epoch_steps == 0:
            labels = deepcluster.cluster_features(model, pool).to(device)  # also re-initialises the top layer
            sizes = torch.bincount(labels, minlength=model.num_clusters)
            print(f"step {step:4d}  re-clustered: {int((sizes > 0).sum())}/{model.num_clusters} non-empty, largest {int(sizes.max())}")
            # The top layer is new, so the optimizer is too (momentum for old weights is meaningless).
            optimizer = torch.optim.SGD([p for p in model.parameters() if id(p) not in left_out], lr=lr, momentum=0.9, weight_decay=1e-5)
            model.train()
        pick = deepcluster.uniform_cluster_sample(labels.cpu(), args.batch_size).to(device)
        inputs, targets = pool[pick], labels[pick]

        if args.inject != "no-zero-grad":
            optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=args.amp):
            logits = model(inputs)
        logits = logits.float()
        if args.inject == "softmax-before-loss":
            logits = logits.softmax(dim=1)
        loss = criterion(logits, targets)
        if args.inject == "nan-log":
            loss = loss + 0.01 * torch.log(logits).mean()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

        if step % 10 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {loss.item():.4f}")


if __name__ == "__main__":
    main()
