"""--shard K/N: disjoint, complete, independent of row order."""
from __future__ import annotations

import pandas as pd
import pytest

from medalign.data.shards import parse_shard, select_shard, shard_of
from medalign.errors import MedAlignError


def test_parse_shard_accepts_k_of_n_and_names_bad_specs():
    assert parse_shard("0/4") == (0, 4) and parse_shard(" 3 / 4 ") == (3, 4) and parse_shard(None) is None
    for bad in ("4/4", "1/0", "-1/3", "a/b", "2", "1/2/3"):
        with pytest.raises(MedAlignError, match="--shard must be K/N"):
            parse_shard(bad)


def test_shards_partition_the_cohort_whatever_the_row_order():
    df = pd.DataFrame({"study_id": [f"S{i:04d}" for i in range(200)], "x": range(200)})
    parts = [select_shard(df, (k, 4)) for k in range(4)]
    ids = [set(p["study_id"]) for p in parts]
    assert sum(len(s) for s in ids) == 200 and set().union(*ids) == set(df["study_id"])
    assert all(len(s) > 20 for s in ids)  # hashing spreads them (expected 50 each)
    shuffled = select_shard(df.sample(frac=1.0, random_state=0), (2, 4))
    assert set(shuffled["study_id"]) == ids[2]
    assert shard_of("S0007", 4) == next(k for k in range(4) if "S0007" in ids[k])
    assert select_shard(df, None) is df


def test_preprocess_shards_fill_one_cache_between_them(tmp_path, capsys):
    from serve_fakes import make_cohort

    from medalign.cli import main

    manifest = make_cohort(tmp_path / "c", n=6)
    ids = [f"S{i:03d}" for i in range(6)]
    mine = [sum(shard_of(s, 2) == k for s in ids) for k in range(2)]
    args = ["preprocess", str(manifest), "--cache", str(tmp_path / "cache"), "--shape", "4,16,16",
            "--sequences", "dwi,flair", "--no-register", "--workers", "1", "--no-progress"]
    assert main([*args, "--shard", "0/2"]) == 0
    assert capsys.readouterr().out.startswith(f"{mine[0]} studies: {mine[0]} processed")
    assert main([*args, "--shard", "1/2"]) == 0
    assert capsys.readouterr().out.startswith(f"{mine[1]} studies: {mine[1]} processed")
    assert main(args) == 0  # the whole cohort is now cached
    assert capsys.readouterr().out.startswith("6 studies: 0 processed, 6 already cached")
    assert main([*args, "--shard", "2/2"]) == 2
    assert "--shard must be K/N" in capsys.readouterr().err
