"""Synthetic tumours vs the real BraTS 2015 cases: FLAIR lesion/WM contrast and lesion volume."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

SHARED = Path(os.environ.get("MEDALIGN_SHARED_DATA", Path(__file__).resolve().parents[3] / ".." / "shared" / "data"))
BRATS = SHARED / "brats2015"


@pytest.mark.skipif(not BRATS.exists(), reason=f"real BraTS data not found at {BRATS}")
def test_synthetic_tumours_match_brats():
    from medalign.data.synth.realism import realism_brats, realism_synthetic_tumours

    real = realism_brats(BRATS)
    assert len(real) >= 2
    synth = realism_synthetic_tumours(n=4, seed=0, shape_mode="small")
    rc = np.array([r["contrast"] for r in real])
    rv = np.array([r["volume_ml"] for r in real])
    sc = np.array([r["contrast"] for r in synth])
    sv = np.array([r["volume_ml"] for r in synth])
    print(f"\nBraTS real (n={len(real)}): FLAIR contrast {rc.min():.2f}..{rc.max():.2f} (median {np.median(rc):.2f}), "
          f"volume {rv.min():.0f}..{rv.max():.0f} ml (median {np.median(rv):.0f})")
    print(f"synthetic gliomas (n={len(synth)}): FLAIR contrast {sc.min():.2f}..{sc.max():.2f} "
          f"(median {np.median(sc):.2f}), volume {sv.min():.0f}..{sv.max():.0f} ml (median {np.median(sv):.0f})")
    # bands: same order of magnitude and clearly FLAIR-bright, as the real tumours
    assert np.all(sc > 1.0)
    assert 0.5 * np.median(rc) <= np.median(sc) <= 2.5 * np.median(rc)
    assert 0.3 * rv.min() <= np.median(sv) <= 2.0 * rv.max()
