"""The normative prior: per-cell statistics of normal studies, the anomaly map and the grounded word map."""
from __future__ import annotations

import numpy as np
import pytest

from medalign.errors import MedAlignError
from medalign.eval.localisation import pointing_game, upsample_map
from medalign.eval.normative import NormativePrior, grounded_map

SHAPE = (8, 32, 32)
GRID = (4, 8, 8)


def _normal(rng: np.random.Generator) -> np.ndarray:
    img = np.zeros((2, *SHAPE), np.float32)  # (C, D, H, W)
    img[:, 1:7, 4:28, 4:28] = 1.0 + 0.1 * rng.standard_normal((2, 6, 24, 24))  # the 'head'
    return img


@pytest.fixture(scope="module")
def prior() -> NormativePrior:
    rng = np.random.default_rng(0)
    return NormativePrior.fit([(_normal(rng), None) for _ in range(12)], ("dwi", "flair"), grid=GRID)


def test_anomaly_peaks_at_a_lesion_on_any_present_sequence(prior) -> None:
    rng = np.random.default_rng(1)
    img = _normal(rng)
    img[1, 4:6, 20:24, 8:12] = 3.0  # bright on flair only
    mask = np.zeros(SHAPE, np.uint8)
    mask[4:6, 20:24, 8:12] = 1
    a = prior.anomaly(img, [True, True])
    assert a.shape == GRID and pointing_game(upsample_map(a, SHAPE), mask) == 1.0
    # with flair absent the lesion is invisible: the peak is elsewhere and weak
    b = prior.anomaly(img, [True, False])
    assert b.max() < a.max() / 3
    # outside the head the anomaly is 0
    assert a[0].max() == 0 and a[:, 0].max() == 0


def test_grounded_map_weights_attention_by_the_prior() -> None:
    anomaly = np.ones(GRID, np.float32)
    anomaly[2, 5, 2] = 4.0
    attention = np.full((2, 4, 4), 1 / 32, np.float32)  # uniform on a coarser grid
    g = grounded_map(attention, anomaly, gamma=2.0)
    assert g.shape == GRID and g.sum() == pytest.approx(1.0, abs=1e-5)
    assert np.unravel_index(g.argmax(), GRID) == (2, 5, 2)
    # where the attention is 0 the prior cannot put mass
    att = np.zeros((2, 4, 4), np.float32)
    att[0] = 1 / 16
    assert grounded_map(att, anomaly)[3:].sum() == pytest.approx(0.0, abs=1e-6)  # (slice 2 blends both halves)
    assert np.allclose(grounded_map(np.zeros((2, 4, 4)), anomaly), 1 / anomaly.size)


def test_save_load_and_bad_input(prior, tmp_path) -> None:
    p = prior.save(tmp_path / "normative.npz")
    q = NormativePrior.load(p)
    assert q.grid == GRID and q.sequences == ("dwi", "flair") and q.n == 12 and np.allclose(q.mean, prior.mean)
    with pytest.raises(MedAlignError, match="at least 2 normal studies"):
        NormativePrior.fit([(np.zeros((2, *SHAPE)), None)], ("dwi", "flair"), grid=GRID)
    with pytest.raises(MedAlignError, match="2 sequences"):
        prior.anomaly(np.zeros((3, *SHAPE), np.float32))
    with pytest.raises(MedAlignError, match="no present sequence"):
        prior.anomaly(np.zeros((2, *SHAPE), np.float32), [False, False])
