"""The "gloria" recipe: registry, features, losses, gradients, similarities and word attention."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from medalign.recipes import RECIPES, build_recipe

SHAPE = (4, 16, 16)
TEXTS = ["Acute infarct in the left frontal lobe.", "Large tumor, with edema!",
         "Hemorrhage in the basal ganglia", "No acute intracranial abnormality."]


def _cfg(tmp_path, **recipe):
    return {
        "recipe": {"name": "gloria", "sequences": ["dwi", "t2s"],
                   "image_encoder": {"name": "unet3d_cpu", "channels": [4, 8, 8], "stem_stride": 1,
                                     "local_level": 1, "global_pool": "avg", "out_dim": 16},
                   "text_encoder": {"cache_dir": str(tmp_path / "text")}, "embed_dim": 8, **recipe},
        "data": {"shape": list(SHAPE)},
    }


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    torch.manual_seed(0)
    return build_recipe(_cfg(tmp_path_factory.mktemp("gl")))


def _batch(n=4):
    g = torch.Generator().manual_seed(1)
    return {"image": torch.randn(n, 2, *SHAPE, generator=g), "sequence_mask": torch.ones(n, 2, dtype=torch.bool),
            "text": TEXTS[:n]}


def test_registered_and_defaults(recipe):
    assert "gloria" in RECIPES
    ll = recipe.local_loss
    assert (ll.temp1, ll.temp2, ll.temp3, ll.agg) == (4.0, 5.0, 10.0, "sum")
    assert float(recipe.logit_scale()) == pytest.approx(10.0)
    assert not recipe.log_logit_scale.requires_grad


def test_features_shapes_and_word_mask(recipe):
    f = recipe(_batch())
    B = 4
    assert f["image_embed"].shape == (B, 8) and f["text_embed"].shape == (B, 8)
    assert f["local_grid"] == (2, 8, 8)
    assert f["image_local"].shape == (B, 2 * 8 * 8, 8)
    W = f["word_embed"].shape[1]
    assert f["word_mask"].shape == (B, W)
    words0 = f["word_lists"][0]
    assert "infarct" in [w.lower() for w in words0] and "." in words0
    # punctuation is masked out of the local loss; special tokens are never words
    for b, wl in enumerate(f["word_lists"]):
        for w, word in enumerate(wl):
            assert bool(f["word_mask"][b, w]) == any(ch.isalnum() for ch in word)
        assert not any(w.startswith("[") for w in wl)
    assert torch.allclose(f["image_embed"].norm(dim=-1), torch.ones(B))


def test_training_step_losses_and_gradients(recipe):
    recipe.train()
    recipe.zero_grad()
    out = recipe.training_step(_batch())
    assert {"global_loss", "local_loss"} <= set(out)
    total = sum(v for k, v in out.items() if k.endswith("_loss"))
    assert torch.isfinite(total)
    total.backward()
    for name, p in recipe.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert recipe.image_local_proj.net.weight.grad.abs().sum() > 0
    assert recipe.word_proj.net.weight.grad.abs().sum() > 0
    recipe.eval()
    v = recipe.validation_step(_batch())
    assert v["image_embed"].shape == (4, 8) and torch.isfinite(v["local_loss"])


def test_pair_similarity_and_zscore(recipe):
    recipe.eval()
    b = _batch()
    im = recipe.image_features(b["image"], b["sequence_mask"])
    tx = recipe.text_word_features(b["text"])
    s = recipe.pair_similarity(im, tx, chunk=3)
    for k in ("global", "local", "combined"):
        assert s[k].shape == (4, 4) and torch.isfinite(s[k]).all()
    assert s["combined"].mean().abs() < 1e-5
    # chunking does not change the local scores
    s1 = recipe.pair_similarity(im, tx, chunk=4)
    assert torch.allclose(s["local"], s1["local"], atol=1e-5)
    # local scores agree with the loss module on the diagonal pairing
    ref, _ = recipe.local_loss.scores(im["image_local"], tx["word_embed"], tx["word_mask"])
    assert torch.allclose(ref, s["local"], atol=1e-5)


def test_word_attention_map(recipe):
    recipe.eval()
    b = _batch(1)
    out = recipe.word_attention(b["image"][0], b["sequence_mask"][0], TEXTS[0])
    a = out["attention"]
    assert a.shape == (len(out["words"]), 2, 8, 8)
    assert np.allclose(a.reshape(a.shape[0], -1).sum(1), 1.0, atol=1e-5)


def test_word_softmax_option_reaches_loss_and_maps(tmp_path):
    from medalign.losses.gloria import word_region_attention

    torch.manual_seed(0)
    r = build_recipe(_cfg(tmp_path, word_softmax=True)).eval()
    assert r.local_loss.word_softmax
    b = _batch(1)
    out = r.word_attention(b["image"][0], b["sequence_mask"][0], TEXTS[0])
    # the map is the reference-code attention (softmax over words, then over regions) ...
    im = r.image_features(b["image"], b["sequence_mask"])
    tx = r.text_word_features([TEXTS[0]])
    want = word_region_attention(im["image_local"], tx["word_embed"], temp1=4.0, word_softmax=True,
                                 word_mask=tx["word_mask"])[0, 0]  # (W, R)
    np.testing.assert_allclose(out["attention"].reshape(want.shape), want.detach().numpy(), atol=1e-6)
    # ... which differs from the paper's single softmax on the same features
    plain = word_region_attention(im["image_local"], tx["word_embed"], temp1=4.0)[0, 0]
    assert not torch.allclose(plain, want, atol=1e-4)
    assert r.training_step(_batch())["local_loss"].isfinite()


def test_drop_stopwords_option(tmp_path):
    r = build_recipe(_cfg(tmp_path, drop_stopwords=True))
    tx = r.text_word_features([TEXTS[0]])
    kept = [w for w, m in zip(tx["word_lists"][0], tx["word_mask"][0].tolist()) if m]
    assert "the" not in kept and "in" not in kept and "infarct" in kept


def test_negated_words_known_values():
    from medalign.recipes.gloria import negated_words

    words = ["Left", "glioma", ".", "No", "acute", "infarct", "or", "haemorrhage", ".", "Right", "infarct"]
    assert negated_words(words) == [False, False, False, True, True, True, True, True, False, False, False]
    words = ["Negative", "for", "tumour", ",", "although", "infarct", ";", "no", "restricted", "diffusion"]
    assert negated_words(words) == [True, True, True, True, False, False, False, True, True, True]
    assert negated_words([]) == []


def test_drop_negated_option(tmp_path):
    r = build_recipe(_cfg(tmp_path, drop_negated=True))
    assert build_recipe(_cfg(tmp_path)).drop_negated is False  # paper default: keep every word
    tx = r.text_word_features(["Left glioma. No acute infarct.", "No acute intracranial abnormality."])
    kept = [w.lower() for w, m in zip(tx["word_lists"][0], tx["word_mask"][0].tolist()) if m]
    assert kept == ["left", "glioma"]
    assert not bool(tx["word_mask"][1].any())  # a fully negated report has no words: its local score is 0
    f = r.training_step({**_batch(2), "text": ["Left glioma. No acute infarct.", "No acute intracranial abnormality."]})
    assert torch.isfinite(f["local_loss"]) and torch.isfinite(f["global_loss"])


def test_center_regions_known_values_and_option(tmp_path):
    from medalign.recipes.gloria import center_regions

    v = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [10.0, 10.0]]])  # (1, R=3, E=2)
    assert torch.allclose(center_regions(v), v - torch.tensor([14 / 3, 4.0]))
    m = torch.tensor([[True, True, False]])
    assert torch.allclose(center_regions(v, m), v - torch.tensor([2.0, 1.0]))  # mean over allowed regions only
    assert torch.allclose(center_regions(v, torch.zeros(1, 3, dtype=torch.bool)), center_regions(v))
    r = build_recipe(_cfg(tmp_path, center_regions=True, head_regions=0.5))
    b = _batch(2)
    b["image"][:, :, :, :, :4] = 0  # background columns
    f = r.image_features(b["image"], b["sequence_mask"])
    rm = f["region_mask"]
    assert not rm.all() and rm.any()
    mean = (f["image_local"] * rm[..., None]).sum(1) / rm.sum(1, keepdim=True)  # (B, E)
    assert torch.allclose(mean, torch.zeros_like(mean), atol=1e-5)
    out = r.training_step(b)
    out["local_loss"].backward()
    assert torch.isfinite(out["local_loss"])


# ------------------------------------------------------------------ CLI: attend + localise on a tiny cohort
def _tiny_cohort(root):
    """12 studies, 2 sequences 24x24x8 with a bright lesion cube (and its mask) in non-normal studies."""
    import nibabel as nib
    import pandas as pd

    rng = np.random.default_rng(0)
    reports = {"infarct": "Acute infarct in the left hemisphere.", "tumor": "Large tumor with edema.",
               "hemorrhage": "Acute haemorrhage in the basal ganglia.", "normal": "No acute intracranial abnormality."}
    rows = []
    for i in range(12):
        c = list(reports)[i % 4]
        sid = f"s{i:02d}"
        d = root / sid
        d.mkdir(parents=True)
        m = np.zeros((24, 24, 8), np.uint8)
        base = np.zeros((24, 24, 8), np.float32)
        base[3:21, 3:21, 1:7] = 1.0
        if c != "normal":
            x0, y0 = rng.integers(5, 14, size=2)
            m[x0:x0 + 5, y0:y0 + 5, 2:6] = 1
        row = {"study_id": sid, "patient_id": f"p{i}", "split": "test" if i % 3 == 2 or i >= 9 else "train",
               "label": c, "report": reports[c]}
        for s, gain in (("dwi", 2.0), ("flair", 1.0)):
            v = base + 0.05 * rng.standard_normal(m.shape).astype(np.float32) + gain * m
            nib.save(nib.Nifti1Image(v, np.eye(4)), d / f"{s}.nii.gz")
            row[f"image_{s}"] = str(d / f"{s}.nii.gz")
        nib.save(nib.Nifti1Image(m, np.eye(4)), d / "mask.nii.gz")
        row["mask"] = str(d / "mask.nii.gz")
        rows.append(row)
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


def test_cli_attend_and_localise(tmp_path):
    import json

    from medalign.cli import main
    from medalign.data.cache import preprocess_cohort
    from medalign.train.loop import fit

    man = _tiny_cohort(tmp_path / "cohort")
    preprocess_cohort(man, {"sequences": ["dwi", "flair"], "shape": [4, 16, 16], "reference": "flair",
                            "register": False}, tmp_path / "cache", workers=1, progress=False)

    def cfg(name):
        return {"seed": 0,
                "data": {"kind": "cohort", "manifest": str(man), "cache_dir": str(tmp_path / "cache"),
                         "sequences": ["dwi", "flair"], "shape": [4, 16, 16], "val_split": None},
                "recipe": {"name": name, "embed_dim": 8, "text_encoder": {"cache_dir": str(tmp_path / "text")},
                           "image_encoder": {"name": "unet3d_cpu", "channels": [4, 8], "stem_stride": 1,
                                             "local_level": 1, "global_pool": "avg", "out_dim": 16}},
                "train": {"epochs": 1, "batch_size": 3, "optimizer": "adamw", "lr": 0.003, "scheduler": "constant",
                          "progress": False, "amp": False}}

    gl, cl = tmp_path / "run_gloria", tmp_path / "run_clip"
    fit(cfg("gloria"), gl)
    fit(cfg("clip"), cl)

    png = tmp_path / "att.png"
    assert main(["attend", str(gl), "--study", "s00", "--word", "infarct", "--out", str(png)]) == 0
    assert png.stat().st_size > 1000
    # hemorrhage study whose report spells it "haemorrhage": the class synonym is found
    assert main(["attend", str(gl), "--study", "s02", "--word", "hemorrhage", "--out", str(tmp_path / "h.png")]) == 0
    # a CLIP run has no word attention: one-line error, exit 2
    assert main(["attend", str(cl), "--study", "s00", "--word", "infarct", "--out", str(png)]) == 2
    assert main(["attend", str(gl), "--study", "nope", "--word", "infarct"]) == 2

    assert main(["localise", str(gl), "--clip", str(cl), "--n-boot", "20", "--n-prompts", "3", "--gallery", "2"]) == 0
    res = json.loads((gl / "eval" / "localisation_test.json").read_text())
    loc = res["localisation"]
    assert loc["n"] == 5  # test split s02 s05 s08 s09 s10 have lesions; s11 is normal
    for k in ("gloria", "gloria_prior", "uniform", "uniform_head", "clip_gradcam"):
        assert set(loc[k]) == {"pointing", "mass", "auroc"}
    # the normative prior was fitted on the two normal training studies and kept in the run
    assert res["normative_prior"]["normal_studies"] == 2 and (gl / "normative.npz").is_file()
    assert sum(v["n"] for v in loc["by_class"].values()) == 5 and sum(v["n"] for v in loc["by_size"].values()) == 5
    assert any("normative prior" in row[0] for row in res["table"]["rows"])
    assert loc["uniform"]["auroc"]["value"] == 0.5
    assert {"global", "local", "combined"} == set(res["gloria"]["retrieval"])
    assert res["clip"]["zero_shot"]["pool"] == "mean"
    extra = json.loads((gl / "report_extras" / "gloria.json").read_text())
    assert extra["tables"][0]["columns"][0] == "metric" and len(extra["tables"][0]["rows"]) >= 10
    assert len(extra["images"]) == 2 and all((gl / p).is_file() for p in extra["images"])


def test_text_section_reaches_word_branch(tmp_path):
    """With text_section: impression both branches see only the impression (training batches hold
    whole reports); jitter is accepted as in the CLIP recipe."""
    r = build_recipe(_cfg(tmp_path, text_section="impression", jitter={"shift": [0, 1, 1], "scale": 0.1}))
    report = "Findings: there is a bright region in the left frontal lobe. IMPRESSION: Acute infarct."
    assert r.report_texts([report]) == ["Acute infarct."]
    b = _batch(1)
    b["text"] = [report]
    r.train()
    f = r(b)
    assert [w for w in f["word_lists"][0] if w.isalnum()] == ["Acute", "infarct"]
    ref = r.text_word_features(["Acute infarct."])
    assert torch.allclose(f["text_embed"], ref["text_embed"], atol=1e-6)


def test_head_regions_mask_and_attention(tmp_path):
    """head_regions: only local-grid cells (here 2 x 8 x 8 of a 4 x 16 x 16 input) at least half
    inside the non-zero 'head' are attended; the attention map is 0 elsewhere."""
    torch.manual_seed(0)
    r = build_recipe(_cfg(tmp_path, head_regions=0.5)).eval()
    img = torch.zeros(1, 2, *SHAPE)
    img[0, 1, :, 4:12, 2:6] = torch.randn(4, 8, 4)  # "head" in one channel only, rows 4-11, cols 2-5
    m = r.head_region_mask(img, (2, 8, 8))
    want = torch.zeros(2, 8, 8, dtype=torch.bool)
    want[:, 2:6, 1:3] = True  # cells of 2x2 voxels, fully inside
    assert m.shape == (1, 128) and torch.equal(m[0], want.flatten())
    f = r.image_features(img, torch.ones(1, 2, dtype=torch.bool))
    assert torch.equal(f["region_mask"], m)
    out = r.word_attention(img[0], None, TEXTS[0])
    a = out["attention"]  # (W, 2, 8, 8)
    assert np.allclose(a[:, ~want.numpy()], 0.0) and np.allclose(a.reshape(a.shape[0], -1).sum(1), 1.0, atol=1e-5)
    # training step with the mask: finite losses and gradients
    r.train()
    b = _batch()
    b["image"][:, :, :, :2] = 0.0  # a background band
    loss = sum(v for k, v in r.training_step(b).items() if k.endswith("_loss"))
    loss.backward()
    assert torch.isfinite(loss) and r.image_local_proj.net.weight.grad.abs().sum() > 0
    assert build_recipe(_cfg(tmp_path)).head_regions is None  # paper default: off
    with pytest.raises(ValueError, match="head_regions"):
        build_recipe(_cfg(tmp_path, head_regions=1.5))


def test_attention_fusion_encoder_feeds_the_local_branch(tmp_path):
    """A study-level encoder (one shared encoder per series) gives GLoRIA its local map too, and a
    study with one series missing trains: every parameter gets a gradient."""
    from medalign.eval.localisation import gradcam_map
    from medalign.models.fusion import SeriesFusionEncoder

    cfg = _cfg(tmp_path)
    cfg["recipe"]["image_encoder"]["fusion"] = "attention"
    torch.manual_seed(0)
    rec = build_recipe(cfg)
    assert isinstance(rec.image_encoder, SeriesFusionEncoder)
    batch = _batch()
    batch["sequence_mask"][1, 0] = False
    rec.train()
    out = rec.training_step(batch)
    sum(v for k, v in out.items() if k.endswith("_loss")).backward()
    for name, p in rec.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    rec.eval()
    cam = gradcam_map(rec, batch["image"][0], batch["sequence_mask"][0], TEXTS[0])
    assert cam.shape == (2, 8, 8) and np.isfinite(cam).all()
