"""Means with 95% confidence intervals, paired differences, and the worst case over attacks.

One replicate is one seed (the seed changes the partition, the model's initialisation and the
attacked batch), so a cell's figure is the mean over its seeds of each seed's mean over the
attacked images, with a Student-t interval over the seeds. A difference to FedAvg is paired by
seed (the same seed's FedAvg cell), and called significant only when its interval excludes 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fl_shadow.metrics.matching import LOWER_MEANS_MORE_LEAKED

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """A mean with its two-sided 95% Student-t confidence interval.

    Attributes:
        mean: the sample mean.
        half_width: half the interval's width (NaN with fewer than two values).
        n: how many values.
    """

    mean: float
    half_width: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    @property
    def excludes_zero(self) -> bool:
        """The interval lies wholly above or below 0 (a significant difference)."""
        return math.isfinite(self.half_width) and (self.low > 0 or self.high < 0)

    def text(self, digits: int = 2) -> str:
        """``"23.41 ± 1.20"``, or the mean alone with one value."""
        if not math.isfinite(self.half_width):
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.half_width:.{digits}f}"


def mean_ci(values: Iterable[float], *, confidence: float = CONFIDENCE) -> Interval:
    """Mean and Student-t confidence interval of ``values``.

    ``half_width = t_{(1+c)/2, n-1} * s / sqrt(n)`` with ``s`` the sample standard deviation
    (ddof 1). One value: the interval is undefined (NaN).

    Example:
        >>> round(mean_ci([1.0, 2.0, 3.0]).half_width, 4)  # t(0.975, 2) = 4.3027, s = 1
        2.4841

    Raises:
        ValueError: no values, or a non-finite one.
    """
    x = np.asarray(list(values), dtype=np.float64)
    if x.size == 0:
        raise ValueError("mean_ci needs at least one value")
    if not np.isfinite(x).all():
        raise ValueError(f"mean_ci needs finite values, got {x.tolist()}")
    if x.size == 1:
        return Interval(float(x[0]), math.nan, 1)
    # Imported here: scipy.stats costs ~0.3 s at import in every Flower client process, which
    # loads this package for its accuracy and macro-F1 and never computes an interval.
    from scipy import stats

    t = stats.t.ppf(0.5 + confidence / 2, df=x.size - 1)
    half = float(t * x.std(ddof=1) / math.sqrt(x.size))
    return Interval(float(x.mean()), half, int(x.size))


def paired_difference(values: Mapping[int, float], reference: Mapping[int, float]) -> Interval:
    """``values - reference`` paired by seed (the seeds both have), with its interval.

    Raises:
        ValueError: the two share no seed.
    """
    seeds = sorted(set(values) & set(reference))
    if not seeds:
        raise ValueError("paired_difference: no seed in common")
    return mean_ci(values[s] - reference[s] for s in seeds)


def worst_case(per_attack: Mapping[str, Sequence[float]], score: str) -> np.ndarray:
    """Per image, the most any attack leaked: the maximum over attacks of ``score`` (the
    minimum for distances such as LPIPS).

    Args:
        per_attack: ``{attack: (N,) scores of the same N images, in the same order}``.
        score: the score's name (decides max or min).

    Raises:
        ValueError: no attack, or attacks scored on different numbers of images.
    """
    arrays = [np.asarray(v, dtype=np.float64) for v in per_attack.values()]
    if not arrays:
        raise ValueError("worst_case needs at least one attack")
    if len({a.shape for a in arrays}) != 1:
        raise ValueError(f"worst_case: attacks scored different numbers of images "
                         f"{[a.shape for a in arrays]}")
    stack = np.stack(arrays)
    return stack.min(0) if score in LOWER_MEANS_MORE_LEAKED else stack.max(0)


__all__ = ["CONFIDENCE", "Interval", "mean_ci", "paired_difference", "worst_case"]
