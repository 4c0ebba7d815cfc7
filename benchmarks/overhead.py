"""Step-time overhead of nndoctor, measured against plain training in the same run.

    python benchmarks/overhead.py [--steps 200] [--rounds 5] [--device cpu|cuda] [--amp] [--compile]
                                  [--clock wall|cpu]

Modes, on a small CNN and an MLP:
  plain            the training loop alone
  watch            inside `Doctor(...).watch()` at default settings
  watch+logdir     `watch(logdir=tmp)`, TensorBoard events written as training goes
  watch-every-step `Doctor(..., sample_every=1)` (what `nndoctor check` uses)
  detect_anomaly   inside `torch.autograd.detect_anomaly()` (the built-in alternative)

--amp trains under torch.autocast (bf16 on CPU; fp16 + GradScaler on CUDA); --compile
wraps the model in torch.compile (watch() entered before the first compiled call, as the
README says). Rounds interleave the modes (plain, watch, ..., plain, watch, ...) so machine noise hits
them alike; the figure per mode is the median of its rounds' mean step times, and the
ratio is against `plain` of the same run. Targets: watch <= 1.03x plain on the CNN and
the MLP, watch(logdir=) <= 1.08x. `--clock cpu` times with the process's CPU time
(all its threads) instead of the wall clock: on a shared CPU machine it leaves out the
time other processes hold the core (CPU only; on CUDA the wall clock is the truth).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time

import torch
from torch import nn

from nndoctor import Doctor


def cnn():
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(64, 10),
    ), (32, 3, 32, 32)


def mlp():
    return nn.Sequential(
        nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
        nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10),
    ), (128, 256)


def run(model_fn, mode: str, steps: int, device: str, amp: bool = False, compile_: bool = False,
        clock=time.perf_counter) -> float:
    torch.manual_seed(0)
    model, shape = model_fn()
    model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    fwd = torch.compile(model) if compile_ else model
    dtype = torch.float16 if device == "cuda" else torch.bfloat16
    scaler = torch.amp.GradScaler(device) if amp and device == "cuda" else None
    crit = nn.CrossEntropyLoss()
    xs = torch.randn(8, *shape, device=device)
    ys = torch.randint(0, 10, (8, shape[0]), device=device)
    tmp = tempfile.TemporaryDirectory()
    if mode == "plain":
        ctx = contextlib.nullcontext()
    elif mode == "watch":
        ctx = Doctor(model, optimizer=opt, loss_fn=crit).watch()
    elif mode == "watch+logdir":
        ctx = Doctor(model, optimizer=opt, loss_fn=crit).watch(logdir=tmp.name)
    elif mode == "watch-every-step":
        ctx = Doctor(model, optimizer=opt, loss_fn=crit, sample_every=1).watch()
    elif mode == "detect_anomaly":
        ctx = torch.autograd.detect_anomaly(check_nan=True)
    else:
        raise ValueError(mode)

    def step(i):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=dtype, enabled=amp):
            out = fwd(xs[i % 8])
        loss = crit(out.float(), ys[i % 8])
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()

    with ctx:
        for i in range(5):  # warm-up, not timed (the first dense steps are sampled)
            step(i)
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = clock()
        for i in range(steps):
            step(i)
        if device == "cuda":
            torch.cuda.synchronize()
        elapsed = clock() - t0
    tmp.cleanup()
    return elapsed / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--models", default="cnn,mlp")
    ap.add_argument("--amp", action="store_true", help="autocast (bf16 on CPU, fp16 + GradScaler on CUDA)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall: time.perf_counter; cpu: time.process_time (CPU device only)")
    args = ap.parse_args()
    if args.clock == "cpu" and args.device != "cpu":
        ap.error("--clock cpu measures CPU time: use it with --device cpu")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    modes = ["plain", "watch", "watch+logdir", "watch-every-step", "detect_anomaly"]
    import warnings

    warnings.filterwarnings("ignore", message=".*Anomaly Detection.*")
    if args.compile:
        modes.remove("detect_anomaly")  # not supported under dynamo
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, "
          f"{args.steps} timed steps x {args.rounds} interleaved rounds"
          + (", autocast" if args.amp else "") + (", torch.compile" if args.compile else "")
          + f", {args.clock} clock")
    for name in args.models.split(","):
        model_fn = {"cnn": cnn, "mlp": mlp}[name]
        times = {m: [] for m in modes}
        for _ in range(args.rounds):
            for m in modes:
                times[m].append(run(model_fn, m, args.steps, args.device, args.amp, args.compile, clock))
        base = statistics.median(times["plain"])
        print(f"\n{name}")
        print(f"  {'mode':18s} {'ms/step':>9s} {'x plain':>8s}")
        for m in modes:
            t = statistics.median(times[m])
            print(f"  {m:18s} {t * 1e3:9.3f} {t / base:8.3f}")


if __name__ == "__main__":
    main()
