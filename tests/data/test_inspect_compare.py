"""Realism report (`medalign inspect --compare`): metrics on hand-made volumes, coverage verdicts,
the CLI's outputs (atomic, no silent overwrite), the HTML report section, and the real cases."""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from medalign.cli import main
from medalign.data.realism_compare import coverage, percentile_rank, realism_report, study_findings, study_metrics
from medalign.errors import MedAlignError

SHARED = Path(os.environ.get("MEDALIGN_SHARED_DATA", Path(__file__).resolve().parents[2] / ".." / "shared" / "data"))
ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------- metrics, by hand
def _box_head(shape=(6, 40, 40)) -> np.ndarray:
    head = np.zeros(shape, bool)
    head[:, 5:35, 5:35] = True  # 6 x 30 x 30 = 5400 voxels
    return head


def test_lesion_contrast_and_volume_known_values():
    head = _box_head()
    vol = np.where(head, 1.0, 0.0)
    lesion = np.zeros(head.shape, np.uint8)
    lesion[2:4, 15:20, 15:20] = 2  # any label > 0 is lesion: 2 x 5 x 5 = 50 voxels
    vol[lesion > 0] = 3.5
    m = study_metrics(vol, head, lesion)
    assert m["lesion_contrast"] == pytest.approx(2.5)
    assert m["lesion_volume"] == pytest.approx(50 / 5400)
    assert m["lesion_largest_share"] == pytest.approx(1.0)
    split = lesion.copy()
    split[2:4, 25:28, 25:28] = 1  # a second, separate lesion of 18 voxels
    assert study_metrics(vol, head, split)["lesion_largest_share"] == pytest.approx(50 / 68)
    touching = lesion.copy()
    touching[4, 20, 20] = 1  # diagonal neighbour of the first lesion: one 26-connected lesion
    assert study_metrics(vol, head, touching)["lesion_largest_share"] == pytest.approx(1.0)
    # normal-appearing tissue leaves out the 1-voxel rim around the lesion: a rim at another value
    # (partial volume) must not move the contrast
    from scipy import ndimage

    cross = ndimage.generate_binary_structure(2, 1)[None]  # (1, 3, 3): in-plane neighbours only
    rim = ndimage.binary_dilation(lesion > 0, structure=cross) & (lesion == 0)
    vol2 = np.where(rim, -7.0, vol)
    assert study_metrics(vol2, head, lesion)["lesion_contrast"] == pytest.approx(2.5)
    # lesion heterogeneity: robust spread inside the lesion / the head's. The head a checkerboard of 0 and 2
    # (median 1, MAD 1), the lesion even (spread 0), then half of it dark (25 at 3.5, 25 at -0.5: MAD 2)
    zz, yy, xx = np.indices(head.shape)
    board = np.where(head, 2.0 * ((zz + yy + xx) % 2), 0.0)
    even = np.where(lesion > 0, 3.5, board)
    assert study_metrics(even, head, lesion)["lesion_heterogeneity"] == pytest.approx(0.0)
    cored = even.copy()
    cored[3, 15:20, 15:20] = -0.5
    assert study_metrics(cored, head, lesion)["lesion_heterogeneity"] == pytest.approx(2.0)
    # no lesion voxels / no mask: no lesion figures (not zeros that would drag the range down)
    for les in (np.zeros_like(lesion), None):
        m0 = study_metrics(vol, head, les)
        assert m0["lesion_contrast"] is None and m0["lesion_volume"] is None and m0["lesion_largest_share"] is None
        assert m0["lesion_heterogeneity"] is None
    assert m0["intensity_p50"] == pytest.approx(1.0)


