"""Synthetic post-contrast T1 (t1c): written, enhancing where it should (and nowhere else), and
adding it leaves every other output of the generator byte-identical."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medalign.data.synth.brain import T1C_STREAM, generate_brain_cohort, synthesize_study
from medalign.data.synth.lesions import sample_truth

nib = pytest.importorskip("nibabel")

N = 20
KW = dict(n=N, seed=3, shape_mode="small", label_noise=0.1, studies_per_patient="1-3", heldout_phrasing=True,
          workers=1)
T1C_KEYS = {"enhancing", "pattern", "background"}


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory) -> tuple[Path, Path]:
    """The same cohort with t1c (the default) and without it."""
    root = tmp_path_factory.mktemp("t1c")
    return generate_brain_cohort(root / "on", **KW), generate_brain_cohort(root / "off", with_t1c=False, **KW)


def _without_t1c(gt: dict) -> dict:
    gt = json.loads(json.dumps(gt))
    assert T1C_KEYS <= set(gt.pop("t1c_enhancement"))
    gt["acquisition"].pop("t1c")
    gt["files"].pop("t1c")
    return gt


def test_t1c_leaves_every_other_output_byte_identical(cohorts):
    on, off = cohorts
    df_on = pd.read_csv(on, dtype=str, keep_default_na=False)
    assert "image_t1c" in df_on and "image_t1c" not in pd.read_csv(off, nrows=1).columns
    assert df_on.drop(columns=["image_t1c"]).to_csv(index=False) == off.read_text(encoding="utf-8")
    assert (on.parent / "cohort.json").read_bytes() == (off.parent / "cohort.json").read_bytes()
    compared = 0
    for sdir in sorted(p for p in off.parent.iterdir() if p.is_dir()):
        names_off = {p.name for p in sdir.iterdir()}
        assert {p.name for p in (on.parent / sdir.name).iterdir()} == names_off | {"t1c.nii.gz"}
        for name in sorted(names_off):
            a, b = (sdir / name).read_bytes(), (on.parent / sdir.name / name).read_bytes()
            if name == "ground_truth.json":  # t1c only adds keys
                assert _without_t1c(json.loads(b)) == json.loads(a), sdir.name
            else:  # the six sequences and the lesion mask: the same bytes (voxels, affine, header)
                assert a == b, (sdir.name, name)
            compared += 1
    assert compared == N * 8


def test_t1c_written_on_its_own_grid(cohorts):
    from medalign.data.manifest import load_manifest, manifest_sequences

    on, _ = cohorts
    df = load_manifest(on)
    assert manifest_sequences(df)[-1] == "t1c"
    for row in df.head(5).itertuples():
        gt = json.loads((Path(row.image_t1c).parent / "ground_truth.json").read_text(encoding="utf-8"))
        acq = gt["acquisition"]["t1c"]
        img = nib.load(row.image_t1c)
        data = np.asarray(img.dataobj)
        assert gt["files"]["t1c"] == "t1c.nii.gz"
        assert img.shape == tuple(acq["shape"]) and data.dtype == np.int16 and data.max() > 0
        assert np.allclose(img.header.get_zooms()[:3], acq["spacing"], atol=1e-3)
        assert "".join(nib.aff2axcodes(img.affine)) == acq["orientation"] == gt["acquisition"]["t1"]["orientation"]
        assert acq["motion_mm"] != gt["acquisition"]["t1"]["motion_mm"]  # acquired separately: not the T1 grid
        assert not np.allclose(img.affine, nib.load(row.image_t1).affine)


def _truth(label: str, variant: str | None, seed: int = 0, **want) -> dict:
    rng = np.random.default_rng(seed)
    while True:
        t = sample_truth(label, rng)
        f = t["findings"][0] if t["findings"] else {}
        if variant is None or (f["variant"] == variant and all(f.get(k) == v for k, v in want.items())):
            t.update(study_id="X", seed=[seed, 1, 0], anatomy_seed=[seed, 2, 0])
            return t


def _template(truth: dict) -> tuple[np.ndarray, np.ndarray, dict, dict]:
    """Noise-free T1 and t1c on the 4 mm template grid, the t1c components and the truth."""
    from medalign.data.synth.anatomy import _tissues, load_anatomy
    from medalign.data.synth.enhancement import post_contrast, t1c_signal
    from medalign.data.synth.lesions import _lesions
    from medalign.data.synth.sequences import SEQUENCES, _signal

    anat = load_anatomy(4)
    tissue, _ = _tissues(anat, truth)
    comps, _, _ = _lesions(anat, truth, tissue, np.random.default_rng(truth["anatomy_seed"] + [5]))
    img, tex = _signal(anat, tissue, comps, np.random.default_rng(truth["anatomy_seed"]))
    c_comps, info = post_contrast(anat, tissue, comps, truth, np.random.default_rng(truth["seed"] + [T1C_STREAM]))
    maps = {"wm": tissue["wm"] * (anat["mask"] > 0.99), **{n: m for n, m in c_comps}}
    return img[SEQUENCES.index("t1")], t1c_signal(tissue, c_comps, tex), maps, info


def _mean(x: np.ndarray, where: np.ndarray) -> float:
    assert where.sum() >= 3
    return float(x[where].mean())


def test_glioma_enhances_as_a_ring_and_wm_does_not():
    t1, t1c, maps, info = _template(_truth("tumor", "glioma", necrosis=True))
    d = t1c - t1
    rim = (maps["tumor_solid"] > 0.9) & (maps["tumor_necrosis"] < 0.05)
    wm = (maps["wm"] > 0.9) & (maps["tumor_solid"] == 0) & (maps["edema"] == 0)
    assert _mean(d, rim) > 0.4 > 0.01 > abs(_mean(d, wm))
    assert abs(_mean(d, maps["tumor_necrosis"] > 0.95)) < 0.02  # the necrotic core does not enhance
    assert abs(_mean(d, (maps["edema"] > 0.9) & (maps["tumor_solid"] < 0.05))) < 0.02
    assert info["enhancing"] == ["tumor_solid"] and info["pattern"] == "ring"


def test_meningioma_enhances_with_a_dural_tail():
    t1, t1c, maps, info = _template(_truth("tumor", "meningioma"))
    d = t1c - t1
    assert _mean(d, maps["meningioma"] > 0.9) > 0.5
    assert maps["dural_tail"].max() > 0.3 and _mean(d, maps["dural_tail"] > 0.3) > 0.05
    assert info["enhancing"] == ["dural_tail", "meningioma"]


@pytest.mark.parametrize("label, variant, want", [
    ("hemorrhage", "lobar", {"age": "acute"}), ("hemorrhage", "lobar", {"age": "chronic"}),
    ("hemorrhage", "microbleeds", {}), ("infarct", "territorial", {"age": "chronic"}), ("others", "wmh", {}),
    ("normal", None, {})])
def test_no_enhancement_in_haemorrhage_chronic_infarct_wmh_normal(label, variant, want):
    t1, t1c, maps, info = _template(_truth(label, variant, **want))
    d = t1c - t1
    lesion = sum((m for n, m in maps.items() if n not in ("wm", "dura")), np.zeros_like(t1))
    brain = (maps["wm"] > 0.5) | (lesion > 0.5)
    inner = brain & (maps["dura"] < 1e-4)  # away from the normally enhancing dura
    assert inner.sum() > 100 and float(np.abs(d[inner]).max()) < 1e-3
    assert info["enhancing"] == [] and info["pattern"] == "none"
    assert float(d[maps["dura"] > 0.3].mean()) > 0.05  # the dura does enhance, in every study


def test_subacute_infarct_and_active_plaques_enhance_in_some_studies():
    seen = {}
    for seed in range(12):
        for label, variant in (("infarct", "territorial"), ("others", "demyelination")):
            t = _truth(label, variant, seed, age="acute") if label == "infarct" else _truth(label, variant, seed)
            t1, t1c, maps, info = _template(t)
            name = "infarct_enhancing" if label == "infarct" else "plaque_active"
            on = name in maps
            seen.setdefault(label, set()).add(on)
            if on:
                assert _mean(t1c - t1, maps[name] > 0.5) > 0.2, (label, seed)
                assert info["enhancing"] == (["infarct_acute"] if label == "infarct" else ["plaque"])
            else:
                assert info["enhancing"] == [], (label, seed)
    assert seen == {"infarct": {True, False}, "others": {True, False}}  # a fraction, not all or none


def _lesion_contrast(res: dict, seq: str) -> float:
    """90th percentile inside the lesion mask (FLAIR grid, mapped through world coordinates) over
    the median of the rest of the head, on ``seq``'s own grid: free of the scanner gain."""
    d, A = res[seq]
    m, Am = res["mask"]
    ijk = np.indices(d.shape).reshape(3, -1)  # (3, N) voxel indices
    v = np.rint(np.linalg.solve(Am[:3, :3], A[:3, :3] @ ijk + A[:3, 3:4] - Am[:3, 3:4])).astype(int)  # (3, N)
    ok = np.all((v >= 0) & (v < np.array(m.shape)[:, None]), axis=0)
    inside = np.zeros(ok.shape, bool)
    inside[ok] = m[v[0, ok], v[1, ok], v[2, ok]] > 0
    x = d.reshape(-1).astype(np.float64)
    head = x > 0.25 * np.percentile(x, 99)
    return float(np.percentile(x[inside & head], 90) / np.median(x[head & ~inside]))


