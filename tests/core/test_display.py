"""One display convention (issue 21, finding 1): a lesion in the patient's LEFT anterior quadrant,
stored as RAS, LPS and LAS NIfTI files, must appear on the same side (the viewer's right when
radiological, the viewer's left when neurological, anterior up) in every image output: index
thumbnails from raw files and from the cache, the inspect sheet (raw and cached), the report's
thumbnails and the attention overlay of `attend` / the localise gallery."""
from __future__ import annotations

import io
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from medalign.errors import MedAlignError
from medalign.utils import axial_for_display, display_convention, side_labels

N = 24  # voxels per in-plane axis (2 mm)


def _ras_volume() -> np.ndarray:
    """(x, y, z) in RAS voxel order: a round head, a bright lesion at the patient's left-anterior."""
    x, y, z = np.meshgrid(np.arange(N), np.arange(N), np.arange(8), indexing="ij")
    c = (N - 1) / 2
    head = ((x - c) ** 2 + (y - c) ** 2) <= (0.45 * N) ** 2
    vol = np.where(head, 100.0, 0.0)
    # RAS: x grows towards the patient's Right, so the patient's left is low x; y grows anterior.
    lesion = head & (x < c - 2) & (y > c + 2)
    vol[lesion] = 400.0
    rng = np.random.default_rng(0)
    return (vol + np.where(head, rng.normal(0, 2, vol.shape), 0)).astype(np.float32)


def _write(folder: Path, code: str) -> Path:
    """The same world image stored in another voxel order: flip the RAS axes and negate the affine."""
    ras = _ras_volume()
    aff = np.diag([2.0, 2.0, 3.0, 1.0])
    data = ras
    for axis, keep in enumerate(("R", "A")):
        if code[axis] != keep:  # store this axis reversed: the voxel index now runs the other way
            data = np.flip(data, axis)
            flip = np.eye(4)
            flip[axis, axis], flip[axis, 3] = -1, ras.shape[axis] - 1
            aff = aff @ flip
    assert "".join(nib.aff2axcodes(aff)) == code
    p = folder / code / "flair.nii.gz"
    p.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), aff), str(p))
    return p


