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


def test_alone_rows_and_counts_by_variant(tmp_path, monkeypatch):
    """``--alone flair --by-variant``: the full row and a FLAIR-alone row only, the FLAIR row shown the FLAIR
    alone, and right/total per class and finding variant read from each study's ground truth; a study
    without one, or a sequence the run does not read, is refused by name."""
    import pandas as pd

    import medalign
    from medalign.data.cache import CohortCache
    from medalign.data.schema import CLASSES
    from medalign.eval.zeroshot import PROMPTS_FILE, embed_prompts, load_prompts, scores_from_prompt_bank

    with isolated_tiny_runs(tmp_path / "tiny") as made:
        run, cache = made["clip"], made["cache"]
        df = pd.read_csv(made["manifest"], dtype=str)
        model = medalign.load(run)
        bank = embed_prompts(load_prompts(str(PROMPTS_FILE)), model.encode_text)
        # every other study labelled as the model calls it (full study), so that the counts have studies right
        calls = scores_from_prompt_bank(bench.embed(model, CohortCache(cache), df["study_id"].tolist(), np.ones(2, bool)),
                                        bank).argmax(1)
        df.loc[::2, "label"] = [CLASSES[c] for c in calls[::2]]
        man = made["manifest"].parent / "relabelled.csv"
        df.to_csv(man, index=False)
        want: dict[str, int] = {}
        for i, (sid, label) in enumerate(zip(df["study_id"], df["label"])):
            findings = [{"class": label, "variant": "first" if i < 6 else "second"}] if i % 5 else []
            (man.parent / sid / "ground_truth.json").write_text(json.dumps({"findings": findings}), encoding="utf-8")
            key = f"{label}/{findings[0]['variant'] if findings else '-'}"
            want[key] = want.get(key, 0) + 1
        seen: list[tuple[np.ndarray, np.ndarray]] = []
        embed = bench.embed
        monkeypatch.setattr(bench, "embed", lambda m, c, ids, keep, **k: seen.append((keep, embed(m, c, ids, keep, **k)))
                            or seen[-1][1])
        out = tmp_path / "v.json"
        argv = ["study_fusion.py", "--model", "m", str(run), str(cache), "--manifest", str(man), "--n-boot", "20"]
        monkeypatch.setattr(sys, "argv", argv + ["--alone", "flair", "--by-variant", "--out", str(out)])
        bench.main()
        rows = json.loads(out.read_text(encoding="utf-8"))["models"]["m"]["rows"]
        assert list(rows) == ["full", "flair alone"]
        assert [list(k) for k, _ in seen] == [[True, True], [False, True]]  # (dwi, flair)
        y = np.array([CLASSES.index(v) for v in df["label"]])
        assert (scores_from_prompt_bank(seen[0][1], bank).argmax(1) == y).sum() >= 6
        for (_, emb), row in zip(seen, rows.values()):
            right = scores_from_prompt_bank(emb, bank).argmax(1) == y
            per = row["ensemble_per_variant"]
            assert {k: n for k, (_, n) in per.items()} == want
            keys = [f"{lab}/{('first' if i < 6 else 'second') if i % 5 else '-'}" for i, lab in enumerate(df["label"])]
            assert {k: c for k, (c, _) in per.items()} == {k: int(right[[q == k for q in keys]].sum()) for k in want}
            for c, (k, n) in row["ensemble_per_class"].items():  # the variants add up to their class
                assert sum(v[0] for q, v in per.items() if q.startswith(c + "/")) == k
        (man.parent / df["study_id"][3] / "ground_truth.json").unlink()
        monkeypatch.setattr(sys, "argv", argv + ["--no-subsets", "--by-variant"])
        with pytest.raises(SystemExit, match=df["study_id"][3]):
            bench.main()
        monkeypatch.setattr(sys, "argv", argv + ["--alone", "t2s"])
        with pytest.raises(SystemExit, match="t2s"):
            bench.main()
