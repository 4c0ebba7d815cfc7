"""Training throughput (images/s) of the nndoctor.zoo workloads, plain and with a Doctor watching.

    python benchmarks/zoo_throughput.py                          # every workload, tiny, CPU
    python benchmarks/zoo_throughput.py --size full --device cuda --workloads yolov3 efficientdet-d0

The plain number is always measured. If ``from nndoctor import Doctor`` works, the same loop is
timed again inside ``with Doctor(model, optimizer=opt).watch():`` and the overhead is reported.
"Images" are the batch's source images (RotNet's 4 rotations of one image count as one).
"""

import argparse
import statistics
import time

import torch

from nndoctor.zoo import create_loss, create_model, list_models, sample_batch

DEFAULT_WORKLOADS = [n for n in list_models() if not n.startswith("efficientdet-d") and n != "yolov3-tiny-test"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workloads", nargs="*", default=DEFAULT_WORKLOADS, help=f"names from {', '.join(list_models())}")
    p.add_argument("--size", choices=("tiny", "full"), default="tiny")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=10, help="timed steps (after --warmup untimed ones)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps (>= the Doctor's 4 dense sampled steps)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved plain/doctor rounds; the median is reported")
    p.add_argument("--no-doctor", action="store_true", help="measure the plain loop only")
    return p.parse_args(argv)


def _to(x, device):
    if torch.is_tensor(x):
        return x.to(device)
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    return x


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_loop(model, loss_fn, optimizer, inputs, targets, steps, warmup, device):
    """Seconds per step of forward + loss + backward + optimizer step on a fixed batch."""
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(inputs), targets)
        loss.backward()
        optimizer.step()
    _sync(device)
    return (time.perf_counter() - start) / steps


def main(argv=None):
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for, but torch.cuda.is_available() is False")
    device = torch.device(args.device)
    Doctor = None
    if not args.no_doctor:
        try:
            from nndoctor import Doctor
        except Exception as exc:  # the rest of nndoctor may be absent or broken: plain numbers only
            print(f"(no Doctor: {type(exc).__name__}: {exc}; measuring the plain loop only)")

    print(f"{'workload':24s} {'params':>11s} {'plain img/s':>12s} {'doctor img/s':>13s} {'overhead':>9s}")
    for name in args.workloads:
        torch.manual_seed(0)
        model = create_model(name, size=args.size)
        inputs, targets = sample_batch(name, model, args.batch_size)
        model = model.to(device).train()
        loss_fn = create_loss(name, model=model).to(device)
        inputs, targets = _to(inputs, device), _to(targets, device)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        params = sum(p.numel() for p in model.parameters())

        # Plain and watched runs alternate (plain, doctor, plain, doctor, ...) so that machine
        # noise hits both alike; each figure is the median over the rounds.
        plains, watcheds, failure = [], [], None
        for _ in range(max(1, args.rounds)):
            plains.append(time_loop(model, loss_fn, optimizer, inputs, targets, args.steps, args.warmup, device))
            if Doctor is not None and failure is None:
                try:
                    with Doctor(model, optimizer=optimizer).watch():
                        watcheds.append(time_loop(model, loss_fn, optimizer, inputs, targets, args.steps,
                                                  args.warmup, device))
                except Exception as exc:
                    failure = f"  doctor failed: {type(exc).__name__}: {exc}"
        plain = statistics.median(plains)
        row = f"{name:24s} {params:11,d} {args.batch_size / plain:12.1f}"
        if failure:
            row += failure
        elif watcheds:
            watched = statistics.median(watcheds)
            row += f" {args.batch_size / watched:13.1f} {100 * (watched / plain - 1):8.1f}%"
        print(row, flush=True)


if __name__ == "__main__":
    main()