@pytest.mark.parametrize("label, variant, want, lo, hi", [
    ("tumor", "glioma", {"necrosis": True}, 1.4, 9.0), ("tumor", "meningioma", {}, 1.4, 9.0),
    ("hemorrhage", "lobar", {"age": "acute"}, 0.0, 1.3), ("hemorrhage", "deep", {}, 0.0, 1.3)])
def test_recorded_t1c_is_brighter_than_t1_only_in_enhancing_lesions(label, variant, want, lo, hi):
    """End to end (acquisition, motion, bias, noise, gain): the lesion's contrast on t1c over its
    contrast on T1, each on its own grid."""
    res = synthesize_study(_truth(label, variant, **want), shape_mode="small")
    again = synthesize_study(_truth(label, variant, **want), shape_mode="small")
    assert np.array_equal(res["t1c"][0], again["t1c"][0])  # deterministic
    ratio = _lesion_contrast(res, "t1c") / _lesion_contrast(res, "t1")
    assert lo < ratio < hi, ratio


def test_dicom_export_writes_the_generated_t1c(cohorts, tmp_path):
    """``export_cohort`` exports the cohort's own t1c (its grid and voxels), not a brightened T1."""
    pydicom = pytest.importorskip("pydicom")
    from medalign.data.synth.dicom_export import export_cohort

    on, _ = cohorts
    out = export_cohort(on, tmp_path / "dicom", limit=1)
    truth = pd.read_csv(tmp_path / "dicom_truth.csv", dtype=str)
    uid = truth.loc[truth["kind"] == "t1c", "series_uid"].item()
    files = [pydicom.dcmread(p) for p in out.rglob("*") if p.is_file()]
    series = sorted((ds for ds in files if ds.get("SeriesInstanceUID") == uid), key=lambda ds: int(ds.InstanceNumber))
    got = np.stack([ds.pixel_array.T for ds in series], axis=-1)  # (cols=i, rows=j, slices=k)
    want = np.asarray(nib.load(on.parent / "S00001" / "t1c.nii.gz").dataobj)
    assert got.shape == want.shape and np.array_equal(got, want)
