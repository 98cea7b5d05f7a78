"""Finding 1 (concurrent writers lose studies) and 3 (thumbnails rewritten under a live version).

Two writers are made to overlap deterministically: each blocks on a shared barrier inside its
first (slow) step, after it has read the index / cache state and before it writes anything.
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from serve_fakes import FakeModel, make_cohort, write_nifti

from medalign.index.build import add_to_index, build_index
from medalign.index.store import IndexStore


class _SyncModel(FakeModel):
    """Waits on ``barrier`` at its first image encoding (both writers have opened the index by then)."""

    def __init__(self, barrier: threading.Barrier) -> None:
        super().__init__()
        self.barrier, self.waited = barrier, False

    def encode_image(self, x, sequence_mask=None):
        if not self.waited:
            self.waited = True
            self.barrier.wait(timeout=60)
        return super().encode_image(x, sequence_mask)


def _run_both(*targets) -> list[BaseException]:
    errors: list[BaseException] = []

    def wrap(fn):
        try:
            fn()
        except BaseException as e:  # surfaced to the test
            errors.append(e)

    threads = [threading.Thread(target=wrap, args=(t,)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return errors


def test_two_concurrent_index_adds_lose_nothing(tmp_path):
    index = tmp_path / "index"
    build_index(FakeModel(), make_cohort(tmp_path / "c0", n=4), index)
    m1, m2 = make_cohort(tmp_path / "c1", n=3, start=10), make_cohort(tmp_path / "c2", n=3, start=20)
    barrier = threading.Barrier(2)
    errors = _run_both(lambda: add_to_index(index, _SyncModel(barrier), m1),
                       lambda: add_to_index(index, _SyncModel(barrier), m2))
    assert not errors, errors
    ids = set(IndexStore.open(index).study_ids)
    expected = {f"S{i:03d}" for i in (0, 1, 2, 3, 10, 11, 12, 20, 21, 22)}
    assert ids == expected, f"lost: {sorted(expected - ids)}"


def test_two_concurrent_preprocess_runs_keep_both_cohorts(tmp_path, monkeypatch):
    from medalign.data import cache as cache_mod
    from medalign.data.cache import CohortCache, preprocess_cohort
    from medalign.data.imaging import PreprocessConfig

    cfg = PreprocessConfig(sequences=("dwi", "flair"), shape=(8, 16, 16), register=False)
    m1, m2 = make_cohort(tmp_path / "c1", n=2), make_cohort(tmp_path / "c2", n=2, start=10)
    barrier = threading.Barrier(2)
    real = cache_mod._process_one
    first: set[int] = set()

    def synced(job):
        if threading.get_ident() not in first:  # both runs have read index.json by now
            first.add(threading.get_ident())
            barrier.wait(timeout=60)
        return real(job)

    monkeypatch.setattr(cache_mod, "_process_one", synced)
    root = tmp_path / "cache"
    errors = _run_both(lambda: preprocess_cohort(m1, cfg, root, workers=1, progress=False),
                       lambda: preprocess_cohort(m2, cfg, root, workers=1, progress=False))
    assert not errors, errors
    assert CohortCache(root).study_ids() == ["S000", "S001", "S010", "S011"]


def test_rebuild_never_rewrites_a_live_versions_thumbnails(tmp_path):
    cohort = make_cohort(tmp_path / "c", n=3)
    index = tmp_path / "index"
    build_index(FakeModel(), cohort, index)
    live = IndexStore.open(index)  # what a running server holds
    before = live.thumb_file("S001", "dwi").read_bytes()
    # another patient's image under the same study id, then a rebuild ...
    write_nifti(tmp_path / "c" / "S001" / "dwi.nii.gz", np.random.default_rng(9).normal(size=(32, 32, 8)) * 5)
    build_index(FakeModel(), cohort, index)
    assert live.thumb_file("S001", "dwi").read_bytes() == before  # the live report keeps its own image
    new = IndexStore.open(index)
    assert new.thumb_file("S001", "dwi").read_bytes() != before
    # ... and a build killed half-way (a study's file is missing) leaves the live thumbnails alone
    write_nifti(tmp_path / "c" / "S000" / "dwi.nii.gz", np.ones((32, 32, 8)) * np.arange(8))
    (tmp_path / "c" / "S002" / "flair.nii.gz").unlink()
    current = {s: new.thumb_file(s, "dwi").read_bytes() for s in ("S000", "S001")}
    try:
        build_index(FakeModel(), cohort, index)
    except Exception:
        pass
    assert {s: new.thumb_file(s, "dwi").read_bytes() for s in ("S000", "S001")} == current
    assert IndexStore.open(index).version == new.version
