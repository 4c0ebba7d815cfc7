"""Probe: are the labels paired with their inputs? A permutation test on held-out samples
(Zhang et al. 2017: a network memorises random labels as readily as real ones, so only
held-out samples can tell them apart; permuted labels are the control).

The pool is the checkup batch plus the (input, target) pairs the watch kept from the
batches the script really trained on (``nndoctor.observers.pairs``), without repeated
samples. A copy (dropout off, Adam) trains on one half; at a few points its outputs on
the other half are scored with the real labels and with ``n_permutations`` permutations
of them (one forward, then the loss only). The record (``PairingRun``) holds the curves
and the p-value of a max-statistic permutation test over those points; the verdict is
``nndoctor.checks.pairing``'s."""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from .._tree import map_tensors, tensors
from .._probe_records import PairingRun
from .context import ModelCall, ProbeContext, call, optimizer_step
from .isolation import ProbeSkip

__all__ = ["measure", "as_batch_format", "watched_pairs"]


def as_batch_format(args: Any, kwargs: Any, like: Any) -> Any:
    """A watched model call ``(args, kwargs)`` in the form of the checkup's inputs ``like``
    (a ModelCall, a dict, a tuple, or one tensor); None when it cannot be."""
    kwargs = kwargs or {}
    if isinstance(like, ModelCall):
        return ModelCall(tuple(args), dict(kwargs))
    if isinstance(like, dict):
        return dict(kwargs) if not args else None
    if isinstance(like, (tuple, list)):
        return tuple(args) if not kwargs else None
    if isinstance(like, torch.Tensor) and len(args) == 1 and not kwargs:
        return args[0]
    return None


def watched_pairs(pairs: Any, ctx: ProbeContext) -> list[tuple[Any, Any]]:
    """The watch's ``(args, kwargs, targets)`` as ``(inputs, targets)`` in the form of the
    checkup batch (those that cannot take that form are left out)."""
    out = []
    for item in pairs or ():
        try:
            args, kwargs, target = item
        except (TypeError, ValueError):
            continue
        inputs = as_batch_format(args, kwargs, ctx.inputs)
        if inputs is not None:
            out.append((inputs, target))
    return out


def _dims(obj: Any, n: int, given: "list[int | None] | None") -> list[int | None]:
    if given is not None:
        return list(given)
    out: list[int | None] = []
    for t in tensors(obj):
        if t.dim() >= 1 and t.shape[0] == n:
            out.append(0)
        elif t.dim() >= 2 and t.shape[1] == n:
            out.append(1)
        else:
            out.append(None)
    return out


def _select(obj: Any, dims: list[int | None], index: torch.Tensor) -> Any:
    it = iter(dims)

    def cut(t: torch.Tensor) -> torch.Tensor:
        d = next(it, None)
        if d is None or t.dim() <= d:
            return t
        return t.index_select(d, index.to(t.device))

    return map_tensors(obj, cut)


def _compatible(leaves: list[torch.Tensor], ref: list[torch.Tensor], dims: list[int | None]) -> int | None:
    """The number of samples in ``leaves`` when they match ``ref`` leaf by leaf (batch dim
    0 where ``ref``'s is, the same dtype and sample shape; a leaf with no batch dim the
    same shape), else None."""
    if len(leaves) != len(ref):
        return None
    n: int | None = None
    for t, r, d in zip(leaves, ref, dims):
        if t.dtype != r.dtype or t.dim() != r.dim():
            return None
        if d is None:
            if t.shape != r.shape:
                return None
            continue
        if t.shape[1:] != r.shape[1:] or (n is not None and t.shape[0] != n):
            return None
        n = int(t.shape[0])
    return n


def _pool(ctx: ProbeContext, pairs: Sequence[tuple[Any, Any]], max_samples: int) -> tuple[Any, Any, list, list, int, int]:
    """(inputs, targets, input dims, target dims, samples, samples from the watch): the
    checkup batch, extended along dim 0 by the compatible watched pairs."""
    n = ctx.batch_size
    in_dims = _dims(ctx.inputs, n, ctx.input_dims)
    t_dims = _dims(ctx.targets, n, ctx.target_dims)
    in_ref, t_ref = tensors(ctx.inputs), tensors(ctx.targets)
    extendable = (ctx.sliceable and all(d in (0, None) for d in in_dims + t_dims)
                  and any(d == 0 for d in in_dims) and any(d == 0 for d in t_dims))
    if not extendable or not pairs:
        return ctx.inputs, ctx.targets, in_dims, t_dims, n, 0
    in_chunks = [in_ref]
    t_chunks = [t_ref]
    total, watched = n, 0
    for inputs, targets in pairs:
        if total >= max_samples:
            break
        li = [t.to(r.device) for t, r in zip(tensors(inputs), in_ref)] if len(tensors(inputs)) == len(in_ref) else []
        lt = [t.to(r.device) for t, r in zip(tensors(targets), t_ref)] if len(tensors(targets)) == len(t_ref) else []
        k_in, k_t = _compatible(li, in_ref, in_dims), _compatible(lt, t_ref, t_dims)
        if k_in is None or k_in != k_t or k_in == 0:
            continue
        in_chunks.append(li)
        t_chunks.append(lt)
        total += k_in
        watched += k_in

    def joined(chunks: list[list[torch.Tensor]], dims: list[int | None], like: Any) -> Any:
        leaves = iter([torch.cat([c[i] for c in chunks]) if d == 0 else chunks[0][i] for i, d in enumerate(dims)])
        return map_tensors(like, lambda _t: next(leaves))

    return (joined(in_chunks, in_dims, ctx.inputs), joined(t_chunks, t_dims, ctx.targets),
            in_dims, t_dims, total, watched)


