"""Confidence intervals: percentile bootstrap resampling studies (rows) with replacement, and the Wilson
score interval for a count of successes (a right-call rate over a few cases and runs); and a permutation
test of whether several such counts share one rate."""
from __future__ import annotations

import warnings
from typing import Callable

import numpy as np


def bootstrap_ci(
    metric_fn: Callable[..., float],
    *arrays: np.ndarray,
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict:
    """``metric_fn(*arrays)`` with a (1 - alpha) percentile CI over ``n`` study resamples.

    Every array is indexed by the same resampled rows (axis 0), so paired arrays (labels and
    scores of one study) stay paired. Resamples on which the metric is undefined (raises
    ValueError or returns NaN/None, e.g. AUROC with one class) are dropped and counted.
    Returns {"value", "lo", "hi", "n_boot", "n_failed", "alpha"}.
    """
    if not arrays:
        raise ValueError("bootstrap_ci needs at least one array")
    arrays = tuple(np.asarray(a) for a in arrays)
    m = len(arrays[0])
    if any(len(a) != m for a in arrays):
        raise ValueError(f"arrays differ in length: {[len(a) for a in arrays]}")
    if m == 0:
        raise ValueError("bootstrap_ci got empty arrays")
    # one named metric: the same resampling as bootstrap_cis (same rows for the same seed)
    return bootstrap_cis(lambda *a: {"value": metric_fn(*a)}, *arrays, n=n, seed=seed, alpha=alpha)["value"]


def bootstrap_cis(
    metrics_fn: Callable[..., dict],
    *arrays: np.ndarray,
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, dict]:
    """Like :func:`bootstrap_ci` for a function returning several named numbers at once.

    One resampling pass serves every key (same resamples for all, so it is also cheaper).
    A key whose value is None/NaN on a resample skips that resample for that key only.
    """
    arrays = tuple(np.asarray(a) for a in arrays)
    m = len(arrays[0])
    if any(len(a) != m for a in arrays):
        raise ValueError(f"arrays differ in length: {[len(a) for a in arrays]}")
    base = metrics_fn(*arrays)
    rng = np.random.default_rng(seed)
    stats: dict[str, list[float]] = {k: [] for k in base}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(n):
            idx = rng.integers(0, m, size=m)
            try:
                vals = metrics_fn(*(a[idx] for a in arrays))
            except ValueError:
                continue
            for k in stats:
                v = vals.get(k)
                if v is not None and np.isfinite(v):
                    stats[k].append(float(v))
    out = {}
    for k, v in base.items():
        st = stats[k]
        lo, hi = (float(x) for x in np.quantile(st, [alpha / 2, 1 - alpha / 2])) if st else (None, None)
        out[k] = {"value": None if v is None else float(v), "lo": lo, "hi": hi, "n_boot": n,
                  "n_failed": n - len(st), "alpha": alpha}
    return out


def wilson_ci(k: int, n: int, alpha: float = 0.05) -> dict:
    """k of n as a rate with its (1 - alpha) Wilson score interval (``scipy.stats.binomtest``).

    Wilson rather than the normal approximation because these counts are small and often at 0 or n,
    where the normal interval collapses to a point. Returns {"value", "lo", "hi", "k", "n", "alpha"}
    (value and bounds None when n is 0), the shape :func:`format_ci` prints.
    """
    if not 0 <= k <= n:
        raise ValueError(f"wilson_ci needs 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return {"value": None, "lo": None, "hi": None, "k": 0, "n": 0, "alpha": alpha}
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=1 - alpha, method="wilson")
    return {"value": k / n, "lo": float(ci.low), "hi": float(ci.high), "k": k, "n": n, "alpha": alpha}


def homogeneity_test(k: list[int], n: list[int], *, resamples: int = 20000, seed: int = 0) -> dict:
    """Do the groups' counts (k[i] right of n[i]) share one rate? A permutation test of the Pearson
    chi-square of the groups x {right, wrong} table (``scipy.stats.permutation_test``, outcomes shuffled
    among the groups' units; exact when there are at most ``resamples`` distinct shuffles).

    Permutation rather than the chi-square distribution because the counts are a few runs each and
    often at 0 or n, where the asymptotic p-value is not to be trusted. Returns {"statistic", "p", "k", "n"};
    with every unit right, or every unit wrong, nothing separates the groups: statistic 0, p 1.
    """
    if len(k) != len(n) or len(k) < 2:
        raise ValueError(f"homogeneity_test needs two or more groups with a k and an n each, got k={k}, n={n}")
    if any(not 0 <= ki <= ni or ni == 0 for ki, ni in zip(k, n)):
        raise ValueError(f"homogeneity_test needs 0 <= k <= n and n > 0 in every group, got k={k}, n={n}")
    sizes, right = np.asarray(n, dtype=float), sum(k)
    if right in (0, sum(n)):
        return {"statistic": 0.0, "p": 1.0, "k": list(k), "n": list(n)}
    from scipy.stats import permutation_test

    pooled = right / sizes.sum()  # the same under every shuffle

    def chi_square(*groups: np.ndarray, axis: int = -1) -> np.ndarray:
        rates = np.stack([g.mean(axis=axis) for g in groups], axis=-1)  # (..., groups)
        return (sizes * (rates - pooled) ** 2).sum(axis=-1) / (pooled * (1 - pooled))

    units = tuple(np.r_[np.ones(ki), np.zeros(ni - ki)] for ki, ni in zip(k, n))
    res = permutation_test(units, chi_square, permutation_type="independent", vectorized=True,
                           alternative="greater", n_resamples=resamples, random_state=seed)
    return {"statistic": float(res.statistic), "p": float(res.pvalue), "k": list(k), "n": list(n)}


def format_ci(ci: dict | None, digits: int = 3) -> str:
    """'0.512 [0.401, 0.633]' (or '—')."""
    if not ci or ci.get("value") is None:
        return "—"
    v = f"{ci['value']:.{digits}f}"
    if ci.get("lo") is None:
        return v
    return f"{v} [{ci['lo']:.{digits}f}, {ci['hi']:.{digits}f}]"
