"""benchmarks/study_fusion.py: ``--checkpoint last`` evaluates the run's last weights, not the
validation-selected ones; on a tiny run whose last checkpoint is made to differ from its best."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: tiny_runs
from tiny_runs import isolated_tiny_runs, load_benchmark  # noqa: E402

bench = load_benchmark("study_fusion")


def test_checkpoint_last_reads_the_last_weights(tmp_path, monkeypatch):
    import torch
    from safetensors.torch import load_file, save_file

    import medalign

    with isolated_tiny_runs(tmp_path / "tiny") as made:
        run, man, cache = made["clip"], made["manifest"], made["cache"]
        ckpt = run / "checkpoints"
        weights = load_file(str(ckpt / "best.safetensors"))
        g = torch.Generator().manual_seed(0)
        # last := best moved by noise, so the two checkpoints give different embeddings
        save_file({k: v + 0.5 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
                   for k, v in weights.items()}, str(ckpt / "last.safetensors"))
        seen: list[np.ndarray] = []
        embed = bench.embed
        monkeypatch.setattr(bench, "embed", lambda *a, **k: seen.append(embed(*a, **k)) or seen[-1])
        outs = {}
        for which in ("best", "last"):
            outs[which] = tmp_path / f"{which}.json"
            monkeypatch.setattr(sys, "argv", ["study_fusion.py", "--model", "m", str(run), str(cache), "--manifest",
                                              str(man), "--no-subsets", "--n-boot", "20", "--checkpoint", which,
                                              "--out", str(outs[which])])
            bench.main()
        best_emb, last_emb = seen  # one full-study pass per call
        import pandas as pd

        from medalign.data.cache import CohortCache

        ids = pd.read_csv(man, dtype=str)["study_id"].tolist()
        every = np.ones(2, bool)  # the tiny run's dwi and flair, as the benchmark's "full" row shows them
        direct_last = embed(medalign.load(run, checkpoint="last"), CohortCache(cache), ids, every)
        direct_best = embed(medalign.load(run), CohortCache(cache), ids, every)
        assert np.allclose(last_emb, direct_last, atol=1e-5) and np.allclose(best_emb, direct_best, atol=1e-5)
        assert not np.allclose(last_emb, best_emb, atol=1e-3)
        for which, path in outs.items():
            res = json.loads(path.read_text(encoding="utf-8"))
            assert res["checkpoint"] == which and res["n"] == len(ids)
            assert 0.0 <= res["models"]["m"]["rows"]["full"]["zero_shot_ensemble"]["value"] <= 1.0
    with pytest.raises(SystemExit):  # argparse: the choice is checked before any model is loaded
        monkeypatch.setattr(sys, "argv", ["study_fusion.py", "--model", "m", "r", "c", "--manifest", "x",
                                          "--checkpoint", "first"])
        bench.main()
