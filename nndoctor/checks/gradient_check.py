"""`gradient-check`: analytic gradients against finite differences, judged (see
``nndoctor.checks.experiments`` for how experiment checks read their records)."""

from __future__ import annotations

import math
from typing import Any, Iterable

from .._probe_records import GradcheckRun, GradcheckUnit
from .._report import Finding, Severity
from ._base import CHECKLIST, Check, Skip, Threshold
from ._experiment_common import CS231N, GRADCHECK_DOCS, _data


__all__ = ["GradientCheck"]


class GradientCheck(Check):
    """## What it measures
    Analytic gradients against numerical ones, in float64:
    (a) every unit whose backward is not torch's own: modules whose class is defined
    outside `torch` and that compute something themselves (no children, or parameters of
    their own), and every custom `torch.autograd.Function` found in the loss's graph. Each
    is called on the inputs it really received (captured on a forward of 2 samples);
    `torch.autograd.gradcheck` checks it when its inputs and outputs are small
    (full Jacobians), a randomized check u^T J v otherwise;
    (b) the whole model plus loss: for a few directions v over all parameters (the
    gradient's own direction and random Gaussian ones), the central difference
    (L(w+eps v) - L(w-eps v)) / 2 eps against grad L . v. It costs 2 forwards per
    direction, whatever the parameter count; when it fails, the same test per parameter
    tensor names the module whose gradient is wrong. Randomness is fixed before every
    evaluation: torch is re-seeded and Python's `random` and numpy's generator are put
    back to the same state, so dropout masks and a depth drawn by `random.randint` are the
    same in f(w + eps v) and f(w - eps v). Two evaluations at the same weights must give
    the same loss; when they do not, the check is inconclusive.
    (c) in watch mode too (`Doctor.watch()`, `nndoctor check --no-experiments`): every
    user-defined `torch.autograd.Function` that the watched model calls is verified on
    the inputs of its first call (a copy; the first rows of the batch when they hold
    more than 65,536 elements). While watching, `apply` of those classes is wrapped
    until that first call, then put back (nothing per step after it; every wrapper is
    removed when the watch ends, on exceptions too). When the report is built, the
    Function alone is re-run in float64 (float32 with eps 1e-3 and a 100x looser
    tolerance when it cannot run in float64) and u^T J v from its backward is compared
    with central differences along 4 random directions, judged with
    `max_relative_error` and `noise_margin` as below; the user's random streams and the
    model are untouched. No verdict (the reason is shown) for a forward that is not
    reproducible, one that is piecewise constant in its inputs (rounding, sign: a
    straight-through estimator's backward is a surrogate by design), non-finite values,
    or a Function only called with grad disabled.

    ## Why it matters
    A wrong backward does not crash: training just goes nowhere, or somewhere odd, and
    nothing else points at the culprit. Hand-written `backward` methods and custom losses
    are where these bugs live.

    ## How to fix
    - Fix the backward of the unit named in the finding: compare it with autograd's
      gradient of the same forward written with plain torch operations.
    - Check reductions (sum vs mean over the batch), transposes and the gradient with
      respect to every input that `forward` received.
    - If the forward has a non-differentiable step (rounding, argmax, straight-through
      estimators), the mismatch may be intended: ignore the finding for that unit.

    ## Known false positives
    - Deliberate gradient surrogates (gradient reversal, clipping or scaling inside
      backward) disagree with finite differences by design. A straight-through estimator
      whose forward is piecewise constant (rounding, sign) is recognised and not judged.
    - Kinks (ReLU at 0, max-pool ties) hit by the perturbation can cause a rare, small
      mismatch; the tolerance is set well above that level.
    - Models that only run in float32 are checked in float32 with eps 1e-3 and a 100x
      looser tolerance, which hides bugs smaller than about 10%.
    - Round-off: in float32 (or with float32 tensors hard-coded inside a float64 forward)
      the finite differences of a large model's loss can be noisier than the tolerance.
      Where a direction's error is large, the probe measures that noise (the spread of
      the estimates at eps/2, eps and 2 eps, at least the dtype's round-off of the loss
      over eps); an error within `noise_margin` times it is reported as an inconclusive
      info, never as an error. A non-finite loss is inconclusive too.
    - A forward whose randomness comes from its own generator (a private
      `torch.Generator`, the clock) runs a different graph on every evaluation; the
      probe detects that (two evaluations at the same weights differ) and reports an
      inconclusive info instead of a verdict.

    ## Example
    A `torch.autograd.Function` implementing `x * w` whose backward returns
    `grad * w * 2` for `x`: gradcheck fails, and the finding names the Function and the
    module that called it. Watching alone finds it too: a Function computing `2 * x`
    whose backward returns `grad * 0.5` gives "relative error 0.75, tolerance 1e-03"
    after the first training step.

    ## References
    - The training checklist: "a hand-written gradient: check it numerically".
    - cs231n gradient checks: relative error > 1e-2 is wrong, < 1e-4 fine with kinks,
      use double precision and centred differences.
    - PyTorch `torch.autograd.gradcheck`.
    - nndoctor perf notes §3: directional check vs gradcheck (7,000x cheaper at 100k).
    """

    id = "gradient-check"
    title = "Analytic gradients disagree with numerical ones"
    family = "experiments"
    severity = Severity.ERROR
    kind = "experiment"
    watch_too = True  # the custom Functions watch() saw, verified on their first call
    needs = ("experiments", "custom_functions")
    thresholds = (
        Threshold(
            "max_relative_error",
            1e-3,
            "directional checks fail above this relative error |fd - ad| / max(|fd|, |ad|) "
            "(float64 round-off is ~1e-8; cs231n calls > 1e-2 wrong and 1e-4..1e-2 "
            "uncomfortable; 1e-3 sits between kink noise and the smallest real bugs, "
            "which measured 2.8e-3 and up)",
            "relative error",
        ),
        Threshold(
            "noise_margin",
            3.0,
            "a direction fails only when its relative error is also this many times the round-off "
            "measured on the finite differences (their spread between step sizes eps/2, eps, 2 eps); "
            "within it the whole-model check is inconclusive (info)",
            "factor",
        ),
        Threshold(
            "gradcheck_atol",
            1e-5,
            "absolute tolerance of the full `torch.autograd.gradcheck` (torch's default)",
            "gradient units",
        ),
        Threshold(
            "gradcheck_rtol",
            1e-3,
            "relative tolerance of the full `torch.autograd.gradcheck` (torch's default)",
            "relative error",
        ),
    )
    citations = (CHECKLIST, CS231N, GRADCHECK_DOCS)

    def unit_passed(self, unit: GradcheckUnit | dict[str, Any]) -> bool:
        """A unit passes when its forward and backward ran, torch's gradcheck (given this
        check's atol/rtol) found no mismatch, and a directional test stayed within
        `max_relative_error`."""
        unit = GradcheckUnit.coerce(unit)
        if unit.raised or unit.mismatch:
            return False
        if unit.method == "gradcheck":
            return True
        err = unit.max_rel_error
        return err is not None and math.isfinite(err) and err <= self.max_relative_error

    def evaluate(self, obs: Any) -> Iterable[Finding]:
        watched = getattr(obs, "custom_functions", None)
        if (getattr(obs, "experiments", None) or {}).get("gradcheck") is None and watched is not None:
            yield from self.evaluate_watched(watched)
            return
        data = _data(obs, "gradcheck", "gradient-check", GradcheckRun)
        units = data.units
        model: Any = data.model or {}
        checked = [u for u in units if not u.get("skipped")]
        if model.get("skipped") and not checked:
            reasons = [model["skipped"]] + [u["skipped"] for u in units if u.get("skipped")]
            raise Skip("; ".join(dict.fromkeys(reasons)))
        failed_where: set[str] = set()
        # A module fails when a custom Function it calls fails: report the Function only.
        function_where = {
            u.get("where") or "" for u in checked if u["kind"] == "function" and not self.unit_passed(u)
        }

        def calls_failed_function(module_where: str) -> bool:
            return any(w == module_where or w.startswith(module_where + ".") for w in function_where)

        for unit in sorted(checked, key=lambda u: u["kind"] != "function"):
            if self.unit_passed(unit):
                continue
            if unit["kind"] == "module" and calls_failed_function(unit.get("where") or ""):
                failed_where.add(unit.get("where") or "")
                continue
            label = (
                f"custom autograd.Function `{unit['name']}`"
                + (f" (called in `{unit['where']}`)" if unit.get("where") else "")
                if unit["kind"] == "function"
                else f"module `{unit['where']}` ({unit['name']})"
            )
            failed_where.add(unit.get("where") or "")
            yield self.finding(
                f"The backward of {label} is wrong: its analytic gradient disagrees with "
                f"finite differences ({unit.get('method')}, float64"
                + (
                    f", relative error {unit['max_rel_error']:.2g}"
                    if unit.get("max_rel_error") is not None
                    else ""
                )
                + ")."
                + "".join(f" {text}" for text in (unit.raised, unit.mismatch) if text),
                where=unit.get("where"),
                unit_kind=unit["kind"],
                unit=unit["name"],
                method=unit.get("method"),
                max_rel_error=unit.get("max_rel_error"),
                input_shapes=unit.get("input_shapes"),
            )
        if model and not model.get("skipped") and model.get("nondeterministic"):
            if not failed_where:
                yield self.finding(
                    f"Inconclusive: {model.get('nondeterministic')}; no verdict on the gradients.",
                    severity=Severity.INFO, kind="inconclusive", reason="nondeterministic",
                    dtype=model.get("dtype"), loss=model.get("loss"),
                    fix="Nothing to fix from this check. For a verdict, make the forward draw its "
                        "randomness from torch's, Python's or numpy's global generator (which the "
                        "check re-seeds before every evaluation).")
            return
        if model and not model.get("skipped"):
            worst = model.get("max_rel_error")
            tol = self.max_relative_error * (100.0 if model.get("dtype") == "float32" else 1.0)
            loss = model.get("loss")
            if loss is not None and not math.isfinite(loss):
                if not failed_where:
                    yield self.finding(
                        f"Inconclusive: the loss is {loss} on the checked batch, so finite differences of it "
                        f"say nothing about the backward; no verdict on the gradients.",
                        severity=Severity.INFO, kind="inconclusive", reason="nonfinite_loss", dtype=model.get("dtype"),
                        fix="Find where the loss becomes non-finite first (see nan-trace).")
                return
            if worst is not None and (not math.isfinite(worst) or worst > tol):
                results = model.get("results") or []
                clear, noisy = self.split_by_noise(results, tol)
                if results and not clear and noisy:
                    # Every direction over the tolerance is within the round-off the probe
                    # measured on the finite differences themselves: no verdict.
                    if failed_where:
                        return
                    noise = max(r["noise_rel"] for r in noisy)
                    through32 = any(r.get("loss_through_float32") for r in noisy)
                    yield self.finding(
                        f"Inconclusive: the gradient differs from finite differences by {worst:.2g} (relative, "
                        f"{model.get('dtype')}), but the round-off of the finite differences themselves is "
                        f"{noise:.2g} (relative; from their spread at step sizes eps/2, eps and 2 eps and the "
                        f"loss's precision"
                        + ("; the loss passes through float32 tensors built inside forward" if through32 else "")
                        + "): no verdict on the backward.",
                        severity=Severity.INFO, kind="inconclusive", reason="roundoff", max_rel_error=worst,
                        noise_rel=noise, dtype=model.get("dtype"), tolerance=tol,
                        fix="Nothing to fix from this check. For a verdict, let the model run in float64 "
                            "(no hard-coded float32 tensors in forward).")
                    return
                if results and clear:
                    worst = max(r["rel_error"] for r in clear)
                localized = [
                    t for t in model.get("localized") or []
                    if t.get("rel_error") is not None
                    and (not math.isfinite(t["rel_error"]) or t["rel_error"] > tol)
                ]
                localized.sort(key=lambda t: -t["rel_error"] if math.isfinite(t["rel_error"]) else -math.inf)
                modules = list(dict.fromkeys(t["module"] for t in localized))
                if failed_where:
                    # Already explained: a unit's wrong input gradient shows up in the
                    # parameters upstream of it, so the tensors named here may differ.
                    return
                where = modules[0] if modules else None
                yield self.finding(
                    "The gradient of the loss disagrees with finite differences of the loss: "
                    f"relative error {worst:.2g} along a direction over all parameters "
                    f"(tolerance {tol:.0e}, {model.get('dtype')})."
                    + (
                        " The wrong gradients are those of "
                        + ", ".join(f"`{t['param']}`" for t in localized[:5])
                        + (f" (module `{where}`)." if where is not None else ".")
                        if localized
                        else " No single parameter tensor could be singled out."
                    ),
                    where=where,
                    max_rel_error=worst,
                    directions=model.get("directions"),
                    dtype=model.get("dtype"),
                    localized=localized[:10],
                )

    def evaluate_watched(self, records: list[dict[str, Any]]) -> Iterable[Finding]:
        """Watch mode: the custom autograd.Functions the watched steps called, each checked
        on the inputs of its first call (``nndoctor.observers.custom_functions``)."""
        checked = [r for r in records if not r.get("skipped")]
        if not checked:
            if not records:
                raise Skip("no custom autograd.Function was called while watching (`Doctor.checkup` / "
                           "`nndoctor check` also check custom modules and the whole model)")
            raise Skip("; ".join(f"custom autograd.Function `{r['name']}` not verified: {r['skipped']}"
                                 for r in records))
        for r in checked:
            tol = self.max_relative_error * (100.0 if r.get("dtype") == "float32" else 1.0)
            clear, _ = self.split_by_noise(r.get("results") or [], tol)
            if not clear:
                continue  # within tolerance, or within the finite differences' own noise
            worst = max(x["rel_error"] for x in clear)
            where = r.get("where")
            yield self.finding(
                f"The backward of custom autograd.Function `{r['name']}`"
                + (f" (called in `{where}`)" if where else "")
                + " is wrong: its analytic gradient disagrees with finite differences "
                f"({r.get('method')} on the inputs of its first call while watching, {r.get('dtype')}, "
                f"relative error {worst:.2g}, tolerance {tol:.0e}).",
                where=where,
                unit_kind="function",
                unit=r["name"],
                method=r.get("method"),
                max_rel_error=worst,
                tolerance=tol,
                dtype=r.get("dtype"),
                input_shapes=r.get("input_shapes"),
                sliced=bool(r.get("sliced")),
                source="watch",
            )

    def split_by_noise(self, results: list[dict[str, Any]], tol: float) -> tuple[list, list]:
        """The directions whose error exceeds ``tol``: (clear, noisy). Clear: the error is
        also more than ``noise_margin`` times the round-off measured on the finite
        differences (or no round-off was measured, as in older records). Noisy: within it."""
        clear, noisy = [], []
        for r in results:
            err = r.get("rel_error")
            if err is None or (math.isfinite(err) and err <= tol):
                continue
            noise = r.get("noise_rel")
            if noise is not None and (not math.isfinite(noise) or err <= self.noise_margin * noise):
                noisy.append({**r, "noise_rel": noise})
            else:
                clear.append(r)
        return clear, noisy
