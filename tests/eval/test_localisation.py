"""Known-value tests for the localisation metrics, the uniform baseline, Grad-CAM and the prompts."""
from __future__ import annotations

import numpy as np
import pytest

from medalign.eval.gloria_prompts import CLASS_WORDS, class_prompts, find_class_word, generate_prompts
from medalign.eval.localisation import (
    attention_mass,
    localisation_scores,
    pointing_game,
    summarise,
    uniform_scores,
    upsample_map,
    voxel_auroc,
)


def _mask() -> np.ndarray:
    m = np.zeros((2, 4, 4), dtype=np.uint8)
    m[0, 1:3, 1:3] = 1  # 4 lesion voxels of 32
    return m


def test_pointing_game_known_values():
    m = _mask()
    h = np.zeros(m.shape)
    h[0, 1, 1] = 5.0
    assert pointing_game(h, m) == 1.0
    h2 = np.zeros(m.shape)
    h2[1, 3, 3] = 5.0
    assert pointing_game(h2, m) == 0.0
    # tie between one voxel inside and one outside -> 0.5
    h3 = np.zeros(m.shape)
    h3[0, 1, 1] = h3[1, 0, 0] = 2.0
    assert pointing_game(h3, m) == 0.5
    # constant map -> lesion fraction 4/32
    assert pointing_game(np.ones(m.shape), m) == pytest.approx(4 / 32)


def test_attention_mass_known_values():
    m = _mask()
    h = np.ones(m.shape)
    h[0, 1, 1] = 29.0  # inside mass 29 + 3 = 32, total 32 + 28 = 60
    assert attention_mass(h, m) == pytest.approx(32 / 60)
    assert attention_mass(np.zeros(m.shape), m) == pytest.approx(4 / 32)  # all-zero = uniform
    assert attention_mass(-np.ones(m.shape), m) == pytest.approx(4 / 32)  # negatives clipped


def test_voxel_auroc_known_values():
    m = _mask()
    h = m.astype(float)
    assert voxel_auroc(h, m) == 1.0
    assert voxel_auroc(-h, m) == 0.0
    assert voxel_auroc(np.ones(m.shape), m) == 0.5
    # hand count: 4 positives with scores 1,2,3,4; 28 negatives with score 2.5 everywhere
    h2 = np.full(m.shape, 2.5)
    h2[0, 1, 1], h2[0, 1, 2], h2[0, 2, 1], h2[0, 2, 2] = 1, 2, 3, 4
    assert voxel_auroc(h2, m) == pytest.approx(0.5)  # 2 of 4 above every negative
    assert voxel_auroc(np.ones((2, 2)), np.ones((2, 2))) is None


def test_uniform_baseline_matches_metrics_on_constant_map():
    m = _mask()
    u = uniform_scores(m)
    s = localisation_scores(np.full(m.shape, 0.3), m)
    assert u == pytest.approx(s)
    assert u["pointing"] == pytest.approx(1 / 8)


def test_head_uniform_baseline():
    from medalign.eval.localisation import head_uniform_scores

    m = _mask()
    img = np.zeros((2, *m.shape), np.float32)
    img[1, :, :, :2] = 0.7  # "head" = half of the volume (16 voxels), containing 2 of the 4 lesion voxels
    s = head_uniform_scores(img, m)
    assert s["pointing"] == pytest.approx(2 / 16)
    assert s["mass"] == pytest.approx(2 / 16)
    # AUROC of a binary map: P(lesion in head) * P(background outside head) + ties / 2
    assert s["auroc"] == pytest.approx(0.5 * (14 / 28) + 0.5 * 0.5 * (14 / 28) + 0.5 * 0.5 * (14 / 28))


def test_bad_inputs():
    m = _mask()
    with pytest.raises(ValueError, match="shape"):
        pointing_game(np.zeros((2, 4, 5)), m)
    with pytest.raises(ValueError, match="no lesion"):
        attention_mass(np.zeros(m.shape), np.zeros(m.shape))
    with pytest.raises(ValueError, match="non-finite"):
        voxel_auroc(np.full(m.shape, np.nan), m)


def test_upsample_and_summary():
    g = np.zeros((1, 2, 2))
    g[0, 0, 0] = 1.0
    up = upsample_map(g, (2, 4, 4))
    assert up.shape == (2, 4, 4)
    assert np.unravel_index(up.argmax(), up.shape)[1:] == (0, 0)
    rows = [{"pointing": 1.0, "mass": 0.5, "auroc": 0.9}, {"pointing": 0.0, "mass": 0.3, "auroc": None}]
    s = summarise(rows, n_boot=50)
    assert s["pointing"]["value"] == 0.5 and s["mass"]["value"] == pytest.approx(0.4)
    assert s["auroc"]["value"] == 0.9 and s["auroc"]["n"] == 1
    assert s["pointing"]["lo"] <= 0.5 <= s["pointing"]["hi"]


def test_gradcam_map_on_tiny_unet():
    torch = pytest.importorskip("torch")
    from medalign.eval.localisation import gradcam_map
    from medalign.models.image3d import UNetEncoder

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = UNetEncoder(2, channels=(4, 8), input_shape=(4, 8, 8), global_pool="avg", out_dim=6,
                                   local_level=1)
            self.txt = torch.nn.Parameter(torch.randn(6))

        def encode_image(self, x, sm=None):
            return self.enc(x)["global"]

        def encode_text(self, texts):
            return self.txt[None].expand(len(texts), -1)

    torch.manual_seed(0)
    cam = gradcam_map(Tiny(), torch.randn(2, 4, 8, 8), None, "infarct")
    assert cam.shape == (2, 4, 4) and (cam >= 0).all() and np.isfinite(cam).all()


def test_prompts_are_combinations_and_seeded():
    p = class_prompts("infarct")
    assert "acute lacunar infarct in the basal ganglia" in p
    assert len(p) == len(set(p)) == 4 * 5 * 12
    assert len(class_prompts("tumor")) == 5 * 6 * 12
    a = generate_prompts(n_per_class=7, seed=1)
    b = generate_prompts(n_per_class=7, seed=1)
    assert a == b and set(a) == {"infarct", "tumor", "hemorrhage", "normal", "others"}
    assert all(len(v["presence"]) == 7 and v["absence"] == [] for v in a.values())
    assert all(any(w in t for w in CLASS_WORDS["hemorrhage"]) for t in a["hemorrhage"]["presence"])
    assert len(generate_prompts(["normal"], n_per_class=None)["normal"]["presence"]) == 15
    with pytest.raises(KeyError, match="no prompt vocabulary"):
        class_prompts("fracture")


def test_find_class_word():
    assert find_class_word(["acute", "Infarct,", "left"], "infarct") == 1
    assert find_class_word(["left", "hematoma"], "hemorrhage") == 1
    assert find_class_word(["normal"], "tumor") is None
