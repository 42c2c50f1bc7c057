"""Means with Student-t 95% confidence intervals, for comparisons over seeds (no scipy needed)."""

from __future__ import annotations

import math
from collections.abc import Sequence

# two-sided 95% critical values of Student's t for 1..30 degrees of freedom
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042)


def t95(df: int) -> float:
    """Two-sided 95% critical value of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError("a confidence interval needs at least two samples")
    if df <= len(_T95):
        return _T95[df - 1]
    return 1.96 + 2.4 / df  # within 0.3% of the exact value beyond 30 degrees of freedom


def mean_ci(xs: Sequence[float]) -> tuple[float, float | None]:
    """(mean, half-width of the 95% interval); the half-width is None for a single sample."""
    n = len(xs)
    m = sum(xs) / n
    if n < 2:
        return m, None
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    return m, t95(n - 1) * sd / math.sqrt(n)


def fmt(mean: float, half: float | None, digits: int = 4) -> str:
    return f"{mean:.{digits}f}" if half is None else f"{mean:.{digits}f} ± {half:.{digits}f}"


def fmt_g(mean: float, half: float | None) -> str:
    """Three significant digits (for counts spanning orders of magnitude: FLOPs, joules)."""
    if half is not None and half <= 1e-9 * abs(mean):  # equal over seeds up to rounding noise
        half = 0.0
    return f"{mean:.3g}" if half is None else f"{mean:.3g} ± {half:.2g}"


def paired(pairs: Sequence[tuple[float, float]]) -> dict[str, float | int | str | None]:
    """Two methods run under the same seeds, as (a, b) pairs: the mean of a − b with its 95% half-width,
    the verdict, and in how many seeds a was lower (and equal)."""
    diff, half = mean_ci([a - b for a, b in pairs]) if pairs else (None, None)
    return {"diff": diff, "ci": half, "verdict": verdict(diff, half), "seeds": len(pairs),
            "lower_in": sum(a < b for a, b in pairs), "tied_in": sum(a == b for a, b in pairs)}


def verdict(diff: float | None, half: float | None) -> str:
    """Plain words for a paired difference a − b with its 95% half-width."""
    if diff is None or half is None:
        return "one seed: cannot tell"
    if diff == 0 and half == 0:
        return "identical"
    if diff + half < 0:
        return "lower"
    if diff - half > 0:
        return "higher"
    return "cannot tell"
