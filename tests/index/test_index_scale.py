"""Index kinds chosen by size, recall measured at build time, extension without retraining."""
from __future__ import annotations

import numpy as np
import pytest

from medalign.index.faiss_index import (VectorIndex, brute_force_search, exact_neighbours, l2_normalise,
                                        memory_bytes)
from medalign.index.store import IndexStore, write_version


def _recall(index: VectorIndex, db: np.ndarray, q: np.ndarray, k: int = 10) -> float:
    _, exact = brute_force_search(db, q, k)
    _, found = index.search(q, k)
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, exact)]))


def test_exact_neighbours_match_numpy_across_chunks():
    rng = np.random.default_rng(0)
    db, q = l2_normalise(rng.standard_normal((1000, 16))), l2_normalise(rng.standard_normal((7, 16)))
    assert (exact_neighbours(db, q, 5, chunk=96) == brute_force_search(db, q, 5)[1]).all()


def test_nprobe_is_raised_until_measured_recall_holds():
    # uniform vectors have no clusters: 8 of 71 cells find few true neighbours, so tuning must raise nprobe
    rng = np.random.default_rng(1)
    db = l2_normalise(rng.standard_normal((5000, 32)))
    idx = VectorIndex.build(db, kind="ivf", recall_queries=128)
    p = idx.params
    assert p["nlist"] == 566 and p["nprobe"] > 8 and p["recall10"] >= 0.95 and p["recall_queries"] == 128
    fresh = l2_normalise(rng.standard_normal((100, 32)))  # queries never seen: recall holds there too
    assert _recall(idx, db, fresh) >= 0.9
    untuned = VectorIndex.build(db, kind="ivf", recall_queries=0)
    assert untuned.params["nprobe"] == 8 and "recall10" not in untuned.params
    assert _recall(untuned, db, fresh) < 0.9  # the tuning was needed


def test_tuning_asks_the_lower_bound_not_the_sample_mean_to_reach_the_target():
    from medalign.index.faiss_index import recall_lower_bound

    per_query = np.array([1.0] * 90 + [0.5] * 10)  # mean 0.95, SE 0.015
    assert per_query.mean() == pytest.approx(0.95)
    assert recall_lower_bound(per_query) == pytest.approx(0.95 - 1.645 * per_query.std(ddof=1) / 10)
    assert recall_lower_bound(per_query) < 0.95 and recall_lower_bound(np.ones(50)) == 1.0
    rng = np.random.default_rng(1)
    db = l2_normalise(rng.standard_normal((5000, 32)))
    p = VectorIndex.build(db, kind="ivf", recall_queries=128).params
    # the margin is kept: the lower bound reached the target, so the mean sits above it
    assert p["recall10_lower"] >= 0.95 and p["recall10"] > p["recall10_lower"]


@pytest.mark.parametrize("kind", ["ivfsq", "hnsw"])
def test_compact_and_graph_kinds_reach_target_recall(kind):
    rng = np.random.default_rng(2)
    centres = rng.standard_normal((30, 32))
    db = l2_normalise(centres[rng.integers(0, 30, 3000)] + 0.5 * rng.standard_normal((3000, 32)))
    idx = VectorIndex.build(db, kind=kind, recall_queries=100)
    assert idx.kind == kind and idx.params["recall10"] >= 0.95


def test_two_level_kmeans_gives_k_unit_cells_that_keep_clusters_whole():
    from medalign.index.faiss_index import _assign, _two_level_kmeans

    rng = np.random.default_rng(5)
    centres = l2_normalise(rng.standard_normal((40, 32)))
    lab = rng.integers(0, 40, 4000)
    x = l2_normalise(centres[lab] + 0.05 * rng.standard_normal((4000, 32)))
    cells = _two_level_kmeans(x, 40, niter=10, seed=0)
    assert cells.shape == (40, 32)
    np.testing.assert_allclose(np.linalg.norm(cells, axis=1), 1.0, atol=1e-5)
    a = _assign(x, cells)
    whole = [np.bincount(a[lab == c]).max() / (lab == c).sum() for c in range(40)]
    assert np.mean(whole) > 0.95  # each tight cluster sits (almost) entirely in one cell


def test_memory_estimates_known_values():
    assert memory_bytes("flat", 1000, 256) == 1_024_000
    assert memory_bytes("ivf", 1000, 256, {"nlist": 10}) == 1000 * (1024 + 8) + 10 * 1024
    assert memory_bytes("ivfsq", 1000, 256, {"nlist": 10}) == 1000 * (256 + 8) + 10 * 1024


