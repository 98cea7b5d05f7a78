"""Finding 4: a cache preprocessed with another normalisation is refused by every command that
embeds (embed, evaluate, index build), and the message names the cache folder."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from serve_fakes import FakeModel, make_cohort

from medalign.data.cache import CACHE_VERSION
from medalign.data.imaging import PreprocessConfig
from medalign.errors import MedAlignError

SEQS, SHAPE = ("dwi", "flair"), (8, 32, 32)


def _cache(root: Path, ids: list[str], normalise: str) -> Path:
    """A complete cache by hand: index.json + one (C, D, H, W) array per study."""
    cfg = PreprocessConfig(sequences=SEQS, shape=SHAPE, normalise=normalise)
    entries = {}
    (root / "studies").mkdir(parents=True)
    for i, sid in enumerate(ids):
        np.save(root / "studies" / f"k{i}.npy", np.random.default_rng(i).random((2, *SHAPE), dtype=np.float32))
        entries[sid] = {"key": f"k{i}", "image": f"studies/k{i}.npy", "mask": None, "sequences": list(SEQS),
                        "sequence_mask": [True, True], "shape": [2, *SHAPE]}
    (root / "index.json").write_text(json.dumps({"version": CACHE_VERSION, "config": cfg.to_dict(), "entries": entries}))
    return root


@pytest.fixture()
def setup(tmp_path):
    manifest = make_cohort(tmp_path / "c", n=3)
    cache = _cache(tmp_path / "robust cache", ["S000", "S001", "S002"], "robust")
    model = FakeModel()
    model.preprocess_config = PreprocessConfig(sequences=SEQS, shape=SHAPE, normalise="zscore_unclipped").to_dict()
    model.cache_dir, model.config = cache, {}
    return model, manifest, cache


def test_embed_refuses_a_cache_with_another_normalisation(setup):
    from medalign.train.embed import embed_manifest

    model, manifest, cache = setup
    with pytest.raises(MedAlignError, match="normalise=robust") as e:
        embed_manifest(model, manifest, cache)  # used to return embeddings of the wrong inputs
    assert str(cache) in str(e.value)


def test_evaluate_checks_the_cache_before_embedding(setup):
    from medalign.eval.run import check_cache

    model, _, cache = setup
    with pytest.raises(MedAlignError, match="normalise=robust"):
        check_cache(model, cache)


def test_index_build_names_the_cache_folder(setup, tmp_path):
    from medalign.index.build import build_index

    model, manifest, cache = setup
    with pytest.raises(MedAlignError) as e:
        build_index(model, manifest, tmp_path / "index", cache=cache)
    assert f"cache {cache} has normalise=robust" in str(e.value)  # the path used to be blank
