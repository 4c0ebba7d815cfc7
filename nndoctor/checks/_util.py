"""Small pure helpers shared by the checks (no torch)."""

from __future__ import annotations

import math
from typing import Iterable, Sequence


def median(values: Iterable[float]) -> float:
    vals = sorted(v for v in values if v is not None and not math.isnan(v))
    if not vals:
        return math.nan
    n = len(vals)
    mid = n // 2
    return vals[mid] if n % 2 else 0.5 * (vals[mid - 1] + vals[mid])


def finite(values: Iterable[float | None]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def fmt(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if not math.isfinite(x):
        return str(x)
    if x == 0:
        return "0"
    if abs(x) >= 1e4 or abs(x) < 1e-3:
        return f"{x:.{max(digits - 1, 1)}e}"
    return f"{x:.{digits}g}"


def listing(items: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(f"`{i}`" for i in items[:limit])
    more = len(items) - limit
    return shown + (f" and {more} more" if more > 0 else "")


def group_by_module(names: Iterable[str], module_of) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for n in names:
        out.setdefault(module_of(n), []).append(n)
    return out


def downward_pair_fraction(values: Sequence[float]) -> float:
    """Share of ordered pairs (i < j) with values[j] < values[i]: 0.5 for noise, 1 for a
    strictly falling series (Kendall's tau rescaled to [0, 1]). O(n²) on a few hundred
    points at most."""
    n = len(values)
    if n < 2:
        return math.nan
    down = total = 0
    for i in range(n):
        vi = values[i]
        for j in range(i + 1, n):
            if values[j] != vi:
                total += 1
                down += values[j] < vi
    return down / total if total else 0.5


def slope_t_statistic(values: Sequence[float]) -> tuple[float, float]:
    """Least-squares slope of values against their index, and its t statistic
    (slope / standard error). t < -2 is a significant downward trend."""
    n = len(values)
    if n < 3:
        return math.nan, math.nan
    xs = range(n)
    mx = (n - 1) / 2
    my = sum(values) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, values))
    slope = sxy / sxx
    resid = sum((y - (my + slope * (x - mx))) ** 2 for x, y in zip(xs, values))
    se = math.sqrt(resid / (n - 2) / sxx) if resid > 0 else 0.0
    if se == 0:
        return slope, (-math.inf if slope < 0 else (math.inf if slope > 0 else 0.0))
    return slope, slope / se


def left_its_start(values: Sequence[float], margin: float) -> bool:
    """Every value after the first is more than ``margin`` (a share) above the first, a
    positive one: the series jumped away from where it started and never came back, a
    divergence however much the later values scatter."""
    if len(values) < 3 or not values[0] > 0:
        return False
    return min(values[1:]) > (1.0 + margin) * values[0]


def smallest_detectable_drop(values: Sequence[float], t_needed: float = 2.0) -> float:
    """The smallest fall from the first value to the last that a straight-line trend
    would need, given the scatter of ``values`` around their own least-squares line, for
    its slope to reach ``|t| >= t_needed`` (the slope's standard error times ``t_needed``,
    times the ``n - 1`` steps). A series scattered far more than it could fall over its
    length gives "no trend" whether it is falling or not. inf for fewer than 3 values."""
    n = len(values)
    if n < 3:
        return math.inf
    mx = (n - 1) / 2
    my = sum(values) / n
    sxx = sum((x - mx) ** 2 for x in range(n))
    slope = sum((x - mx) * (y - my) for x, y in zip(range(n), values)) / sxx
    resid = sum((y - (my + slope * (x - mx))) ** 2 for x, y in zip(range(n), values))
    se = math.sqrt(resid / (n - 2) / sxx)
    return abs(t_needed) * se * (n - 1)


# -- wording: counts and numbers in messages ------------------------------------------
def count(n: int | float, noun: str, plural: str | None = None) -> str:
    """``count(1, "update")`` -> "1 update"; ``count(12480, "parameter")`` -> "12,480
    parameters". The number is written with thousands separators, like the header."""
    word = noun if n == 1 else (plural or _plural(noun))
    return f"{number(n)} {word}"


def number(n: int | float) -> str:
    """An integer count with thousands separators ("12,480"); other numbers via ``fmt``."""
    if isinstance(n, bool):
        return str(n)
    if isinstance(n, int) or (isinstance(n, float) and n.is_integer() and abs(n) < 1e15):
        return f"{int(n):,}"
    return fmt(n)


def _plural(noun: str) -> str:
    # Only the last word of a noun phrase takes the plural ("weight tensor" -> "weight tensors").
    head, sep, last = noun.rpartition(" ")
    if last.endswith(("s", "x", "ch", "sh")):
        last += "es"
    elif last.endswith("y") and last[-2:-1] not in ("a", "e", "i", "o", "u"):
        last = last[:-1] + "ies"
    else:
        last += "s"
    return head + sep + last


# -- normalisation layers downstream (deliberate small scales) --------------------------
def is_norm_layer(meta) -> bool:
    """A normalisation layer: torch's own (category ``norm``/``batchnorm``) or a custom leaf
    module whose class is named like one (nanoGPT's ``LayerNorm``, ``RMSNorm``)."""
    if meta is None:
        return False
    if meta.category in ("norm", "batchnorm"):
        return True
    return meta.category == "other" and meta.is_leaf and "norm" in meta.class_name.lower()


def next_norm_after(obs, path: str, leaf_order: Sequence[str], window: int = 3) -> str | None:
    """The normalisation layer that re-scales ``path``'s output: the first norm layer among
    the next ``window + 1`` leaves after ``path`` in forward order (GPT blocks: `c_proj`
    -> dropout -> `ln_2`; `act` -> `c_proj` -> dropout -> `ln_1`). None when no norm layer
    follows closely: then a small scale compounds layer after layer."""
    if path not in leaf_order:
        return None
    i = leaf_order.index(path)
    for nxt in leaf_order[i + 1 : i + 2 + window]:
        if is_norm_layer(obs.modules.get(nxt)):
            return nxt
    return None