def _write(root, emb, prev=None, **kw):
    n = len(emb)
    records = [{"study_id": f"X{i:05d}", "report": "", "label": "", "split": "", "thumbs": {}} for i in range(n)]
    meta = {"model_id": "m", "preprocess_config": None, "sequences": [], "dim": emb.shape[1], "run_dir": None}
    return write_version(root, meta=meta, records=records, image_embed=emb, image_rows=np.arange(n),
                         text_embed=np.zeros((0, emb.shape[1]), np.float32), text_rows=np.zeros(0, np.int64),
                         prev=prev, **kw)


def test_store_records_recall_extends_without_retraining_and_rebuilds_when_doubled(tmp_path):
    rng = np.random.default_rng(3)
    emb = rng.standard_normal((3000, 16)).astype(np.float32)
    _write(tmp_path, emb[:1000], exact_max=500)
    s1 = IndexStore.open(tmp_path)
    assert s1.meta["image_index"]["kind"] == "ivf" and s1.meta["image_index"]["params"]["recall10"] >= 0.95
    cells = s1.image_index.index.quantizer.reconstruct_n(0, s1.image_index.params["nlist"])  # (nlist, E)

    _write(tmp_path, emb[:1800], prev=s1, exact_max=500)  # +80 %: extended, same trained cells
    s2 = IndexStore.open(tmp_path)
    p2 = s2.meta["image_index"]["params"]
    assert s2.image_index.ntotal == 1800 and p2["n_trained"] == 1000 and p2["recall10"] >= 0.95
    np.testing.assert_array_equal(s2.image_index.index.quantizer.reconstruct_n(0, p2["nlist"]), cells)
    _, ids = s2.image_index.search(emb[1500:1510], 1)
    assert ids[:, 0].tolist() == list(range(1500, 1510))  # appended rows are found at their positions

    _write(tmp_path, emb, prev=s2, exact_max=500)  # 3000 > 2 x 1000: retrained on all of them
    s3 = IndexStore.open(tmp_path)
    assert s3.meta["image_index"]["params"]["n_trained"] == 3000 and s3.image_index.ntotal == 3000


def _shard_file(path, ids, model_id, rng, dim=16):
    from medalign.train.embed import save_embeddings

    n = len(ids)
    has = [i % 3 != 0 for i in range(n)]  # every third study has no report
    emb = {"study_id": np.array(ids), "patient_id": np.array(["p"] * n), "label": np.array(["normal"] * n),
           "label_index": np.full(n, 3), "report": np.array([f"report {s}" if h else "" for s, h in zip(ids, has)]),
           "split": np.array(["test"] * n), "image_embed": rng.standard_normal((n, dim)).astype(np.float32),
           "text_embed": rng.standard_normal((n, dim)).astype(np.float32), "has_report": np.array(has)}
    return save_embeddings(emb, path, model_id=model_id), emb


def test_index_build_merges_embedding_shards(tmp_path, monkeypatch, capsys):
    from medalign.cli import main

    class M:
        model_id, sequences, preprocess_config = "shard-model", ["dwi"], None

    monkeypatch.setattr("medalign.index.commands._load_model", lambda run: M())
    rng = np.random.default_rng(4)
    p0, e0 = _shard_file(tmp_path / "all.shard-0-of-2.npz", ["A1", "A2", "A3"], "shard-model", rng)
    p1, e1 = _shard_file(tmp_path / "all.shard-1-of-2.npz", ["B1", "B2"], "shard-model", rng)
    out = tmp_path / "idx"
    assert main(["index", "build", str(tmp_path), "--out", str(out), "--from-embeddings", str(p0),
                 "--from-embeddings", str(p1)]) == 0
    printed = capsys.readouterr().out
    assert "5 studies, 3 reports" in printed and "image: flat exact" in printed
    store = IndexStore.open(out)
    assert store.study_ids == ["A1", "A2", "A3", "B1", "B2"] and store.text_rows.tolist() == [1, 2, 4]
    hit = store.search(e1["image_embed"][1], 1)[0]
    assert store.record(hit[0])["study_id"] == "B2" and hit[1] == pytest.approx(1.0, abs=1e-5)
    assert store.search(e0["text_embed"][2], 1, target="report")[0][0] == 2

    p2, _ = _shard_file(tmp_path / "again.npz", ["B2"], "shard-model", rng)
    assert main(["index", "build", str(tmp_path), "--out", str(tmp_path / "x"), "--from-embeddings", str(p1),
                 "--from-embeddings", str(p2)]) == 2
    err = capsys.readouterr().err
    assert "B2" in err and "two embeddings files" in err
    p3, _ = _shard_file(tmp_path / "other.npz", ["C1"], "other-model", rng)
    assert main(["index", "build", str(tmp_path), "--out", str(tmp_path / "y"), "--from-embeddings", str(p3)]) == 2
    assert "embedded by model other-model" in capsys.readouterr().err
    assert main(["index", "build", str(tmp_path), "--out", str(tmp_path / "z")]) == 2
    assert "exactly one of --manifest and --from-embeddings" in capsys.readouterr().err
