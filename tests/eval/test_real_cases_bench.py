"""benchmarks/real_cases.py: every real case a run can read is classified, one it cannot read (no
sequence of the run) is skipped by name instead of failing the whole run; on a tiny run with a
stand-in for ../shared/data."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nibabel")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: tiny_runs
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_lesion_reliance import _tiny_run  # noqa: E402  (a dwi + flair study with a lesion; a tiny CLIP run)
from tiny_volumes import write_lesion_study  # noqa: E402
from tiny_runs import load_benchmark  # noqa: E402

bench = load_benchmark("real_cases")


def test_real_cases_skips_what_a_run_cannot_read(tmp_path, monkeypatch, capsys):
    import medalign

    run = _tiny_run(tmp_path, monkeypatch)
    write_lesion_study(tmp_path / "src", "W0", "others", "wmh", np.random.default_rng(0))
    shared = tmp_path / "shared"  # a stand-in for ../shared/data: a FLAIR the run reads, a T1 it does not
    for case, seq in (("wmh_x", "flair"), ("t1_only", "t1")):
        (shared / "real_dev" / case).mkdir(parents=True)
        (shared / "real_dev" / case / f"{seq}.nii.gz").write_bytes((tmp_path / "src" / "W0" / "flair.nii.gz").read_bytes())
    (shared / "real_dev" / "cases.json").write_text(json.dumps([
        {"case": "wmh_x", "class": "others", "files": {"flair": "flair.nii.gz"}},
        {"case": "t1_only", "class": "normal", "files": {"t1": "t1.nii.gz"}}]), encoding="utf-8")
    assert "t1" not in medalign.load(run).sequences
    out = tmp_path / "real.json"
    monkeypatch.setattr(sys, "argv", ["real_cases.py", str(run), "--shared", str(shared), "--out", str(out)])
    bench.main()
    skipped = [line for line in capsys.readouterr().out.splitlines() if "skipped" in line]
    assert len(skipped) == 1 and "real_dev/t1_only" in skipped[0]
    got = json.loads(out.read_text(encoding="utf-8"))["runs"][str(run)]
    rows = got["rows"]
    assert got["checkpoint"] == "best"
    assert [r["case"] for r in rows] == ["real_dev/wmh_x"] and rows[0]["sequences"] == ["flair"]
    direct = medalign.load(run).classify([{"flair": str(shared / "real_dev" / "wmh_x" / "flair.nii.gz")}])[0]
    assert rows[0]["predicted"] == direct["label"]
    assert rows[0]["p_true"] == pytest.approx(direct["probabilities"]["others"], abs=1e-3)
    summary = json.loads(out.read_text(encoding="utf-8"))["summary"]  # the run's own calls, pooled over one run
    right = int(rows[0]["predicted"] == "others")
    assert summary["n_runs"] == 1 and (summary["per_class"]["others"]["k"], summary["per_class"]["others"]["n"]) == (right, 1)
    assert summary["per_case"]["real_dev/wmh_x"]["calls"] == {rows[0]["predicted"]: 1}
    monkeypatch.setattr(sys, "argv", ["real_cases.py", str(run), "--shared", str(shared), "--pool", str(out)])
    with pytest.raises(SystemExit, match="already counted"):  # the same run read again and pooled with itself
        bench.main()


def test_adapt_bn_reestimates_the_normalisation_on_the_given_studies(tmp_path, monkeypatch):
    """--adapt-bn's copy: every BatchNorm's running mean and variance are its inputs' over the given studies (one
    batch; a layer called once per series averages its calls), the run's model keeps the trained ones, and
    encoding through the copy uses them."""
    import medalign
    import torch

    run = _tiny_run(tmp_path, monkeypatch)
    m = medalign.load(run)
    before = {k: v.clone() for k, v in m.recipe.state_dict().items() if "running_" in k}
    assert before, "the tiny run has no BatchNorm: nothing for this test to check"
    torch.manual_seed(0)
    c, shape = len(m.sequences), m.preprocess_config.shape
    images = [torch.randn(c, *shape) * 2 + 1 for _ in range(3)]
    masks = [torch.ones(c, dtype=torch.bool) for _ in range(3)]
    seen: dict = {}  # each BatchNorm's inputs in the adaptation pass (the copy carries the original's hooks)
    bns = [x for x in m.recipe.modules() if isinstance(x, torch.nn.modules.batchnorm._BatchNorm)]
    hooks = [bn.register_forward_hook(lambda mod, inp, out, i=i: seen.setdefault(i, []).append(inp[0].detach().clone()))
             for i, bn in enumerate(bns)]
    adapted = bench.adapt_batchnorm(m, images, masks)
    for h in hooks:
        h.remove()
    adapted_bns = [x for x in adapted.recipe.modules() if isinstance(x, torch.nn.modules.batchnorm._BatchNorm)]
    for i, bn in enumerate(adapted_bns):
        calls = [x.transpose(0, 1).flatten(1) for x in seen[i]]  # per call (channels, batch * voxels)
        assert torch.allclose(bn.running_mean, torch.stack([x.mean(1) for x in calls]).mean(0), atol=1e-4)
        assert torch.allclose(bn.running_var, torch.stack([x.var(1) for x in calls]).mean(0), rtol=1e-3, atol=1e-5)
        assert not bn.training
    assert all(torch.equal(v, before[k]) for k, v in m.recipe.state_dict().items() if k in before)  # original kept
    e0, e1 = m.encode_image(torch.stack(images)), adapted.encode_image(torch.stack(images))
    assert np.abs(e0 - e1).max() > 1e-3


def _one_wmh_flair(tmp_path: Path) -> tuple[Path, Path]:
    """A stand-in for ../shared/data with one real_dev case, a FLAIR with white-matter lesions: (shared, its FLAIR)."""
    write_lesion_study(tmp_path / "src", "W0", "others", "wmh", np.random.default_rng(0))
    shared = tmp_path / "shared"
    (shared / "real_dev" / "wmh_x").mkdir(parents=True)
    flair = shared / "real_dev" / "wmh_x" / "flair.nii.gz"
    flair.write_bytes((tmp_path / "src" / "W0" / "flair.nii.gz").read_bytes())
    (shared / "real_dev" / "cases.json").write_text(json.dumps([
        {"case": "wmh_x", "class": "others", "files": {"flair": "flair.nii.gz"}}]), encoding="utf-8")
    return shared, flair


def test_adapt_bn_flag_classifies_through_the_adapted_copy(tmp_path, monkeypatch):
    """real_cases.py --adapt-bn: each case's row is what the copy adapted on the run's readable cases says of it,
    and the output records the flag."""
    import medalign

    run = _tiny_run(tmp_path, monkeypatch)
    shared, flair = _one_wmh_flair(tmp_path)
    out = tmp_path / "real.json"
    monkeypatch.setattr(sys, "argv", ["real_cases.py", str(run), "--shared", str(shared), "--adapt-bn", "--out", str(out)])
    bench.main()
    res = json.loads(out.read_text(encoding="utf-8"))
    row = res["runs"][str(run)]["rows"][0]
    m = medalign.load(run)
    adapted = bench.adapt_batchnorm(m, *map(list, zip(m._one({"flair": str(flair)}))))
    direct = adapted.classify([{"flair": str(flair)}])[0]
    assert res["adapt_bn"] is True and row["predicted"] == direct["label"]
    assert row["p_true"] == pytest.approx(direct["probabilities"]["others"], abs=1e-3)


def _output(runs: dict[str, list[tuple[str, str, str, float]]], adapt_bn: bool = False) -> dict:
    """A real_cases.py output: {run: [(case, true, predicted, p_true), ...]}."""
    return {"cases": sorted({c for rows in runs.values() for c, *_ in rows}), "adapt_bn": adapt_bn,
            "runs": {run: {"rows": [{"case": c, "true": t, "predicted": p, "sequences": ["flair"], "p_true": q}
                                    for c, t, p, q in rows]} for run, rows in runs.items()}}


def test_pool_sums_runs_read_in_batches(tmp_path, monkeypatch, capsys):
    """--pool alone: the runs of earlier outputs summed per class (Wilson 95 % CI, mean p(true)) and per case
    (calls counted), without loading a model; --out holds every pooled run and the summary; a run met twice,
    or outputs read with and without --adapt-bn, stop with a one-line error naming the file."""
    from medalign.eval.bootstrap import wilson_ci

    a = _output({"runs/a": [("wmh_1", "others", "others", 0.6), ("wmh_2", "others", "normal", 0.3),
                            ("glioma", "tumor", "tumor", 0.9)]})
    b = _output({"runs/b": [("wmh_1", "others", "others", 0.5), ("wmh_2", "others", "infarct", 0.1),
                            ("glioma", "tumor", "infarct", 0.4)],
                 "runs/c": [("wmh_1", "others", "tumor", 0.2), ("wmh_2", "others", "normal", 0.2),
                            ("glioma", "tumor", "tumor", 0.8)]})
    paths = []
    for name, o in (("a.json", a), ("b.json", b)):
        paths.append(tmp_path / name)
        paths[-1].write_text(json.dumps(o), encoding="utf-8")
    out = tmp_path / "pooled.json"
    monkeypatch.setattr(sys, "argv", ["real_cases.py", "--pool", *map(str, paths), "--out", str(out)])
    bench.main()
    pooled = json.loads(out.read_text(encoding="utf-8"))
    assert sorted(pooled["runs"]) == ["runs/a", "runs/b", "runs/c"]
    s = pooled["summary"]
    assert s["n_runs"] == 3
    assert s["per_class"]["others"] == {**wilson_ci(2, 6), "mean_p_true": pytest.approx(0.317, abs=1e-3)}
    assert s["per_class"]["tumor"]["k"] == 2 and s["per_class"]["tumor"]["n"] == 3
    assert s["per_case"]["wmh_2"] == {"true": "others", "right": 0, "n": 3, "calls": {"normal": 2, "infarct": 1},
                                      "mean_p_true": pytest.approx(0.2)}
    assert s["per_case"]["wmh_1"]["calls"] == {"others": 2, "tumor": 1}
    printed = capsys.readouterr().out
    assert "pooled over 3 run(s)" in printed and "2/6" in printed
    # pooling the pooled output again with one of its sources counts runs/a twice
    monkeypatch.setattr(sys, "argv", ["real_cases.py", "--pool", str(out), str(paths[0])])
    with pytest.raises(SystemExit, match=r"a\.json: run runs/a is already counted"):
        bench.main()
    bn = tmp_path / "bn.json"
    bn.write_text(json.dumps(_output({"runs/d": [("wmh_1", "others", "others", 0.7)]}, adapt_bn=True)), encoding="utf-8")
    monkeypatch.setattr(sys, "argv", ["real_cases.py", "--pool", str(paths[0]), str(bn)])
    with pytest.raises(SystemExit, match="bn.json: read with adapt_bn=True"):
        bench.main()
    bad = tmp_path / "bad.json"
    bad.write_text("{}", encoding="utf-8")
    monkeypatch.setattr(sys, "argv", ["real_cases.py", "--pool", str(bad)])
    with pytest.raises(SystemExit, match="bad.json: not an output of real_cases.py"):
        bench.main()


def test_compare_tests_each_case_for_one_shared_rate(tmp_path, monkeypatch, capsys):
    """--compare: per case and per class each arm's right calls and the permutation test of one shared rate.
    A case every run of one arm gets and no run of the other does is told apart from the seeds' noise; a case
    both arms get equally often is not; a case no arm gets has nothing to separate (p 1). A run in two arms,
    a malformed arm and a lone arm stop with a one-line error."""
    from medalign.eval.bootstrap import homogeneity_test

    def arm(name: str, n_runs: int, moved: bool, same: list[bool]) -> Path:
        runs = {f"runs/{name}{i}": [("wmh_moved", "others", "others" if moved else "infarct", 0.5),
                                    ("wmh_same", "others", "others" if same[i] else "normal", 0.4),
                                    ("volunteer", "normal", "others", 0.1)] for i in range(n_runs)}
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(_output(runs)), encoding="utf-8")
        return path

    a = arm("a", 6, True, [True, False] * 3)
    b1, b2 = arm("b", 3, False, [True, False, True]), arm("c", 3, False, [False, True, False])
    out = tmp_path / "compare.json"
    monkeypatch.setattr(sys, "argv", ["real_cases.py", "--compare", f"A={a}", f"B={b1},{b2}", "--out", str(out)])
    bench.main()
    res = json.loads(out.read_text(encoding="utf-8"))
    assert res["arms"]["A"]["n_runs"] == 6 and res["arms"]["B"]["n_runs"] == 6
    moved, same = res["per_case"]["wmh_moved"], res["per_case"]["wmh_same"]
    assert moved["arms"] == {"A": [6, 6], "B": [0, 6]} and same["arms"] == {"A": [3, 6], "B": [3, 6]}
    # exact: 2 of the C(12, 6) = 924 ways to share 6 right calls among two arms of 6 separate them fully
    assert moved["p"] == pytest.approx(2 / 924) and moved["statistic"] == pytest.approx(12.0)
    assert same["p"] == pytest.approx(1.0) and same["statistic"] == pytest.approx(0.0)
    assert res["per_case"]["volunteer"]["p"] == 1.0
    assert res["per_class"]["others"]["arms"] == {"A": [9, 12], "B": [3, 12]}
    assert res["per_class"]["others"]["p"] == pytest.approx(homogeneity_test([9, 3], [12, 12])["p"])
    printed = capsys.readouterr().out
    assert "A (6 runs), B (6 runs)" in printed and "wmh_moved" in printed and "0.0022" in printed
    for argv, message in (([f"A={a}", f"B={a}"], r"--compare B .*a\.json: run runs/a0 is already in arm A"),
                          ([f"A={a}", "B"], "--compare B: expected NAME=OUT.json"),
                          ([f"A={a}"], "needs two or more arms")):
        monkeypatch.setattr(sys, "argv", ["real_cases.py", "--compare", *argv])
        with pytest.raises(SystemExit, match=message):
            bench.main()


def test_neighbours_reads_the_cases_as_classify_does_under_its_own_name(tmp_path, monkeypatch):
    """--neighbours W --k K: each case's call and p(true) are ``classify(neighbours=W, k=K)``'s; the run is counted as
    ``RUN (neighbours W, k K)``, so it pools beside the same run read zero-shot; --mirror likewise as ``RUN
    (mirrored)``; neither with --adapt-bn."""
    import medalign

    run = _tiny_run(tmp_path, monkeypatch)
    shared, flair = _one_wmh_flair(tmp_path)
    zs, nb = tmp_path / "zs.json", tmp_path / "nb.json"
    monkeypatch.setattr(sys, "argv", ["real_cases.py", str(run), "--shared", str(shared), "--out", str(zs)])
    bench.main()
    monkeypatch.setattr(sys, "argv", ["real_cases.py", str(run), "--shared", str(shared), "--neighbours", "0.5",
                                      "--k", "2", "--pool", str(zs), "--out", str(nb)])
    bench.main()
    runs = json.loads(nb.read_text(encoding="utf-8"))["runs"]
    key = f"{run} (neighbours 0.5, k 2)"
    assert set(runs) == {str(run), key} and (runs[key]["neighbours"], runs[key]["k"]) == (0.5, 2)
    direct = medalign.load(run).classify([{"flair": str(flair)}], neighbours=0.5, k=2)[0]
    row = runs[key]["rows"][0]
    assert row["predicted"] == direct["label"]
    assert row["p_true"] == pytest.approx(direct["probabilities"]["others"], abs=1e-3)
    assert row["p_true"] != pytest.approx(runs[str(run)]["rows"][0]["p_true"], abs=1e-6)  # the vote moved it
    mi = tmp_path / "mi.json"  # --mirror: classify(mirror=True)'s calls, counted as "RUN (mirrored)"
    monkeypatch.setattr(sys, "argv", ["real_cases.py", str(run), "--shared", str(shared), "--mirror", "--out", str(mi)])
    bench.main()
    runs = json.loads(mi.read_text(encoding="utf-8"))["runs"]
    direct = medalign.load(run).classify([{"flair": str(flair)}], mirror=True)[0]
    assert list(runs) == [f"{run} (mirrored)"] and runs[f"{run} (mirrored)"]["mirror"] is True
    assert runs[f"{run} (mirrored)"]["rows"][0]["p_true"] == pytest.approx(direct["probabilities"]["others"], abs=1e-3)
    for flag in ("--neighbours", "--mirror"):
        monkeypatch.setattr(sys, "argv", ["real_cases.py", str(run), "--shared", str(shared), flag,
                                          *(["0.5"] if flag == "--neighbours" else []), "--adapt-bn"])
        with pytest.raises(SystemExit):
            bench.main()