def test_snr_scales_with_noise():
    rng = np.random.default_rng(0)
    head = _box_head()
    yy = np.indices(head.shape)[1].astype(float)
    signal = np.where(head, np.sin(yy / 4.0) * 2.0, 0.0)  # smooth tissue structure, SD ~1.4
    snr = {}
    for sigma in (0.1, 0.2, 0.4):
        vol = signal + np.where(head, rng.normal(0, sigma, head.shape), 0.0)
        snr[sigma] = study_metrics(vol, head)["snr"]
    # noise SD estimated from the residual: SNR halves when the noise doubles
    assert snr[0.1] / snr[0.2] == pytest.approx(2.0, rel=0.15)
    assert snr[0.2] / snr[0.4] == pytest.approx(2.0, rel=0.15)
    # and its size is about signal SD / noise SD (the residual of a sigma-1 smoothing keeps ~0.87 of the noise)
    sd = float(signal[head].std())
    assert 0.8 * sd / 0.1 < snr[0.1] < 1.5 * sd / 0.1
    assert study_metrics(np.where(head, 1.0, 0.0), head)["snr"] is None  # no noise: undefined, not infinite


def test_percentile_rank():
    assert percentile_rank([1.0, 2.0, 3.0, None], 2.5) == pytest.approx(200 / 3)
    assert percentile_rank([1.0, 2.0, 3.0], 2.0) == pytest.approx(50.0)  # a tie counts half
    assert percentile_rank([1.0, 2.0], 0.0) == 0.0 and percentile_rank([1.0, 2.0], 9.0) == 100.0
    assert percentile_rank([], 1.0) is None and percentile_rank([1.0], None) is None


def test_coverage_verdicts():
    syn = list(np.arange(101.0))  # p1 = 1, p99 = 99
    assert coverage(syn, [("a", 50.0), ("b", 2.0)])["verdict"] == "covered"
    c = coverage(syn, [("a", 50.0), ("b", 150.0)])
    assert c["verdict"] == "partly" and c["inside"] == 1
    assert c["outside"] == [{"study_id": "b", "value": 150.0, "side": "high"}]
    c = coverage(syn, [("a", 0.5), ("b", -3.0)])  # 0.5 < p1: outside although inside [min, max]
    assert c["verdict"] == "not covered" and [o["side"] for o in c["outside"]] == ["low", "low"]
    assert c["synthetic_range"] == pytest.approx([1.0, 99.0])
    assert coverage(syn, [("a", None)])["verdict"] == "no data"
    assert coverage([1.0], [("a", 1.0)])["verdict"] == "no data"  # one synthetic value is no range


# ------------------------------------------------------------------------- tiny cohorts, CLI
def _study(root: Path, sid: str, ratio: float, seed: int, *, dwi: bool) -> dict:
    """A 32 x 32 x 10 head (ellipsoid, 100 + noise) with a bright lesion (ratio x 100)."""
    rng = np.random.default_rng(seed)
    idx = np.indices((32, 32, 10)).astype(float)
    head = ((idx[0] - 15.5) / 13) ** 2 + ((idx[1] - 15.5) / 12) ** 2 + ((idx[2] - 4.5) / 6) ** 2 <= 1
    les = ((idx[0] - 12) ** 2 + (idx[1] - 17) ** 2) / 16 + ((idx[2] - 4.5) / 2) ** 2 <= 1
    vol = np.where(head, 100.0, 0.0) + np.where(les, 100.0 * (ratio - 1), 0.0) + rng.normal(0, 3, head.shape)
    d = root / sid
    d.mkdir(parents=True, exist_ok=True)
    aff = np.diag([2.0, 2.0, 4.0, 1.0])
    nib.save(nib.Nifti1Image(vol.astype(np.float32), aff), str(d / "flair.nii.gz"))
    nib.save(nib.Nifti1Image(les.astype(np.uint8), aff), str(d / "mask.nii.gz"))
    row = {"study_id": sid, "patient_id": sid, "label": "tumor", "image_flair": str(d / "flair.nii.gz"),
           "image_dwi": "", "mask": str(d / "mask.nii.gz")}
    if dwi:
        nib.save(nib.Nifti1Image((np.where(head, 50.0, 0.0) + rng.normal(0, 2, head.shape)).astype(np.float32), aff),
                 str(d / "dwi.nii.gz"))
        row["image_dwi"] = str(d / "dwi.nii.gz")
    return row


