"""The experiment's statistics: mean and 95 % t-interval over seeds, and the method every comparison is against.

Shared by the overall report (:mod:`.experiment_report`) and the per-finding one (:mod:`.experiment_findings`).
"""

from __future__ import annotations

import math

__all__ = ["REFERENCE", "mean_ci"]

# two-sided 95 % Student t quantiles for 1..30 degrees of freedom
_T95 = [
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
]
REFERENCE = "meddiffusemix"


def mean_ci(values: list[float | None]) -> tuple[float, float] | None:
    """(mean, 95 % CI half-width) of the values that are numbers; None if there are none."""
    numbers = [v for v in values if v is not None and not math.isnan(v)]
    if not numbers:
        return None
    mean = sum(numbers) / len(numbers)
    if len(numbers) == 1:
        return mean, math.nan
    spread = math.sqrt(sum((v - mean) ** 2 for v in numbers) / (len(numbers) - 1))
    t = _T95[min(len(numbers) - 1, 30) - 1] if len(numbers) <= 31 else 1.96
    return mean, t * spread / math.sqrt(len(numbers))
