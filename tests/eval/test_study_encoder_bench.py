"""benchmarks/study_encoder.py: each case builds the encoder its config and overrides name (the
local-contrast case doubles the stem's input), and one measured step reports finite figures."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("study_encoder", ROOT / "benchmarks" / "study_encoder.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_overrides_reach_the_encoder_and_a_step_is_measured() -> None:
    base = bench.one("brain_clip_cpu.yaml", 3, 3, batch=2, steps=1, shape=(8, 64, 64), overrides={"local_contrast": None})
    lc = bench.one("brain_clip_cpu.yaml", 3, 3, batch=2, steps=1, shape=(8, 64, 64))  # the preset: local contrast on
    stem_kernel = 1 * 4 * 4 * 16  # the CPU preset's stem: 1x4x4 kernel, 16 maps, one weight per input channel
    assert lc["params"] - base["params"] == 3 * stem_kernel  # three more input channels: the sequences' contrast
    for r in (base, lc):
        assert r["step_s"] > 0 and r["peak_rss_mib"] > 0
    names = [c[0] for c in bench.CASES]
    assert names[0].endswith("(baseline)") and any("local contrast" in n for n in names)