def _side(shown: np.ndarray) -> tuple[str, str]:
    """(viewer side, vertical half) where the bright lesion sits in a shown 2-D array (row 0 = top)."""
    a = np.asarray(shown, dtype=np.float64)
    if a.ndim == 3:
        a = a[..., :3].mean(-1)
    h, w = a.shape
    rows = slice(int(0.2 * h), int(0.45 * h))  # the upper band: clear of corner and mid-height markers
    left, right = a[rows, : w // 2].mean(), a[rows, w - w // 2:].mean()
    top, bottom = a[: h // 2, int(0.2 * w): int(0.8 * w)].mean(), a[h - h // 2:, int(0.2 * w): int(0.8 * w)].mean()
    return ("right" if right > left else "left"), ("top" if top > bottom else "bottom")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> dict:
    from medalign.data.cache import CohortCache, preprocess_cohort
    from medalign.data.imaging import PreprocessConfig

    root = tmp_path_factory.mktemp("display")
    rows = []
    for code in ("RAS", "LPS", "LAS"):
        p = _write(root, code)
        rows.append({"study_id": code, "patient_id": code, "split": "test", "label": "tumor",
                     "report": "Left frontal mass.", "image_flair": str(p.relative_to(root))})
    m = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(m, index=False)
    cfg = PreprocessConfig(sequences=("flair",), shape=(4, 16, 16), register=False, reg_spacing=3.0)
    preprocess_cohort(m, cfg, root / "cache", workers=1, progress=False)
    return {"root": root, "manifest": m, "cache": CohortCache(root / "cache"), "codes": ("RAS", "LPS", "LAS")}


@pytest.fixture
def shown(monkeypatch):
    """Every array handed to matplotlib's imshow (the first, grey layer of each panel)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.axes import Axes

    seen: list[np.ndarray] = []
    orig = Axes.imshow

    def spy(self, X, *a, **k):
        if k.get("cmap") == "gray":
            seen.append(np.asarray(X))
        return orig(self, X, *a, **k)

    monkeypatch.setattr(Axes, "imshow", spy)
    return seen


def _png(data: bytes | Path) -> np.ndarray:
    from PIL import Image

    raw = data.read_bytes() if isinstance(data, Path) else data
    return np.asarray(Image.open(io.BytesIO(raw)).convert("L"), dtype=np.float64)


@pytest.mark.parametrize("convention,side", [("radiological", "right"), ("neurological", "left")])
def test_every_output_shows_the_lesion_on_one_side(cohort, shown, tmp_path, monkeypatch, convention, side):
    from medalign.data.inspect import inspection_sheet
    from medalign.eval.localisation import attention_overlay_png
    from medalign.eval.plots import mid_axial_png
    from medalign.index.build import make_thumbnails

    monkeypatch.setenv("MEDALIGN_DISPLAY", convention)
    cache = cohort["cache"]
    want = (side, "top")
    for code in cohort["codes"]:
        raw = str(cohort["root"] / code / "flair.nii.gz")
        th = make_thumbnails(tmp_path / code, code, cached=None, paths={"flair": raw}, sequences=["flair"])
        assert _side(_png(tmp_path / code / th["flair"])) == want, f"index thumbnail from raw {code}"
        arr = cache.load(code)
        th = make_thumbnails(tmp_path / "c", code, cached=arr, paths={}, sequences=["flair"],
                             orientation=cache.config.canonical)
        assert _side(_png(tmp_path / "c" / th["flair"])) == want, f"index thumbnail from the cache, {code}"
        png = mid_axial_png(np.asarray(arr["image"]), orientation=cache.config.canonical, sequences=["flair"])
        assert _side(_png(png)) == want, f"report thumbnail {code}"
        img = np.asarray(arr["image"])  # (C, D, H, W)
        heat = (img[0] > np.percentile(img[0], 95)).astype(np.float64)  # (D, H, W) attention on the lesion
        shown.clear()
        attention_overlay_png(img, heat, None, tmp_path / f"att_{code}.png", sequences=["flair"],
                              slices=[img.shape[1] // 2], orientation=cache.config.canonical)
        assert [_side(s) for s in shown] == [want], f"attention overlay {code}"
    for cache_dir in (None, cohort["root"] / "cache"):
        shown.clear()
        inspection_sheet(cohort["manifest"], tmp_path / "sheet.png", cache_dir=cache_dir)
        assert [_side(s) for s in shown] == [want] * 3, f"inspect sheet (cache {cache_dir})"


def test_markers_and_convention_are_configurable(monkeypatch):
    monkeypatch.delenv("MEDALIGN_DISPLAY", raising=False)
    assert display_convention() == "radiological" and side_labels() == ("R", "L")
    assert side_labels("neurological") == ("L", "R")
    monkeypatch.setenv("MEDALIGN_DISPLAY", "sideways")
    with pytest.raises(MedAlignError, match="MEDALIGN_DISPLAY"):
        display_convention()
    with pytest.raises(MedAlignError, match="orientation"):
        axial_for_display(np.zeros((2, 2)), "SRA")
    a = np.arange(4).reshape(2, 2)  # rows posterior->anterior, columns towards the patient's right (RAS)
    assert axial_for_display(a, "RAS", "radiological").tolist() == [[3, 2], [1, 0]]
    assert axial_for_display(a, "LPS", "radiological").tolist() == [[0, 1], [2, 3]]


def test_thumbnail_has_markers_and_sequence_name(cohort, tmp_path, monkeypatch):
    """The thumbnail differs from the bare slice exactly where the markers are drawn (yellow L/R)."""
    from PIL import Image

    from medalign.index.build import make_thumbnails

    monkeypatch.delenv("MEDALIGN_DISPLAY", raising=False)
    raw = str(cohort["root"] / "RAS" / "flair.nii.gz")
    th = make_thumbnails(tmp_path, "RAS", cached=None, paths={"flair": raw}, sequences=["flair"])
    rgb = np.asarray(Image.open(tmp_path / th["flair"]).convert("RGB")).astype(int)
    yellow = (rgb[..., 0] > 200) & (rgb[..., 1] > 200) & (rgb[..., 2] < 80)  # only the markers are yellow
    h, w = yellow.shape
    assert yellow[:, : w // 8].any() and yellow[:, -w // 8:].any() and not yellow[:, w // 4: -w // 4].any()


def test_outputs_follow_the_umask_and_secrets_stay_private(tmp_path) -> None:
    """Issue 21, finding 3: files were created 0600 (mkstemp) and could not be shared."""
    import os
    import stat

    from medalign.utils import atomic_write_json, atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "report.html", "<html></html>")
        atomic_write_json(tmp_path / "id_map.json", {"key": "00"}, private=True)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "report.html").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "id_map.json").stat().st_mode) == 0o600
