"""benchmarks/prompt_sets.py: every prompt set scores the same embeddings; the shipped set gives what
`classify` gives, a subclass set gives the max over its subclasses, and the sets it ships load."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nibabel")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_lesion_reliance import _normal_study, _tiny_run  # noqa: E402  (dwi+flair studies; a tiny CLIP run)
from tiny_volumes import write_lesion_study  # noqa: E402
from tiny_runs import load_benchmark  # noqa: E402

bench = load_benchmark("prompt_sets")


def test_accuracy_counts_right_per_class():
    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])  # (N, C)
    r = bench.accuracy(["a", "b"], p, ["a", "b", "b"])
    assert r["acc"] == pytest.approx(2 / 3, abs=1e-4) and r["right"] == {"a": [1, 1], "b": [1, 2]}
    assert r["calls"] == ["a", "b", "a"]


def test_shipped_subclass_sets_load():
    from medalign.data.schema import CLASSES
    from medalign.eval.zeroshot import load_prompts

    for name in ("others_kinds", "all_kinds"):
        p = load_prompts(ROOT / "benchmarks" / "prompt_sets" / f"{name}.yaml")
        assert list(p) == list(CLASSES) and len(set(p["others"]["groups"])) == 4


def test_script_on_a_tiny_run(tmp_path, monkeypatch):
    run = _tiny_run(tmp_path, monkeypatch)
    rng = np.random.default_rng(5)
    dev = tmp_path / "dev"
    write_lesion_study(dev, "S1", "others", "wmh", rng)
    write_lesion_study(dev, "S2", "tumor", "glioma", rng)
    _normal_study(dev, "S3", rng)
    sub = tmp_path / "kinds.yaml"
    sub.write_text((ROOT / "benchmarks" / "prompt_sets" / "others_kinds.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    out = tmp_path / "sets.json"
    monkeypatch.setattr(sys, "argv", ["prompt_sets.py", str(run), "--prompts", str(sub), "--dev", str(dev),
                                      "--shared", str(tmp_path / "no_shared"), "--out", str(out)])
    bench.main()
    res = json.loads(out.read_text(encoding="utf-8"))["runs"][str(run)]
    assert set(res) == {"shipped", "kinds"} and set(res["shipped"]) == {"dev", "dev flair alone"}

    import medalign
    from medalign.eval.zeroshot import embed_prompts, load_prompts

    m = medalign.load(run)
    items = [{s: str(dev / sid / f"{s}.nii.gz") for s in ("dwi", "flair")} for sid in ("S1", "S2", "S3")]
    assert res["shipped"]["dev"]["calls"] == [r["label"] for r in m.classify(items)]
    # the subclass set: "others" scores the max of its four subclass ensembles
    emb = m.encode_image(items)
    bank = embed_prompts(load_prompts(sub), m.encode_text)
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sel = (bank["class_index"] == 4) & (bank["kind"] == "presence")
    subs = []
    for g in range(4):
        v = bank["embed"][sel][bank["group"][sel] == g]
        v = v / np.linalg.norm(v, axis=1, keepdims=True)
        subs.append(e @ (v.mean(0) / np.linalg.norm(v.mean(0))))
    classes, p = m.zero_shot_probabilities(emb, prompts=sub)
    assert classes[4] == "others"
    shipped_classes, q = m.zero_shot_probabilities(emb)
    # with the same other four classes, p(others) / p(normal) follows the max of the subclass scores
    z = np.log(p[:, 4] / p[:, 3]) / m.logit_scale()
    normal = np.log(q[:, 4] / q[:, 3]) / m.logit_scale()  # others - normal under the shipped set
    assert not np.allclose(z, normal, atol=1e-4)
    bank_s = embed_prompts(load_prompts(None), m.encode_text)
    seln = (bank_s["class_index"] == 3) & (bank_s["kind"] == "presence")
    vn = bank_s["embed"][seln] / np.linalg.norm(bank_s["embed"][seln], axis=1, keepdims=True)
    s_normal = e @ (vn.mean(0) / np.linalg.norm(vn.mean(0)))
    np.testing.assert_allclose(z, np.max(np.stack(subs, 1), 1) - s_normal, atol=1e-4)
    assert [c for c in res["kinds"]["dev"]["calls"]] == [classes[i] for i in p.argmax(1)]
