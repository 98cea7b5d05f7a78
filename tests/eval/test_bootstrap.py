import numpy as np
import pytest

from medalign.eval.bootstrap import bootstrap_ci, format_ci


def test_constant_metric_has_zero_width():
    ci = bootstrap_ci(lambda x: 0.7, np.arange(10), n=50)
    assert ci["value"] == ci["lo"] == ci["hi"] == 0.7


def test_mean_ci_covers_value_and_is_seeded():
    x = np.random.default_rng(0).normal(size=200)
    a = bootstrap_ci(np.mean, x, n=500, seed=3)
    b = bootstrap_ci(np.mean, x, n=500, seed=3)
    assert a == b
    assert a["lo"] < a["value"] < a["hi"]
    # standard error of the mean ~ 1/sqrt(200) -> 95% half-width ~ 0.139
    assert 0.09 < (a["hi"] - a["lo"]) / 2 < 0.19


def test_paired_arrays_and_failed_resamples():
    y = np.array([0, 0, 0, 1])
    s = np.array([0.1, 0.2, 0.3, 0.9])

    def auc_like(y, s):
        if len(np.unique(y)) < 2:
            raise ValueError("one class")
        return float(s[y == 1].min() > s[y == 0].max())

    ci = bootstrap_ci(auc_like, y, s, n=200, seed=0)
    assert ci["value"] == 1.0 and ci["lo"] == ci["hi"] == 1.0
    assert ci["n_failed"] > 0  # resamples without the positive are dropped


def test_length_mismatch_and_format():
    with pytest.raises(ValueError, match="differ in length"):
        bootstrap_ci(np.mean, np.zeros(3), np.zeros(4))
    assert format_ci({"value": 0.5, "lo": 0.25, "hi": 0.75}, 2) == "0.50 [0.25, 0.75]"
    assert format_ci(None) == "—"


def test_bootstrap_cis_matches_single_metric_version():
    from medalign.eval.bootstrap import bootstrap_cis

    x = np.random.default_rng(0).normal(size=50)
    many = bootstrap_cis(lambda a: {"mean": np.mean(a), "max": np.max(a)}, x, n=100, seed=1)
    one = bootstrap_ci(np.mean, x, n=100, seed=1)
    assert many["mean"]["lo"] == one["lo"] and many["mean"]["hi"] == one["hi"]
    assert many["max"]["value"] == x.max()


def test_wilson_ci_is_the_score_interval():
    """The Wilson score interval from its closed form (centre (k + z^2/2) / (n + z^2), half-width
    z sqrt(k(n-k)/n + z^2/4) / (n + z^2)), including the counts at 0 and n where the normal one collapses."""
    from medalign.eval.bootstrap import wilson_ci

    z = 1.959963984540054
    for k, n in ((8, 24), (0, 6), (12, 12), (33, 36)):
        centre = (k + z * z / 2) / (n + z * z)
        half = z * np.sqrt(k * (n - k) / n + z * z / 4) / (n + z * z)
        ci = wilson_ci(k, n)
        assert ci["value"] == pytest.approx(k / n)
        assert ci["lo"] == pytest.approx(max(0.0, centre - half), abs=1e-9)
        assert ci["hi"] == pytest.approx(min(1.0, centre + half), abs=1e-9)
        assert (ci["k"], ci["n"]) == (k, n)
    assert format_ci(wilson_ci(8, 24), 2) == "0.33 [0.18, 0.53]"
    assert wilson_ci(0, 0)["value"] is None and format_ci(wilson_ci(0, 0)) == "—"
    with pytest.raises(ValueError, match="k=4, n=3"):
        wilson_ci(4, 3)


def test_homogeneity_test_is_the_exact_permutation_test_when_small():
    """Two groups of two, two right calls: of the 6 ways to place them, the 2 that put both in one group
    are as extreme as k = [2, 0] (p = 1/3; chi-square 4); equal counts give chi-square 0 and p 1; all right
    (or all wrong) has nothing to separate; the chi-square matches scipy's contingency-table one."""
    from scipy.stats import chi2_contingency

    from medalign.eval.bootstrap import homogeneity_test

    r = homogeneity_test([2, 0], [2, 2])
    assert r["p"] == pytest.approx(1 / 3) and r["statistic"] == pytest.approx(4.0)
    assert homogeneity_test([1, 1], [2, 2])["p"] == pytest.approx(1.0)
    assert homogeneity_test([3, 4], [3, 4]) == {"statistic": 0.0, "p": 1.0, "k": [3, 4], "n": [3, 4]}
    k, n = [4, 5, 12, 3], [8, 6, 12, 6]
    table = np.array([k, np.subtract(n, k)]).T
    assert homogeneity_test(k, n)["statistic"] == pytest.approx(chi2_contingency(table, correction=False)[0])
    assert homogeneity_test(k, n, seed=1)["p"] == pytest.approx(homogeneity_test(k, n, seed=2)["p"], abs=0.01)
    with pytest.raises(ValueError, match="two or more groups"):
        homogeneity_test([1], [2])
    with pytest.raises(ValueError, match=r"k=\[3, 0\], n=\[2, 2\]"):
        homogeneity_test([3, 0], [2, 2])
