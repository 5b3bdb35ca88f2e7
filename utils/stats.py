"""The statistics the A/B reports share: paired bootstrap intervals, McNemar's exact test, the
t-interval of a mean. scipy is imported inside the functions (its import is slow)."""
import math

import numpy as np


def paired_bootstrap(diffs: np.ndarray, resamples: int, seed: int = 0) -> tuple[float, float]:
    """The 95% percentile interval of the mean of paired differences over `resamples` resamples of
    the pairs, seeded (the same data give the same interval)."""
    idx = np.random.default_rng(seed).integers(0, len(diffs), size=(resamples, len(diffs)))
    lo, hi = np.percentile(diffs[idx].mean(1), [2.5, 97.5])
    return float(lo), float(hi)


def mcnemar(a_correct: np.ndarray, b_correct: np.ndarray) -> dict:
    """McNemar's exact test on paired correctness: b = only A right, c = only B right."""
    from scipy.stats import binomtest

    b = int((a_correct & ~b_correct).sum())
    c = int((~a_correct & b_correct).sum())
    p = 1.0 if b + c == 0 else float(binomtest(min(b, c), b + c, 0.5).pvalue)
    return {"only_a_right": b, "only_b_right": c, "p_value": p}


def interval95(values: list[float]) -> dict:
    """Mean, sample standard deviation and the 95% t-interval of the mean (None for one value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return {"mean": mean, "std": None, "ci95": None, "n": n}
    from scipy.stats import t

    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(t.ppf(0.975, n - 1)) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "ci95": [mean - half, mean + half], "n": n}


def p_text(p: float) -> str:
    """A p-value as a report writes it: 'p = 0.032', and below 0.001 the bound ('p < 0.001'), never 'p = 0'."""
    if p != p:  # nan: too few pairs to test
        return "p not computable"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3g}"