def _distinct(inputs: Any, dims: list[int | None], n: int, seed: int) -> list[int]:
    """Indices of the first occurrence of each distinct sample (by a random projection of
    its input tensors): batches drawn with replacement repeat samples, and a sample on
    both sides of the split would leak its label into the held-out half."""
    gen = torch.Generator().manual_seed(seed + 7)
    fp = None
    for t, d in zip(tensors(inputs), dims):
        if d is None:
            continue
        rows = t.detach().movedim(d, 0).reshape(n, -1).double()
        w = torch.randn(rows.shape[1], generator=gen, dtype=torch.float64).to(rows.device)
        part = rows @ w
        fp = part if fp is None else fp + part
    if fp is None:
        return list(range(n))
    seen: set[float] = set()
    keep = []
    for i, v in enumerate(fp.tolist()):
        key = round(v, 6) if math.isfinite(v) else float(i)
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return keep


def measure(ctx: ProbeContext, pairs: Sequence[tuple[Any, Any]] = (), *, max_samples: int = 512,
            min_samples: int = 16, steps: int = 300, eval_every: int = 20, batch_size: int = 64,
            n_permutations: int = 99, stop_fraction: float = 0.05, max_train: int = 64) -> PairingRun:
    if ctx.targets is None or not tensors(ctx.targets):
        raise ProbeSkip("the loss takes no targets apart from the model's inputs (the model computes its "
                        "own loss, or the task has no labels): there is no pairing to test")
    inputs, targets, in_dims, t_dims, n, watched = _pool(ctx, pairs, int(max_samples))
    keep = _distinct(inputs, in_dims, n, ctx.seed)
    gen = torch.Generator().manual_seed(ctx.seed + 3)
    order = torch.tensor(keep)[torch.randperm(len(keep), generator=gen)][: int(max_samples)]
    total = int(order.numel())
    watched = int((order >= n - watched).sum()) if watched else 0  # kept samples from the watch
    # Half the pool to train on, at most `max_train` (memorising more takes longer than the
    # verdict needs); the rest held out (more held-out samples: a sharper test).
    n_train = min(total // 2, int(max_train))
    n_hold = total - n_train
    if n_train < min_samples:
        raise ProbeSkip(f"only {total} distinct samples (the checkup batch and the watched batches): at least "
                        f"{2 * min_samples} are needed to hold out half of them")
    x_train, y_train = _select(inputs, in_dims, order[:n_train]), _select(targets, t_dims, order[:n_train])
    x_hold, y_hold = _select(inputs, in_dims, order[n_train:]), _select(targets, t_dims, order[n_train:])
    perms = [torch.randperm(n_hold, generator=gen) for _ in range(int(n_permutations))]
    y_perm = [_select(y_hold, t_dims, p) for p in perms]
    # How much a permutation changes the labels: near-constant labels (2% positives) give
    # the control nothing to differ by, whatever the pairing.
    changed = [float(torch.cat([(a != b).reshape(-1).double() for a, b in zip(tensors(y), tensors(y_hold))]).mean())
               for y in y_perm[:20]]

    prior = _prior_loss(ctx, y_train)
    torch.manual_seed(ctx.seed)
    clone = ctx.copy_model(dropout_off=True)
    opt = ctx.make_optimizer(clone, adam=True)
    record = PairingRun(n_train=n_train, n_holdout=n_hold, n_watched=watched, n_duplicates=n - len(keep),
                        steps=0, optimizer="Adam(lr=0.001)", n_permutations=len(perms),
                        changed_fraction=sum(changed) / len(changed) if changed else 0.0, prior_loss=prior)
    scores: list[list[float]] = []  # per eval point: [real, control 1, ..., control K]
    mb = max(1, min(int(batch_size), n_train))
    batch_order = torch.randperm(n_train, generator=gen)
    cursor = 0
    every = max(1, int(eval_every))
    for step in range(int(steps) + 1):
        if step % every == 0 or step == steps:
            with torch.no_grad():  # train-mode forward (dropout off): BatchNorm uses these samples' statistics
                out_t = call(clone, x_train)
                record.train_loss.append(float(ctx.loss(out_t, y_train)))
                record.train_accuracy.append(ctx.accuracy(out_t, y_train))
                out_h = call(clone, x_hold)
                row = [float(ctx.loss(out_h, y_hold))] + [float(ctx.loss(out_h, y)) for y in y_perm]
            record.eval_steps.append(step)
            scores.append(row)
            tl = record.train_loss
            if not math.isfinite(tl[-1]) or (tl[0] > 0 and tl[-1] <= stop_fraction * tl[0]):
                break  # memorised (or blown up): more steps tell nothing new
            if _evident(scores):
                break  # the real labels already beat every control by far: paired
        if step == steps:
            break
        if cursor + mb > n_train:
            batch_order, cursor = torch.randperm(n_train, generator=gen), 0
        idx = batch_order[cursor:cursor + mb]
        cursor += mb
        xb, yb = _select(x_train, in_dims, idx), _select(y_train, t_dims, idx)
        opt.zero_grad(set_to_none=True)
        loss = ctx.loss(call(clone, xb), yb)
        if not torch.isfinite(loss.detach()):
            break
        loss.backward()
        optimizer_step(ctx, clone, opt, xb, yb, loss)
    del clone, opt
    record.steps = record.eval_steps[-1] if record.eval_steps else 0
    _summarise(record, scores)
    return record


def _prior_loss(ctx: ProbeContext, targets: Any) -> float | None:
    """The loss of the best input-independent prediction on ``targets``, where it is known:
    the entropy of integer class labels (cross-entropy, NLL) or of 0/1 targets (BCE)."""
    if not ctx.classification or not isinstance(targets, torch.Tensor) or targets.numel() == 0:
        return None
    t = targets.detach()
    if not t.is_floating_point():
        t = t.reshape(-1)
        if ctx.ignore_index is not None:
            t = t[t != ctx.ignore_index]
        if t.numel() == 0 or int(t.min()) < 0:
            return None
        p = torch.bincount(t).double()
        p = p[p > 0] / p.sum()
        return float(-(p * p.log()).sum())
    if not bool(((t == 0) | (t == 1)).all()):
        return None
    q = t.double().reshape(t.shape[0], -1).mean(0).clamp(1e-12, 1 - 1e-12)
    return float((-(q * q.log() + (1 - q) * (1 - q).log())).mean())


def _evident(scores: list[list[float]], margin: float = 5.0) -> bool:
    """True when, at the latest point, the real labels' held-out loss lies ``margin``
    control stds below the controls' mean and above every control's best so far: the
    permutation test's p-value is then already its minimum, and stays there."""
    table = torch.tensor(scores, dtype=torch.float64)
    if table.shape[0] < 2 or table.shape[1] < 3 or not bool(torch.isfinite(table).all()):
        return False
    controls = table[:, 1:]
    z = (controls.mean(1, keepdim=True) - table) / controls.std(1, keepdim=True).clamp_min(1e-12)
    return bool(z[-1, 0] >= margin and z[-1, 0] > z[:, 1:].max())


def _summarise(record: PairingRun, scores: list[list[float]]) -> None:
    """Curves, and the p-value of the max-statistic permutation test: per eval point the
    controls' mean and std standardise every column's gain; each column's statistic is its
    largest standardised gain; the real labels' rank among the controls is the p-value."""
    if not scores:
        return
    table = torch.tensor(scores, dtype=torch.float64)  # (points, 1 + K)
    controls = table[:, 1:]
    mean = controls.mean(1)
    std = controls.std(1) if controls.shape[1] > 1 else torch.zeros_like(mean)
    record.holdout_real = table[:, 0].tolist()
    record.holdout_permuted = mean.tolist()
    record.holdout_permuted_std = std.tolist()
    finite = torch.isfinite(table).all(1)
    if not bool(finite.any()) or controls.shape[1] == 0:
        return
    t = table[finite]
    m, s = mean[finite], std[finite].clamp_min(1e-12)
    z = (m[:, None] - t) / s[:, None]   # positive: lower loss than the controls' mean
    best = z.max(0).values              # (1 + K,)
    record.p_value = float((1 + (best[1:] >= best[0]).sum()) / (1 + controls.shape[1]))
    points = [s for s, ok in zip(record.eval_steps, finite.tolist()) if ok]
    record.best_step = points[int(z[:, 0].argmax())]
