"""PneumoniaMNIST loader on the real file (skips when ../shared/data is absent)."""
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from medalign.data.xray import PneumoniaMNISTDataset, load_pneumoniamnist, pseudo_instances
from medalign.errors import CohortError

DATA = Path(os.environ.get("MEDALIGN_SHARED_DATA", Path(__file__).resolve().parents[2] / ".." / "shared" / "data"))
NPZ = DATA / "pneumoniamnist" / "pneumoniamnist.npz"
real = pytest.mark.skipif(not NPZ.is_file(), reason=f"real PneumoniaMNIST not found at {NPZ}")


@real
def test_real_pneumoniamnist_splits():
    d = load_pneumoniamnist(NPZ)
    assert {k: v[0].shape[0] for k, v in d.items()} == {"train": 2428, "val": 270, "test": 468}
    for x, y in d.values():
        assert x.dtype == np.uint8 and x.shape[1:] == (28, 28) and set(np.unique(y)) <= {0, 1}


@real
def test_real_pneumoniamnist_dataset_sample():
    ds = PneumoniaMNISTDataset("val", path=NPZ, limit=8, size=16)
    s = ds[3]
    assert len(ds) == 8 and s["image"].shape == (1, 16, 16) and s["image"].dtype == torch.float32
    assert 0.0 <= float(s["image"].min()) and float(s["image"].max()) <= 1.0
    assert s["patient_id"] == s["study_id"] == f"pmnist-val-{int(ds.index[3])}" and s["label"] in (0, 1)
    assert len(set(ds.labels.tolist())) == 2  # the subset is not a one-class prefix


def test_bad_file_names_the_file(tmp_path):
    with pytest.raises(CohortError, match="not found"):
        load_pneumoniamnist(tmp_path / "nope.npz")
    bad = tmp_path / "bad.npz"
    np.savez(bad, train_images=np.zeros((2, 4, 4), np.uint8), train_labels=np.zeros((2, 1), np.uint8))
    with pytest.raises(CohortError, match=r"bad\.npz.*|missing key 'val_images'"):
        load_pneumoniamnist(bad)


def test_pseudo_instances_are_different_crops():
    x = torch.rand(3, 1, 16, 16)
    out = pseudo_instances(x, n=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 2, 1, 16, 16)
    assert not torch.allclose(out[:, 0], out[:, 1])


@real
def test_cli_label_efficiency_smoke(tmp_path):
    import json

    from medalign.cli import main

    out = tmp_path / "le"
    assert main(["ssl", "label-efficiency", "--out", str(out), "--data", str(NPZ), "--limit", "40", "--size", "16",
                 "--channels", "4,8", "--methods", "scratch,micle,clip", "--pretrain-epochs", "1",
                 "--batch-size", "16", "--finetune-steps", "2", "--n-boot", "5", "--fractions", "0.1,1.0"]) == 0
    res = json.loads((out / "label_efficiency.json").read_text(encoding="utf-8"))
    assert set(res["results"]) == {"scratch", "micle (pseudo-instances)"}
    assert set(res["results"]["scratch"]["probe"]) == {"0.1", "1.0"}
    assert any("No patient ids" in n for n in res["notes"])
    extra = json.loads((out / "report_extras" / "label_efficiency.json").read_text(encoding="utf-8"))
    assert extra["images"] == ["report_extras/label_efficiency.png"] and len(extra["tables"]) == 2
    assert (out / extra["images"][0]).is_file()