def _manifest(root: Path, ratios: list[float], *, dwi: bool, seed: int = 0) -> Path:
    rows = [_study(root, f"{root.name}{i}", r, seed + i, dwi=dwi) for i, r in enumerate(ratios)]
    p = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(p, index=False)
    return p


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    root = tmp_path_factory.mktemp("realism")
    syn = _manifest(root / "syn", [1.3, 1.45, 1.6, 1.75, 1.9, 2.0], dwi=True)
    cache = root / "cache"
    assert main(["preprocess", str(syn), "--cache", str(cache), "--workers", "1", "--no-progress",
                 "--shape", "6,24,24", "--sequences", "dwi,flair", "--no-register"]) == 0
    return {"root": root, "syn": syn, "cache": cache,
            "real_in": _manifest(root / "rin", [1.5, 1.8], dwi=False, seed=50),
            "real_out": _manifest(root / "rout", [3.0], dwi=False, seed=60)}


def _verdict(res: dict, seq: str, metric: str) -> str:
    return res["sequences"][seq]["coverage"][metric]["verdict"]


def test_compare_cli_verdict_flips_and_numbers(cohorts, tmp_path, capsys):
    c = cohorts
    out_in, out_out = tmp_path / "in", tmp_path / "out.png"
    assert main(["inspect", str(c["syn"]), "--cache", str(c["cache"]), "--compare", str(c["real_in"]),
                 "--out", str(out_in)]) == 0
    assert main(["inspect", str(c["syn"]), "--cache", str(c["cache"]), "--compare", str(c["real_out"]),
                 "--out", str(out_out)]) == 0
    r_in = json.loads((out_in / "realism.json").read_text(encoding="utf-8"), parse_constant=_no_nan)
    r_out = json.loads(out_out.with_suffix(".json").read_text(encoding="utf-8"), parse_constant=_no_nan)
    for p in (out_in / "realism.png", out_out):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _verdict(r_in, "flair", "lesion_contrast") == "covered"
    assert _verdict(r_out, "flair", "lesion_contrast") == "not covered"
    assert r_out["sequences"]["flair"]["coverage"]["lesion_contrast"]["outside"][0]["side"] == "high"
    assert r_in["skipped_sequences"] == {"dwi": "no real study has dwi"} and set(r_in["sequences"]) == {"flair"}
    # the real cohort was preprocessed with the synthetic cache's config, beside the output
    (real_cache,) = out_in.glob("real_cache_*")
    idx = json.loads((real_cache / "index.json").read_text(encoding="utf-8"))
    assert idx["config"] == json.loads((c["cache"] / "index.json").read_text(encoding="utf-8"))["config"]
    # numbers: a brighter lesion has a larger contrast; the lesion is ~its true share of the head
    syn_rows = r_in["sequences"]["flair"]["studies"]["synthetic"]
    contrast = [r["lesion_contrast"] for r in syn_rows]
    assert all(x > 0 for x in contrast) and contrast == sorted(contrast)
    vol = r_in["sequences"]["flair"]["studies"]["real"][0]["lesion_volume"]
    assert 0.01 < vol < 0.15
    hist = r_in["sequences"]["flair"]["histogram"]
    assert len(hist["edges"]) == len(hist["synthetic_mean"]) + 1 and sum(hist["synthetic_mean"]) == pytest.approx(1.0)
    # the verdict table of the JSON matches the per-sequence coverage
    row = next(v for v in r_out["verdicts"] if v["metric"] == "lesion_contrast" and v["class"] == "all")
    assert row["verdict"] == "not covered" and row["inside"] == 0 and row["n_real"] == 1
    # each real study's rank among the synthetic values: the too-bright lesion above all of them
    assert r_out["sequences"]["flair"]["studies"]["real"][0]["percentile"]["lesion_contrast"] == 100.0
    assert 0.0 < r_in["sequences"]["flair"]["studies"]["real"][0]["percentile"]["lesion_contrast"] < 100.0
    # the summary line counts the JSON's verdicts with data
    judged = [v["verdict"] for v in r_out["verdicts"] if v["verdict"] != "no data"]
    assert "not covered" in judged and "covered" in judged
    summary = f"{judged.count('covered')} of the {len(judged)} verdicts with data covered"
    assert summary in capsys.readouterr().out


