"""Finding 6: decompression bombs, constant volumes and multi-series DICOM folders are refused."""
from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medalign.data.imaging import PreprocessConfig, preprocess_study
from medalign.data.volume_io import read_volume
from medalign.errors import CohortError


def test_gzip_bomb_is_refused_from_its_header(tmp_path):
    p = tmp_path / "bomb.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((500, 500, 300), np.uint8), np.eye(4)), str(p))
    assert p.stat().st_size < 1 << 20  # ~285 KB on disk, 75 M voxels declared
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(CohortError, match="over the limit") as e:
        read_volume(p, study_id="s1")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert "s1" in str(e.value) and str(p) in str(e.value)
    assert peak < 32 << 20 and time.perf_counter() - t0 < 5  # refused before decompressing (was ~900 MB)


def test_constant_volume_is_refused(tmp_path):
    # Normalisation already refused it ("constant inside the head"); this guards the earlier check
    # at read time (before registration and resampling run on a blank volume).
    p = tmp_path / "flair.nii.gz"
    nib.save(nib.Nifti1Image(np.full((20, 24, 12), 7.0, np.float32), np.eye(4)), str(p))
    with pytest.raises(CohortError, match="volume is constant") as e:
        preprocess_study({"flair": str(p)}, PreprocessConfig(sequences=("flair",), shape=(8, 16, 16)), study_id="c1")
    assert "c1" in str(e.value) and str(p) in str(e.value)


def _write_series(folder: Path, uid: str, n_slices: int, value: int) -> None:
    arr = (np.arange(16 * 16 * n_slices).reshape(n_slices, 16, 16) % 50 + value).astype(np.int16)  # (z, y, x)
    img = sitk.GetImageFromArray(arr)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(n_slices):
        sl = img[:, :, k]
        for tag, val in {"0008|0060": "MR", "0020|000e": uid, "0020|000d": "1.2.3.4", "0020|0013": str(k + 1),
                         "0020|0037": "1\\0\\0\\0\\1\\0", "0020|0032": f"0\\0\\{5.0 * k}", "0028|0030": "1\\1",
                         "0018|0050": "5.0"}.items():
            sl.SetMetaData(tag, val)
        writer.SetFileName(str(folder / f"{uid[-1]}_{k:03d}.dcm"))
        writer.Execute(sl)


def test_dicom_folder_with_two_series_lists_them(tmp_path):
    folder = tmp_path / "study"
    folder.mkdir()
    _write_series(folder, "1.2.826.0.1.3680043.2.1125.1.1", 6, 10)
    _write_series(folder, "1.2.826.0.1.3680043.2.1125.1.2", 4, 500)
    with pytest.raises(CohortError, match="2 DICOM series") as e:
        read_volume(folder, study_id="d1")  # used to take the larger series silently
    msg = str(e.value)
    assert "1.2.826.0.1.3680043.2.1125.1.1 (6 files)" in msg and "1.2.826.0.1.3680043.2.1125.1.2 (4 files)" in msg
    one = tmp_path / "one"
    one.mkdir()
    _write_series(one, "1.2.826.0.1.3680043.2.1125.1.3", 5, 10)
    assert read_volume(one).GetSize() == (16, 16, 5)
