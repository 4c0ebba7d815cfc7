"""Derivations from plain records (no torch): what the observations mean once the
numbers reached the host. Run by the recorder when a watch finishes; pure functions of
``Observations``, so each is tested without a model."""

from __future__ import annotations

import math

from ._observations import NonFiniteEvent, Observations

__all__ = ["find_nonfinite", "infer_stale_gradients", "params_changed", "observer_skip_reason", "derive_all"]


def derive_all(obs: Observations) -> None:
    """Fill in the derived fields of ``obs`` (stale gradients, non-finite events, which
    parameters changed)."""
    infer_stale_gradients(obs)
    obs.nonfinite = find_nonfinite(obs)
    obs.params_changed = params_changed(obs)


def infer_stale_gradients(obs: Observations) -> None:
    """Stale gradients under hand-written ``p.data`` updates (which bump no version
    counter): the weights changed between two consecutive steps' backwards while
    gradients were already there. Sets ``stale_grad_norm`` and counts the update."""
    by_step = {r.step: r for r in obs.steps}
    for rec in obs.steps:
        prev = by_step.get(rec.step - 1)
        if (rec.stale_grad_norm is None and rec.weight_fingerprint is not None and prev is not None
                and prev.weight_fingerprint is not None and rec.weight_fingerprint != prev.weight_fingerprint):
            rec.stale_grad_norm = rec.grad_before_backward
            obs.updates_seen += 1


def params_changed(obs: Observations) -> dict[str, bool]:
    """Parameter name -> did it change on any watched update step."""
    changed: dict[str, bool] = {}
    for rec in obs.steps:
        for name, u in rec.update_norms.items():
            changed[name] = changed.get(name, False) or (u != 0.0)
    return changed


def observer_skip_reason(obs: object, check_id: str) -> str | None:
    """Why ``check_id`` cannot be judged: an observer unit whose data it reads failed
    during the watch (None when every unit it needs worked)."""
    failures = getattr(obs, "observer_failures", None) or {}
    for unit, failure in failures.items():
        if check_id in failure.get("checks", ()):
            return f"internal error in observer {unit!r}: {failure.get('error', '?')}"
    return None


def find_nonfinite(obs: Observations) -> list[NonFiniteEvent]:
    """The first forward producer, the first backward gradient and the first non-finite
    loss, from host-side records."""
    events: list[NonFiniteEvent] = []
    order = {p: i for i, p in enumerate(obs.forward_order)}
    # Forward: the first step whose activations contain a non-finite output.
    for rec in obs.steps:
        bad = [a for a in rec.activations if a.out_nonfinite]
        if not bad:
            continue
        # Inputs that were another module's output carry that module's verdict.
        by_call = {a.call: a for a in rec.activations}
        for a in rec.activations:
            if any(by_call[c].out_nonfinite for c in a.input_calls if c in by_call):
                a.in_nonfinite = True
        bad.sort(key=lambda a: a.call)
        # The producer: its inputs were finite and none of the modules it called produced
        # the value (a module inside it that went bad earlier would be "called within").
        producer = None
        for a in bad:
            if a.in_nonfinite:
                continue
            inner = [b for b in bad if b.path.startswith(a.path + ".") if a.path] if a.path else [b for b in bad if b.path]
            inner_producers = [b for b in inner if not b.in_nonfinite]
            if inner_producers:
                continue
            producer = a
            break
        passes = [a.path for a in bad if a.in_nonfinite][:5]
        if producer is None:
            first = bad[0]
            events.append(NonFiniteEvent(
                direction="forward", step=rec.step, where=first.path or None, kind="nan/inf",
                detail={"producer_found": False, "first_bad_output": first.path, "passed_on_by": passes,
                        "params_nonfinite": first.params_nonfinite},
            ))
        else:
            events.append(NonFiniteEvent(
                direction="forward", step=rec.step, where=producer.path or None, kind="nan/inf",
                detail={
                    "producer_found": True,
                    "first_bad_layer": producer.path or "(model forward code)",
                    "class": obs.modules[producer.path].class_name if producer.path in obs.modules else None,
                    "own_code": bool(obs.modules.get(producer.path) and not obs.modules[producer.path].is_leaf),
                    "params_nonfinite": producer.params_nonfinite,
                    "output_index": producer.output_index,
                    "passed_on_by": passes,
                },
            ))
        break
    # Backward: the first step with a non-finite gradient, the first parameter in
    # backward order (the reverse of forward order of owning modules).
    for rec in obs.steps:
        bad_params = list(rec.grad_nonfinite)
        if not bad_params:
            continue

        def backward_rank(name: str) -> tuple[int, str]:
            mod = obs.module_of(name)
            return (-order.get(mod, -1), name)

        bad_params.sort(key=backward_rank)
        events.append(NonFiniteEvent(
            direction="backward", step=rec.step, where=bad_params[0], kind="nan/inf",
            detail={"first_bad_gradient": bad_params[0], "n_bad": len(bad_params),
                    "loss_finite": rec.loss is None or math.isfinite(rec.loss)},
        ))
        break
    for rec in obs.steps:
        if rec.loss is not None and not math.isfinite(rec.loss):
            events.append(NonFiniteEvent(
                direction="loss", step=rec.step, where=None,
                kind="nan" if math.isnan(rec.loss) else "inf", detail={"loss": rec.loss},
            ))
            break
    return events
