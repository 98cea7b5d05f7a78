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
    # the example query ranks the split stage 5 embedded, so it reads RUN/embeddings/<split>.npz instead of
    # embedding all 862 studies again
    embed, search = by_cmd[("embed",)], by_cmd[("search",)]
    assert search[search.index("--split") + 1] == embed[embed.index("--split") + 1] == "test"


def test_demo_draws_the_flair_heavy_cohort_and_trains_its_preset(tmp_path: Path, monkeypatch) -> None:
    """Since issue 20, stop 70 the demo draws the FLAIR-heavy cohort and trains the preset confirmed on it, whose
    run classifies with the neighbour readout by default (last checkpoint, half the vote of 20); the plain cohort
    stays one option away."""
    from medalign.config import load_config
    from medalign.train.config import resolve_config

    calls: list[list[str]] = []
    monkeypatch.setattr(demo, "_stage", lambda title, argv, **kw: calls.append(list(argv)))
    (tmp_path / "runs" / "brain_clip_cpu").mkdir(parents=True)
    demo.run(tmp_path)
    synth = next(a for a in calls if a[:2] == ["synth", "brain"])
    assert synth[synth.index("--flair-alone") + 1] == "600" and "--glioma-cores" in synth
    assert (synth[synth.index("--infarct-territory") + 1], synth[synth.index("--flair-alone-territory") + 1]) == ("0.5", "1")
    assert synth[synth.index("--flair-alone-class-weights") + 1] == "others=1.5,normal=1.5,infarct=0.5,hemorrhage=0.5"
    train = next(a for a in calls if a[0] == "train")
    assert train[1] == "configs/brain_clip_cpu_flair.yaml"
    cfg = resolve_config(load_config(Path(__file__).resolve().parents[2] / train[1]))
    assert (cfg["train"]["epochs"], cfg["train"]["select"]) == (20, "last")
    assert cfg["readout"] == {"neighbours": 0.5, "k": 20, "mirror": True}
    calls.clear()
    demo.run(tmp_path, cohort_args=(), config="configs/brain_clip_cpu.yaml")
    synth = next(a for a in calls if a[:2] == ["synth", "brain"])
    assert "--flair-alone" not in synth
