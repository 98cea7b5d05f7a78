"""Bad DICOM input gets a one-line reason in series.csv and the summary, and nothing half-written;
geometry survives NIfTI -> DICOM -> ingest (axial, sagittal, oblique, enhanced multi-frame, DWI)."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from ingest_fakes import axial_affine, phantom

from medalign.data.ingest import ingest
from medalign.data.synth.dicom_export import _base, write_series
from medalign.errors import CohortError

STUDY = {"study_uid": "1.2.826.0.1.3680043.8.498.1", "frame_uid": "1.2.826.0.1.3680043.8.498.2",
         "patient_name": "DOE^JOHN", "mrn": "MRN1", "birth_date": "19600101", "accession": "ACC1"}


def _series(root: Path, kind: str, number: int, data: np.ndarray, affine: np.ndarray, **kw) -> list[Path]:
    uid = f"1.2.826.0.1.3680043.8.498.1.{number}"
    fields = _base(STUDY, uid, number, kind, kw.pop("vendor", "siemens"), np.random.default_rng(0), False, None)
    names = iter(f"s{number}/im{i:03d}" for i in range(1000))
    return write_series(root, fields, data, affine, vendor=fields["Manufacturer"].split()[0].lower(), names=names, **kw)


@pytest.fixture
def study(tmp_path) -> dict:
    """A FLAIR (series 1, 8 slices) and a T2 (series 2) of one study."""
    rng = np.random.default_rng(0)
    root = tmp_path / "dicom"
    flair = _series(root, "flair", 1, phantom(rng), axial_affine())
    _series(root, "t2", 2, phantom(rng), axial_affine())
    return {"root": root, "flair": flair, "out": tmp_path / "cohort"}


def _edit(path: Path, **kw) -> None:
    ds = pydicom.dcmread(path)
    for k, v in kw.items():
        setattr(ds, k, v)
    ds.save_as(path)


def _tilt(p: Path) -> None:
    c, s = np.cos(0.1), np.sin(0.1)
    _edit(p, ImageOrientationPatient=[1, 0, 0, 0, c, s])


def _shift(p: Path) -> None:
    ds = pydicom.dcmread(p)
    _edit(p, ImagePositionPatient=[float(v) for v in ds.ImagePositionPatient[:2]] + [float(ds.ImagePositionPatient[2]) + 1.3])


def _compress(p: Path) -> None:
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLSLossless

    ds = pydicom.dcmread(p)
    ds.PixelData = encapsulate([b"\xff\xd8not-really-jpeg-ls\xff\xd9"])
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.save_as(p)


CASES = {
    "truncated": (lambda f: f[3].write_bytes(f[3].read_bytes()[:-100]), "is truncated"),
    "missing_slices": (lambda f: f[4].unlink(), "missing slices: a gap of 8.00 mm"),
    "mixed_orientations": (lambda f: _tilt(f[2]), "mixed orientations within one series"),
    "inconsistent_spacing": (lambda f: _shift(f[3]), "inconsistent slice spacing"),
    "duplicated_sop": (lambda f: _edit(f[2], SOPInstanceUID=pydicom.dcmread(f[1]).SOPInstanceUID), "duplicated SOPInstanceUID"),
    "one_slice": (lambda f: [p.unlink() for p in f[1:]], "a series of one slice"),
    "compressed_no_decoder": (lambda f: [_compress(p) for p in f], "no decoder installed; install one of"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_series_is_reported_and_not_written(study, case) -> None:
    if case == "compressed_no_decoder":
        from pydicom.pixels import get_decoder
        from pydicom.uid import JPEGLSLossless

        if get_decoder(JPEGLSLossless).is_available:
            pytest.skip("a JPEG-LS decoder is installed here")
    corrupt, message = CASES[case]
    corrupt(study["flair"])
    s = ingest(study["root"], study["out"])
    assert len(s["errors"]) == 1 and message in s["errors"][0] and "\n" not in s["errors"][0], s["errors"]
    assert s["errors"][0].startswith("study S") and "series 1 (t2_tirm_tra_dark-fluid, flair)" in s["errors"][0]
    sr = pd.read_csv(study["out"] / "series.csv").set_index("series_number")
    assert message in sr.loc[1, "reason"] and not sr.loc[1, "chosen"] and sr.loc[2, "chosen"]
    df = pd.read_csv(study["out"] / "manifest.csv", dtype=str, keep_default_na=False)
    assert df.loc[0, "image_flair"] == "" and df.loc[0, "image_t2"].endswith("t2.nii.gz")
    written = sorted(p.name for p in (study["out"] / "studies").rglob("*") if p.is_file())
    assert written == ["ingest.json", "t2.nii.gz"]  # no flair file, no temporary leftovers
    if case == "compressed_no_decoder":
        assert "pylibjpeg" in s["errors"][0]


def test_a_bad_series_falls_back_to_the_next_candidate(study) -> None:
    rng = np.random.default_rng(1)
    _series(study["root"], "flair", 3, phantom(rng), axial_affine())  # a repeat: preferred, but broken
    files = sorted((study["root"] / "s3").iterdir())
    _edit(files[2], SOPInstanceUID=pydicom.dcmread(files[1]).SOPInstanceUID)
    s = ingest(study["root"], study["out"])
    sr = pd.read_csv(study["out"] / "series.csv").set_index("series_number")
    assert "duplicated SOPInstanceUID" in sr.loc[3, "reason"] and sr.loc[1, "chosen"] and len(s["errors"]) == 1


def test_no_readable_dicom_writes_nothing(tmp_path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("not dicom")
    (tmp_path / "in" / "IM0001").write_bytes(b"\x00" * 300)
    with pytest.raises(CohortError, match=r"no readable DICOM MR image series among 2 file\(s\) \(2 not DICOM"):
        ingest(tmp_path / "in", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(CohortError, match="DICOM folder not found"):
        ingest(tmp_path / "missing", tmp_path / "out")


def _oblique(deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    rot = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
    a = axial_affine((1.5, 1.7, 3.0))
    a[:3, :3] = rot @ a[:3, :3]
    return a


def _sagittal() -> np.ndarray:
    a = np.zeros((4, 4))
    a[:3, :3] = [[0, 0, -3.5], [1.2, 0, 0], [0, 1.1, 0]]  # i -> A, j -> S, k -> L (slices along x)
    a[:, 3] = [20.0, -8.0, 5.0, 1.0]
    return a


@pytest.mark.parametrize("name, affine, kw", [
    ("axial", axial_affine(), {}),
    ("sagittal", _sagittal(), {}),
    ("oblique", _oblique(17.0), {}),
    ("enhanced_multiframe", _oblique(-9.0), {"enhanced": True, "vendor": "philips"}),
])
def test_geometry_round_trip(tmp_path, name, affine, kw) -> None:
    rng = np.random.default_rng(3)
    data = rng.integers(0, 3000, (9, 7, 6)).astype(np.float32)  # (i, j, k), all distinct layouts
    files = _series(tmp_path / "dicom", "flair", 1, data, affine, **kw)
    assert len(files) == (1 if kw.get("enhanced") else 6)
    ingest(tmp_path / "dicom", tmp_path / "out")
    out = nib.load(next((tmp_path / "out" / "studies").glob("*/flair.nii.gz")))
    a = nib.as_closest_canonical(nib.Nifti1Image(data, affine))
    b = nib.as_closest_canonical(out)
    np.testing.assert_allclose(b.affine, a.affine, atol=1e-4)  # orientation, spacing and origin
    np.testing.assert_array_equal(np.asarray(b.dataobj), np.asarray(a.dataobj))
    assert nib.aff2axcodes(out.affine) == nib.aff2axcodes(affine) or name == "sagittal"


@pytest.mark.parametrize("vendor, directions", [("siemens", 1), ("ge", 1), ("philips", 3)])
def test_dwi_series_yields_the_b1000_volume(tmp_path, vendor, directions) -> None:
    rng = np.random.default_rng(4)
    data = rng.integers(100, 3000, (8, 6, 5)).astype(np.float32)
    bvals = [0.0, 1000.0] if vendor != "ge" else [1000.0]
    _series(tmp_path / "dicom", "dwi", 1, data, axial_affine(), vendor=vendor, bvalues=bvals, directions=directions)
    s = ingest(tmp_path / "dicom", tmp_path / "out")
    sr = pd.read_csv(tmp_path / "out" / "series.csv")
    assert sr.loc[0, "sequence"] == "dwi" and "b-values" in sr.loc[0, "reason"] and not s["errors"]
    out = nib.load(next((tmp_path / "out" / "studies").glob("*/dwi.nii.gz")))
    expect = np.rint(data * np.exp(-0.5))  # what the generator stored at b=1000
    np.testing.assert_allclose(np.asarray(out.dataobj), expect, rtol=1e-4, atol=0.5)
