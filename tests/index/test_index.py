"""Case index: FAISS wrapper, build/add, atomic versions, model check, CLI."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from serve_fakes import FakeModel, make_cohort

from medalign.errors import CohortError, MedAlignError
from medalign.index.build import add_to_index, build_index
from medalign.index.faiss_index import VectorIndex, brute_force_search, choose_kind, ivf_params, l2_normalise
from medalign.index.store import IndexStore, valid_study_id


# ---- FAISS wrapper ----------------------------------------------------------------------------
def test_l2_normalise_known_values_and_zero_row():
    x = l2_normalise(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(x, [[0.6, 0.8], [0.0, 0.0]], atol=1e-7)
    assert x.dtype == np.float32


def test_flat_index_matches_hand_computed_cosines():
    db = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]], np.float32)
    idx = VectorIndex.build(db)
    assert idx.kind == "flat"
    scores, ids = idx.search(np.array([[2.0, 0.0, 0.0]]), 3)  # query is scaled: cosine ignores norm
    assert ids[0].tolist() == [0, 2, 1]
    np.testing.assert_allclose(scores[0], [1.0, 1 / np.sqrt(2), 0.0], atol=1e-6)


def test_k_larger_than_index_is_clamped():
    idx = VectorIndex.build(np.eye(4, dtype=np.float32))
    scores, ids = idx.search(np.eye(4, dtype=np.float32)[:1], 50)
    assert ids.shape == (1, 4) and ids[0, 0] == 0


def test_flat_agrees_with_numpy_brute_force():
    rng = np.random.default_rng(0)
    db, q = l2_normalise(rng.standard_normal((500, 32))), l2_normalise(rng.standard_normal((5, 32)))
    s1, i1 = VectorIndex.build(db).search(q, 10)
    s2, i2 = brute_force_search(db, q, 10)
    assert (i1 == i2).all()
    np.testing.assert_allclose(s1, s2, atol=1e-5)


def test_size_threshold_and_ivf_parameters():
    assert choose_kind(10, exact_max=100) == "flat" and choose_kind(101, exact_max=100) == "ivf"
    assert choose_kind(4_000_000) == "ivf" and choose_kind(4_000_001) == "ivfsq"
    p = ivf_params(1_000_000)
    assert p == {"nlist": 8000, "nprobe": 8, "train_size": 320_000, "niter": 10, "n_trained": 1_000_000}


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_index_finds_exact_duplicates_and_extends(kind, tmp_path):
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((20, 16))
    db = (centres[rng.integers(0, 20, 2000)] + 0.05 * rng.standard_normal((2000, 16))).astype(np.float32)
    idx = VectorIndex.build(db, kind=kind)
    assert idx.kind == kind
    _, ids = idx.search(db[:20], 1)
    assert (ids[:, 0] == np.arange(20)).mean() >= 0.9  # near-duplicates in clusters: the point itself first
    idx.add(db[:3] * -1)
    assert idx.ntotal == 2003
    idx.save(tmp_path / "x.faiss")
    back = VectorIndex.load(tmp_path / "x.faiss", kind=kind, params=idx.params)
    assert back.ntotal == 2003


def test_study_id_pattern():
    assert valid_study_id("S001") and valid_study_id("sub-01_ses.2")
    for bad in ("../etc", "a/b", "..", ".hidden", "", "a..b", "x" * 200, "a b", "a%2Fb"):
        assert not valid_study_id(bad), bad


# ---- build ----------------------------------------------------------------------------------
def test_build_writes_store_thumbnails_and_model_record(built_index, fake_model):
    store = IndexStore.open(built_index)
    assert len(store) == 12 and store.meta["n_text"] == 12
    assert store.model_id == fake_model.model_id
    assert store.meta["preprocess_config"] == fake_model.preprocess_config
    assert store.meta["sequences"] == ["dwi", "flair"]
    rec = store.record(store.row("S004"))
    assert rec["label"] == "others" and "Case S004" in rec["report"] and "patient_id" not in rec
    png = store.thumb_file("S004", "flair")
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert store.thumb_file("S004", "t1") is None and store.thumb_file("../S004", "dwi") is None
    js = json.loads((built_index / store.version / "records.json").read_text(encoding="utf-8"))
    assert [r["study_id"] for r in js] == store.study_ids
    assert not list(built_index.glob(".v*"))  # no temp folders left


def test_search_by_own_vector_and_exact_report(built_index, fake_model):
    store = IndexStore.open(built_index)
    row = store.row("S005")
    hits = store.search(store.image_vector(row), 3)
    assert hits[0][0] == row and hits[0][1] == pytest.approx(1.0, abs=1e-5)
    assert row not in [r for r, _ in store.search(store.image_vector(row), 3, exclude_row=row)]
    q = fake_model.encode_text([store.record(row)["report"]])[0]
    assert store.search(q, 1, target="report")[0] == (row, pytest.approx(1.0, abs=1e-5))


def test_studies_without_report_are_not_in_report_index(tmp_path, fake_model, cohort):
    df = pd.read_csv(cohort, dtype=str, keep_default_na=False)
    for c in ("image_dwi", "image_flair"):
        df[c] = [str(cohort.parent / v) for v in df[c]]
    df.loc[2, "report"] = ""
    build_index(fake_model, df, tmp_path / "idx", thumbnails=False)
    store = IndexStore.open(tmp_path / "idx")
    assert store.meta["n_text"] == 11 and 2 not in store.text_rows.tolist()
    assert all(r != 2 for r, _ in store.search(fake_model.encode_text(["anything"])[0], 20, target="report"))


def test_build_from_cache_uses_cached_volumes(tmp_path, fake_model, cohort):
    class Cache:
        def __init__(self):
            self.loaded = []

        def load(self, sid):
            self.loaded.append(sid)
            img = np.random.default_rng(int(sid[1:])).random((2, 8, 32, 32)).astype(np.float32)  # (C, D, H, W)
            return {"image": img, "sequence_mask": np.array([True, False]), "mask": None}

    cache = Cache()
    build_index(fake_model, cohort, tmp_path / "idx", cache=cache)
    store = IndexStore.open(tmp_path / "idx")
    assert cache.loaded == store.study_ids
    assert sorted(store.record(0)["thumbs"]) == ["dwi"]  # masked-out channel gets no thumbnail


class _ArrayCache:
    """Cached studies as arrays; ``bad`` maps a study id to what its image holds instead."""

    def __init__(self, bad: dict | None = None):
        self.bad = bad or {}

    def load(self, sid):
        img = np.random.default_rng(int(sid[1:])).random((2, 8, 32, 32)).astype(np.float32)  # (C, D, H, W)
        if sid in self.bad:
            img[:] = self.bad[sid]
        return {"image": img, "sequence_mask": np.array([True, True]), "mask": None}


def test_cached_studies_are_encoded_in_batches_equal_to_one_by_one(tmp_path, fake_model, cohort):
    sizes = []

    class Counting(FakeModel):
        def encode_image(self, x, sequence_mask=None):
            sizes.append(len(x) if np.ndim(x) == 5 else 1)
            return super().encode_image(x, sequence_mask)

    cache = _ArrayCache()
    build_index(Counting(), cohort, tmp_path / "idx", cache=cache)
    assert sizes == [8, 4]  # 12 studies, 8 to a batch
    store = IndexStore.open(tmp_path / "idx")
    one_by_one = np.concatenate([fake_model.encode_image(cache.load(sid)["image"]) for sid in store.study_ids])
    assert np.allclose(store.image_embed, l2_normalise(one_by_one), atol=1e-6)


def test_a_failing_batch_names_its_study(tmp_path, fake_model, cohort):
    class Picky(FakeModel):
        def encode_image(self, x, sequence_mask=None):
            if np.any(np.asarray(x) < 0):
                raise ValueError("negative intensities")
            return super().encode_image(x, sequence_mask)

    with pytest.raises(CohortError, match="study S005: encoding the image failed: ValueError"):
        build_index(Picky(), cohort, tmp_path / "a", cache=_ArrayCache({"S005": -1.0}))
    with pytest.raises(CohortError, match="study S010: image embedding is not finite"):
        build_index(fake_model, cohort, tmp_path / "b", cache=_ArrayCache({"S010": np.nan}))
    assert not (tmp_path / "a" / "CURRENT").exists() and not (tmp_path / "b" / "CURRENT").exists()


def test_cache_with_other_settings_is_refused_and_missing_studies_fall_back(tmp_path, fake_model, cohort):
    class Cache:
        config = {"sequences": ["flair", "dwi"], "shape": [8, 32, 32]}

        def load(self, sid):
            raise CohortError("not in the cache", study_id=sid)

    with pytest.raises(MedAlignError, match=r"sequences=\['flair', 'dwi'\] but the model expects \['dwi', 'flair'\]"):
        build_index(fake_model, cohort, tmp_path / "a", cache=Cache())
    # a model trained on [0, 1]-scaled inputs must not be fed z-scores
    Cache.config = {"sequences": ["dwi", "flair"], "shape": [8, 32, 32], "normalise": "robust"}
    saved = fake_model.preprocess_config
    fake_model.preprocess_config = {**saved, "normalise": "zscore_unclipped"}
    try:
        with pytest.raises(MedAlignError, match="normalise=robust but the model expects zscore_unclipped"):
            build_index(fake_model, cohort, tmp_path / "c", cache=Cache())
    finally:
        fake_model.preprocess_config = saved
    Cache.config = {"sequences": ["dwi", "flair"], "shape": [8, 32, 32]}
    build_index(fake_model, cohort, tmp_path / "b", cache=Cache())  # every study falls back to its NIfTI
    assert len(IndexStore.open(tmp_path / "b")) == 12


def test_bad_study_id_error_names_study_and_row(tmp_path, fake_model, cohort):
    df = pd.read_csv(cohort, dtype=str, keep_default_na=False)
    df.loc[3, "study_id"] = "../evil"
    with pytest.raises(CohortError, match=r"study \.\./evil, row 4"):
        build_index(fake_model, df, tmp_path / "idx")


def test_unreadable_image_error_names_study_and_file(tmp_path, fake_model):
    m = make_cohort(tmp_path / "c", n=3)
    bad = tmp_path / "c" / "S001" / "dwi.nii.gz"
    bad.write_bytes(b"not a nifti")
    with pytest.raises(CohortError, match="S001"):
        build_index(fake_model, m, tmp_path / "idx")
    assert not (tmp_path / "idx" / "CURRENT").exists()


# ---- add, atomicity, model check --------------------------------------------------------------
def test_add_appends_new_version_and_refuses_duplicates(tmp_path, fake_model, built_index):
    idx = tmp_path / "idx"
    shutil.copytree(built_index, idx)
    s = add_to_index(idx, fake_model, make_cohort(tmp_path / "more", n=3, start=40))
    assert s["added"] == 3 and s["n_studies"] == 15
    store = IndexStore.open(idx)
    assert store.version == "v0002" and not (idx / "v0001").exists()
    row = store.row("S041")
    assert store.search(store.image_vector(row), 1)[0][0] == row
    assert store.search(store.image_vector(store.row("S003")), 1)[0][0] == store.row("S003")  # old rows intact
    with pytest.raises(CohortError, match="S040.*duplicate"):
        add_to_index(idx, fake_model, make_cohort(tmp_path / "dup", n=1, start=40))
    assert IndexStore.open(idx).version == "v0002"


def test_failed_add_leaves_index_unchanged(tmp_path, built_index, monkeypatch):
    idx = tmp_path / "idx"
    shutil.copytree(built_index, idx)
    model = FakeModel()
    more = make_cohort(tmp_path / "more", n=3, start=60)

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr("medalign.index.store.VectorIndex.save", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        add_to_index(idx, model, more)
    store = IndexStore.open(idx)
    assert store.version == "v0001" and len(store) == 12
    assert not list(idx.glob(".v*")) and not (idx / "v0002").exists()


def test_other_model_is_refused(tmp_path, built_index, cohort):
    other = FakeModel(seed=7)
    with pytest.raises(MedAlignError, match="built by model fake-model-0.*query model is fake-model-7"):
        IndexStore.open(built_index).check_model(other)
    with pytest.raises(MedAlignError, match="built by model"):
        add_to_index(built_index, other, cohort)
    from medalign.serve.app import create_app

    with pytest.raises(MedAlignError, match="built by model"):
        create_app(built_index, other)


def test_open_non_index_is_clear_error(tmp_path):
    with pytest.raises(MedAlignError, match="not a medalign index"):
        IndexStore.open(tmp_path)


# ---- CLI -------------------------------------------------------------------------------------
def test_cli_build_add_and_serve_guard(tmp_path, cohort, monkeypatch, capsys):
    from medalign.cli import main

    model = FakeModel()
    monkeypatch.setattr("medalign.index.commands._load_model", lambda run: model)
    out = tmp_path / "idx"
    assert main(["index", "build", str(tmp_path), "--manifest", str(cohort), "--out", str(out)]) == 0
    assert "12 studies" in capsys.readouterr().out
    more = make_cohort(tmp_path / "more", n=2, start=80)
    assert main(["index", "add", str(out), "--run", str(tmp_path), "--manifest", str(more)]) == 0
    assert len(IndexStore.open(out)) == 14
    assert main(["serve", str(out), "--host", "0.0.0.0"]) == 2
    assert "refusing to serve on 0.0.0.0 without a bearer token" in capsys.readouterr().err
    assert main(["serve", str(out), "--host", "0.0.0.0", "--token", "short"]) == 2
    # a good call reaches uvicorn with the access log off, the model loaded from the recorded run
    seen = {}
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: seen.update(kw, app=app))
    monkeypatch.setattr("medalign.api.load", lambda run_dir, **kw: seen.setdefault("run", run_dir) and model)
    assert main(["serve", str(out), "--port", "8123"]) == 0
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8123 and seen["access_log"] is False
    assert seen["run"] == str(tmp_path.resolve())
    assert main(["serve", str(out), "--host", "0.0.0.0", "--token", "t" * 20]) == 0 and seen["host"] == "0.0.0.0"
    assert main(["serve", str(out), "--cache-size", "7", "--max-uploads", "2", "--reload-s", "-1"]) == 0
    state = seen["app"].state.serve
    assert state.text.cache.size == 7 and state.uploads.limit == 2 + 4 and state.reload_s == -1
    # --volumes / --overlay-dir reach the attention overlays
    assert main(["serve", str(out), "--volumes", str(tmp_path / "vols"), "--overlay-dir", str(tmp_path / "ov")]) == 0
    ov = seen["app"].state.serve.overlays
    assert ov.volumes_dir == tmp_path / "vols" and ov.overlay_dir == tmp_path / "ov"


# ---- with the real model API (tiny CLIP run trained here) -------------------------------------------
@pytest.mark.slow
def test_real_model_index_and_service(tmp_path, monkeypatch):
    """medalign.api.load -> index build -> app loads the model from the recorded run -> queries."""
    pytest.importorskip("medalign.api")
    from pathlib import Path

    from fastapi.testclient import TestClient

    from medalign.config import load_config
    from medalign.serve.app import create_app
    from medalign.train.loop import fit

    tiny = Path(__file__).resolve().parents[2] / "configs" / "tiny" / "clip_tiny.yaml"
    if not tiny.is_file():
        pytest.skip("configs/tiny/clip_tiny.yaml not present")
    monkeypatch.setenv("MEDALIGN_CACHE", str(tmp_path / "text_cache"))
    cfg = load_config(tiny, ["train.epochs=1"])
    cfg["data"]["preprocess"] = {"sequences": ["dwi", "flair"], "shape": [8, 32, 32], "register": False}
    fit(cfg, tmp_path / "run")
    from medalign.api import load

    model = load(tmp_path / "run")
    manifest = make_cohort(tmp_path / "c", n=5)
    build_index(model, manifest, tmp_path / "idx", run_dir=str(tmp_path / "run"))
    store = IndexStore.open(tmp_path / "idx")
    assert store.model_id == model.model_id and store.meta["preprocess_config"]["shape"] == [8, 32, 32]
    client = TestClient(create_app(tmp_path / "idx"))  # model loaded from the run the index records
    assert client.get("/health").json()["model_id"] == model.model_id
    r = client.post("/search/text", json={"text": "acute infarct", "k": 3})
    assert r.status_code == 200 and len(r.json()["results"]) == 3
    files = {s: (f"{s}.nii.gz", (tmp_path / "c" / "S002" / f"{s}.nii.gz").read_bytes()) for s in ("dwi", "flair")}
    r = client.post("/search/upload", files=files, params={"k": 2})
    assert r.status_code == 200
    assert r.json()["results"][0]["study_id"] == "S002"  # same files, same preprocessing -> same embedding
    assert sum(r.json()["zero_shot"]["probs"]) == pytest.approx(1.0, abs=1e-4)
