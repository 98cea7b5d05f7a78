"""``make demo``'s stages: the commands it runs, without running them."""
from __future__ import annotations

from pathlib import Path

import medalign.demo as demo


def test_demo_builds_the_index_from_the_preprocessed_cache(tmp_path: Path, monkeypatch) -> None:
    """The index stage reads the cache that stage 2 wrote (the run's own inputs), not the NIfTI files,
    which it would preprocess again; every stage that reads images gets the same cache."""
    calls: list[list[str]] = []
    monkeypatch.setattr(demo, "_stage", lambda title, argv, **kw: calls.append(list(argv)))
    (tmp_path / "runs" / "brain_clip_cpu").mkdir(parents=True)  # stage 4 would make it
    demo.run(tmp_path)
    cache = str((tmp_path / "cache").resolve())
    by_cmd = {tuple(a[:2]) if a[0] == "index" else (a[0],): a for a in calls}
    index = by_cmd[("index", "build")]
    assert index[index.index("--cache") + 1] == cache
    assert by_cmd[("preprocess",)][by_cmd[("preprocess",)].index("--cache") + 1] == cache
    assert f"data.cache_dir={cache}" in by_cmd[("train",)]
