"""How long the checkup experiments take (CPU).

    python benchmarks/checkup.py            # all of it (about a minute on 2 cores)
    python benchmarks/checkup.py --quick    # no full gradcheck

1. The whole default checkup on a ~1M-parameter CNN with a 32x3x32x32 batch, and each
   experiment alone.
2. The whole-model directional gradient check (float64, 1 backward + 2 forwards per
   direction) on MLPs of about 10k, 100k and 1M parameters: its time stays flat in the
   parameter count, where `torch.autograd.gradcheck` over all parameters grows linearly
   (2 forwards per parameter); the full gradcheck is timed at 10k for comparison.
Times are medians of --repeats runs (wall clock, after one warm-up run).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nndoctor._experiments import DEFAULT_OPTIONS, EXPERIMENT_IDS, run_checkup  # noqa: E402
from nndoctor.probes.context import ProbeContext  # noqa: E402
from nndoctor.probes.gradcheck import _model_directional, _Settings  # noqa: E402
from nndoctor.checks.experiments import GradientCheck  # noqa: E402


def cnn_1m() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(128 * 4 * 4, 448), nn.ReLU(), nn.Linear(448, 10),
    )


def mlp(hidden: int) -> nn.Module:
    # 32 -> h -> h -> 10, tanh: about h^2 + 44h parameters
    return nn.Sequential(nn.Linear(32, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 10))


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="skip the full gradcheck at 10k")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    torch.manual_seed(0)
    model = cnn_1m()
    n = sum(p.numel() for p in model.parameters())
    x, y = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    total = timed(lambda: run_checkup(model, (x, y), optimizer=opt), args.repeats)
    print(f"\n1. checkup, CNN {n:,} parameters, batch 32x3x32x32: {total:.2f} s (median of {args.repeats})")
    for check_id in EXPERIMENT_IDS:
        t = timed(lambda: run_checkup(model, (x, y), optimizer=opt, select=[check_id]), 1)
        print(f"   {check_id:<22} {t:6.2f} s")

    print("\n2. whole-model directional gradient check (float64, 5 directions, batch 2)")
    print(f"   {'parameters':>12} {'directional':>12} {'1 forward':>10}")
    check = GradientCheck()
    for hidden in (80, 290, 980):
        torch.manual_seed(0)
        net = mlp(hidden)
        params = sum(p.numel() for p in net.parameters())
        xb, yb = torch.randn(8, 32), torch.randint(0, 10, (8,))
        ctx = ProbeContext(net, (xb, yb), None, nn.CrossEntropyLoss())
        inputs, targets = ctx.take(0, 2)
        settings = _Settings(directions=int(DEFAULT_OPTIONS["gradcheck_directions"]),
                             eps=float(DEFAULT_OPTIONS["gradcheck_eps"]), max_tensors=200,
                             localize_above=float(check.max_relative_error))
        t = timed(lambda: _model_directional(ctx, inputs, targets, settings), args.repeats)
        net64 = net.double()
        fwd = timed(lambda: net64(xb[:2].double()), args.repeats)
        print(f"   {params:>12,} {t * 1000:>10.1f} ms {fwd * 1000:>8.2f} ms")
        if hidden == 80 and not args.quick:
            names = [k for k, _ in net64.named_parameters()]
            theta = tuple(p.detach().clone().requires_grad_(True) for p in net64.parameters())
            xs, ys = xb[:2].double(), yb[:2]

            def loss_of(*ps):
                out = torch.func.functional_call(net64, dict(zip(names, ps)), (xs,))
                return nn.functional.cross_entropy(out, ys)

            start = time.perf_counter()
            ok = torch.autograd.gradcheck(loss_of, theta, check_batched_grad=False)
            full = time.perf_counter() - start
            print(f"   {'':>12} full torch.autograd.gradcheck at {params:,} parameters: {full:.2f} s (passed={ok})")


if __name__ == "__main__":
    main()