def test_per_finding_verdicts_are_stricter_than_per_class(tmp_path):
    """A class that mixes findings covers a real value its own finding does not reach: the real
    finding is judged against the synthetic studies of that finding ("tumor: a"), from the manifest's
    ``finding`` column or, for a synthetic study, the class's finding in its ground_truth.json."""
    root = tmp_path / "syn"
    rows = [_study(root, f"s{i}", r, i, dwi=False) for i, r in enumerate([1.3, 1.35, 1.4, 1.45, 1.8, 1.85, 1.9, 2.0])]
    for i, row in enumerate(rows):  # "a": the dim half (ground_truth.json), "b": the bright half (column)
        if i < 4:
            truth = {"label": "tumor", "findings": [{"class": "others", "variant": "wmh", "comorbid": True},
                                                    {"class": "tumor", "variant": "a"}]}
            (root / row["study_id"] / "ground_truth.json").write_text(json.dumps(truth), encoding="utf-8")
        else:
            row["finding"] = "b"
    syn = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(syn, index=False)
    cache = tmp_path / "cache"
    assert main(["preprocess", str(syn), "--cache", str(cache), "--workers", "1", "--no-progress",
                 "--shape", "6,24,24", "--sequences", "flair", "--no-register"]) == 0
    real = _study(tmp_path / "real", "r0", 1.85, 70, dwi=False)
    real_csv = tmp_path / "real.csv"
    pd.DataFrame([{**real, "finding": "a"}]).to_csv(real_csv, index=False)
    _, _, res = realism_report(syn, cache, real_csv, tmp_path / "out")
    verdicts = {v["class"]: v["verdict"] for v in res["verdicts"] if v["metric"] == "lesion_contrast"}
    assert verdicts == {"all": "covered", "tumor": "covered", "tumor: a": "not covered"}, verdicts
    row = next(v for v in res["verdicts"] if v["metric"] == "lesion_contrast" and v["class"] == "tumor: a")
    assert row["n_real"] == 1 and len(row["real_values"]) == 1 and row["n_synthetic"] == 4
    found = study_findings(pd.read_csv(syn))
    assert [found[f"s{i}"] for i in range(8)] == ["a"] * 4 + ["b"] * 4  # the comorbid finding is not the class's
    (root / "s0" / "ground_truth.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(MedAlignError, match=r"study s0: cannot read .*ground_truth\.json"):
        study_findings(pd.read_csv(syn))


def _no_nan(name: str):
    raise AssertionError(f"non-standard JSON constant {name}")


def test_compare_refuses_to_overwrite_and_writes_atomically(cohorts, tmp_path, monkeypatch):
    c = cohorts
    out = tmp_path / "r"
    args = ["inspect", str(c["syn"]), "--cache", str(c["cache"]), "--compare", str(c["real_in"]), "--out", str(out)]
    assert main(args) == 0
    before = (out / "realism.json").read_bytes()
    assert main(args) == 2  # an earlier report is there: refused, untouched
    assert (out / "realism.json").read_bytes() == before
    assert main(args + ["--overwrite"]) == 0
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left

    # a failure while drawing leaves nothing half-written (and no JSON without its figure)
    import medalign.data.inspect as insp

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(insp, "realism_figure", boom)
    with pytest.raises(RuntimeError):
        realism_report(c["syn"], c["cache"], c["real_in"], tmp_path / "f", overwrite=False)
    assert not (tmp_path / "f" / "realism.json").exists() and not (tmp_path / "f" / "realism.png").exists()


def test_compare_needs_cache_preprocessed_alike(cohorts, tmp_path):
    c = cohorts
    assert main(["inspect", str(c["syn"]), "--compare", str(c["real_in"]), "--out", str(tmp_path / "a")]) == 2
    # a real cache preprocessed differently (another grid) is refused, not compared
    other = tmp_path / "other_cache"
    assert main(["preprocess", str(c["real_in"]), "--cache", str(other), "--workers", "1", "--no-progress",
                 "--shape", "4,16,16", "--sequences", "dwi,flair", "--no-register"]) == 0
    assert main(["inspect", str(c["syn"]), "--cache", str(c["cache"]), "--compare", str(c["real_in"]),
                 "--compare-cache", str(other), "--out", str(tmp_path / "b")]) == 2
    assert not (tmp_path / "b" / "realism.json").exists()


def test_report_shows_realism_section(cohorts, tmp_path):
    from medalign.eval.report import REALISM, _Run, _realism_section
    from medalign.eval.report_doc import Doc

    c = cohorts
    run = tmp_path / "run"
    assert main(["inspect", str(c["syn"]), "--cache", str(c["cache"]), "--compare", str(c["real_out"]),
                 "--out", str(run / "realism")]) == 0
    doc = Doc(tmp_path, tmp_path / "files")
    _realism_section(doc, _Run(run, "run", {"cache_dir": str(c["cache"])}, lambda s: None))
    html = "\n".join(doc.html)
    assert REALISM in html and "data:image/png;base64," in html and "not covered" in html
    assert "not the cache this run trained on" not in html
    # the second place: CACHE/realism of the run's cache; computed on another cache -> said so
    import shutil

    shutil.copytree(run / "realism", tmp_path / "cache2" / "realism")
    doc2 = Doc(tmp_path, tmp_path / "files")
    _realism_section(doc2, _Run(tmp_path / "run2", "run2", {"cache_dir": str(tmp_path / "cache2")}, lambda s: None))
    assert REALISM in "\n".join(doc2.html) and "not the cache this run trained on" in "\n".join(doc2.html)
    empty = Doc(tmp_path, tmp_path / "files")  # no realism outputs: no section
    _realism_section(empty, _Run(tmp_path / "other", "o", {}, lambda s: None))
    assert empty.html == []


# ------------------------------------------------------------------------- the real cases
@pytest.mark.skipif(not (SHARED / "real_dev").is_dir() or not (SHARED / "brats2015").is_dir(),
                    reason=f"real cases not found at {SHARED}")
def test_real_cases_against_tiny_cohort(cohorts, tmp_path):
    spec = importlib.util.spec_from_file_location("bench_realism", ROOT / "benchmarks" / "realism.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.real_manifest_rows(SHARED)
    keep = [r for r in rows if r["study_id"].startswith("wmh_") or r["study_id"] == "philips_dwi_volunteer"]
    keep += [r for r in rows if r["study_id"].startswith("brats_")][:1]
    real = tmp_path / "real.csv"
    pd.DataFrame(keep).to_csv(real, index=False)
    png, js, res = realism_report(cohorts["syn"], cohorts["cache"], real, tmp_path / "out")
    assert png.is_file() and js.is_file() and res["real"]["failed"] == []
    assert set(res["sequences"]) == {"dwi", "flair"}  # the volunteer DWI and every FLAIR
    flair = {r["study_id"]: r for r in res["sequences"]["flair"]["studies"]["real"]}
    assert len(flair) == 4
    # WMH and glioma are bright on FLAIR, and white-matter lesions are much smaller than a glioma
    assert all(r["lesion_contrast"] > 0.3 for r in flair.values())
    brats = next(r for s, r in flair.items() if s.startswith("brats_"))
    assert all(r["lesion_volume"] < brats["lesion_volume"] for s, r in flair.items() if s.startswith("wmh_"))
    dwi = res["sequences"]["dwi"]["studies"]["real"]
    assert [r["study_id"] for r in dwi] == ["philips_dwi_volunteer"] and dwi[0]["lesion_contrast"] is None


def test_texture_grows_with_blotches_not_with_offset():
    """The texture figure rises with mid-scale blotches (what hides gyri), is unchanged by an
    affine intensity change (z-scoring), and ignores the lesion and its rim."""
    from scipy import ndimage

    rng = np.random.default_rng(1)
    head = _box_head()
    smooth = np.where(head, np.sin(np.indices(head.shape)[1] / 6.0), 0.0)  # smooth tissue structure
    blotch = ndimage.gaussian_filter(rng.normal(size=head.shape), sigma=(0, 1, 1))
    blotch /= blotch.std()
    tex = {a: study_metrics(np.where(head, smooth + a * blotch, 0.0), head)["texture"] for a in (0.05, 0.2, 0.4)}
    assert tex[0.05] < tex[0.2] < tex[0.4]
    vol = np.where(head, smooth + 0.2 * blotch, 0.0)
    assert study_metrics(3.0 * vol + 2.0, head)["texture"] == pytest.approx(tex[0.2], rel=1e-6)
    lesion = np.zeros(head.shape, np.uint8)
    lesion[3:5, 18:23, 18:23] = 1
    with_lesion = np.where(lesion > 0, 5.0, vol)
    assert study_metrics(with_lesion, head, lesion)["texture"] == pytest.approx(tex[0.2], rel=0.05)
    assert study_metrics(with_lesion, head)["texture"] > tex[0.2]  # unmasked, the bright lesion counts


def test_local_contrast_sees_thin_bright_lesions_not_the_head_edge():
    """The local-contrast figure: 0 for a flat head of any level (the background is not surround), the
    excess of a lesion over enough voxels (above the 99.9th percentile), the same with or without a mask."""
    head = _box_head()  # 5400 voxels: the 99.9th percentile is the 6th brightest voxel
    for level in (1.0, -2.0):
        assert study_metrics(np.where(head, level, 0.0), head)["local_contrast"] == pytest.approx(0.0, abs=1e-9)
    vol = np.where(head, 1.0, 0.0)
    lesion = np.zeros(head.shape, np.uint8)
    lesion[1:5, 20, 12:14] = 1  # 4 slices x a 1 x 2 in-plane streak: 8 voxels
    vol[lesion > 0] = 3.0
    expected = 2.0 * (1 - 2 / 81)  # the surround's mean holds the streak's own 2 voxels of 81
    m = study_metrics(vol, head, lesion)
    assert m["local_contrast"] == pytest.approx(expected)
    assert study_metrics(vol, head)["local_contrast"] == pytest.approx(expected)
    edge = np.where(head, 1.0, 0.0)
    edge[1:5, 5, 12:14] = 3.0  # the same streak on the head's edge: its surround is half background
    assert study_metrics(edge, head)["local_contrast"] == pytest.approx(2.0 * (1 - 2 / 45))


def test_normal_local_contrast_leaves_the_lesion_out():
    """The normal anatomy's local contrast: a bright lesion does not count once its mask is given (a flat
    head stays 0), a bright structure outside the mask does; no mask, no figure; an empty mask = the head."""
    head = _box_head()
    vol = np.where(head, 1.0, 0.0)
    lesion = np.zeros(head.shape, np.uint8)
    lesion[1:5, 20, 12:14] = 1
    vol[lesion > 0] = 3.0
    m = study_metrics(vol, head, lesion)
    assert m["local_contrast"] > 1.5 and m["normal_local_contrast"] == pytest.approx(0.0, abs=1e-9)
    assert study_metrics(vol, head)["normal_local_contrast"] is None
    anatomy = vol.copy()
    anatomy[1:5, 12, 20:22] = 3.0  # the same streak where no lesion is marked: normal anatomy that stands out
    assert study_metrics(anatomy, head, lesion)["normal_local_contrast"] == pytest.approx(m["local_contrast"])
    empty = np.zeros_like(lesion)
    assert study_metrics(anatomy, head, empty)["normal_local_contrast"] == pytest.approx(study_metrics(anatomy, head)["local_contrast"])


def test_texture_calibration_figure_rises_with_synthetic_texture():
    """benchmarks/texture_calibration.py: the figure TEXTURE_CV was set by grows with the CV of
    the synthetic texture, on a real synthesised study, and leaves the lesion out."""
    spec = importlib.util.spec_from_file_location("bench_texture", ROOT / "benchmarks" / "texture_calibration.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    from medalign.data.synth.brain import plan_cohort, synthesize_study

    truth = next(t for t in plan_cohort(20, seed=3) if t["label"] == "normal")
    truth["domain"]["skull_stripped"] = True
    fig = {}
    for cv in (0.0, 0.12):
        truth["domain"]["texture_cv"] = cv
        x, affine = synthesize_study(truth, shape_mode="clinical")["flair"]
        fig[cv] = bench.texture(x.astype(np.float32), np.linalg.norm(affine[:3, :3], axis=0), x > 0)
    assert fig[0.12] > 1.2 * fig[0.0]
