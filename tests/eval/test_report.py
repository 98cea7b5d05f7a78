"""The report on fake run directories (fake embeddings, metrics.jsonl, config): no trained model."""
import json
import re
from pathlib import Path

import numpy as np
import pytest

from medalign.data.schema import CLASSES
from medalign.eval.evaluate import get_path, save_embeddings
from medalign.eval.run import evaluate_saved
from medalign.eval.report import COMPARISON, SECTIONS, build_report, md_to_html


def _fake_split(n, rng, noise, centres, dim=16, prefix="s"):
    labels = np.array([CLASSES[i % len(CLASSES)] for i in range(n)])
    li = np.array([CLASSES.index(c) for c in labels])
    img = centres[li] + rng.normal(size=(n, dim))
    txt = img + noise * rng.normal(size=(n, dim))
    return {
        "study_id": np.array([f"{prefix}{i:03d}" for i in range(n)]),
        "patient_id": np.array([f"p{i:03d}" for i in range(n)]),
        "label": labels,
        "report": np.array([f"report of {prefix}{i:03d}: {c} findings" for i, c in enumerate(labels)]),
        "image_embed": img.astype(np.float32),
        "text_embed": txt.astype(np.float32),
    }


def make_fake_run(root: Path, name: str, *, noise: float, seed: int = 0, extras: bool = False) -> Path:
    rng = np.random.default_rng(seed)
    run = root / name
    (run / "eval").mkdir(parents=True)
    (run / "config.yaml").write_text("recipe:\n  name: clip\ntrain:\n  epochs: 3\n")
    rows = []
    for ep in range(3):
        for st in range(2):
            rows.append({"epoch": ep, "step": ep * 2 + st, "split": "train", "loss": 2.0 - 0.3 * ep - 0.1 * st, "lr": 0.01})
        rows.append({"epoch": ep, "step": ep * 2 + 1, "split": "val", "loss": 2.1 - 0.25 * ep})
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    centres = rng.normal(size=(len(CLASSES), 16)) * 2
    save_embeddings(run / "eval" / "embeddings_test.npz", _fake_split(15, rng, noise, centres, prefix="t"))
    save_embeddings(run / "eval" / "embeddings_train.npz", _fake_split(40, rng, noise, centres, prefix="r"))
    # prompt bank: one "prompt" per class at the class centre direction is unknown here -> random prompts
    texts = [f"{c} prompt {k}" for c in CLASSES for k in range(2)]
    save_embeddings(run / "eval" / "prompts.npz", {
        "classes": np.array(CLASSES), "texts": np.array(texts),
        "class_index": np.repeat(np.arange(len(CLASSES)), 2), "kind": np.array(["presence"] * len(texts)),
        "embed": rng.normal(size=(len(texts), 16)).astype(np.float32)})
    if extras:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots()
        ax.plot([0, 1], [0, 1])
        (run / "extra_fig").mkdir()
        fig.savefig(run / "extra_fig" / "attn.png")
        plt.close(fig)
        (run / "report_extras").mkdir()
        (run / "report_extras" / "gloria.json").write_text(json.dumps({
            "title": "Attention maps (GLoRIA)", "markdown": "Word **attention** on sub-regions.\n\n- one\n- two",
            "images": ["extra_fig/attn.png"],
            "tables": [{"caption": "localisation", "columns": ["word", "IoU"], "rows": [["infarct", 0.5]]}]}))
    return run


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    good = make_fake_run(root, "run_good", noise=0.05, seed=0, extras=True)
    bad = make_fake_run(root, "run_noisy", noise=5.0, seed=1)
    for r in (good, bad):
        evaluate_saved(r, n_boot=50)
    return root, good, bad


def test_evaluate_saved_metrics(two_runs):
    _, good, bad = two_runs
    mg = json.loads((good / "eval" / "metrics.json").read_text(encoding="utf-8"))
    mb = json.loads((bad / "eval" / "metrics.json").read_text(encoding="utf-8"))
    assert mg["retrieval"]["text_to_image"]["R@1"] == 1.0  # near-identical pairs
    assert mg["retrieval"]["text_to_image"]["pool_size"] == 15
    assert mb["retrieval"]["text_to_image"]["R@1"] < 1.0
    assert set(mg["plots"]) >= {"training_curves", "similarity_matrix", "rank_vs_similarity", "embedding_map",
                                "confusion_zero_shot", "label_efficiency", "confusion_probe"}
    for p in mg["plots"].values():
        assert (good / "eval" / p).stat().st_size > 1000
    assert mg["zero_shot"]["pool"] == "ensemble" and "one_prompt_per_class" in mg["zero_shot"]
    assert mg["probe"]["logreg"]["1.0"]["n_train"] == 40
    assert mg["probe"]["logreg"]["0.01"]["n_train"] == 5  # one per class
    assert mg["probe"]["logreg"]["1.0"]["balanced_accuracy"] > 0.9  # separable class clusters
    assert mg["retrieval"]["case_to_case"]["ci"]["P@5"]["value"] == mg["retrieval"]["case_to_case"]["P@5"]
    ci = mg["headline"]["report→image R@1"]
    assert ci["lo"] <= ci["value"] <= ci["hi"]
    assert get_path(mg, "probe.logreg.1.0.balanced_accuracy") == mg["probe"]["logreg"]["1.0"]["balanced_accuracy"]
    assert len(mg["tables"]["top5"]) == 5 and len(mg["tables"]["rank1"]) == 15


def test_report_has_every_section_and_comparison(two_runs):
    root, good, bad = two_runs
    out = root / "out" / "report.html"
    html_p, md_p = build_report([good, bad], out)
    html = html_p.read_text(encoding="utf-8")
    md = md_p.read_text(encoding="utf-8")
    for s in SECTIONS + (COMPARISON, "Attention maps (GLoRIA)"):
        assert f">{s}</h" in html, s
        assert f" {s}\n" in md, s
    # self-contained: every image inline, no external src
    srcs = re.findall(r'<img[^>]*src="([^"]+)"', html)
    assert len(srcs) >= 14 and all(s.startswith("data:image/png;base64,") for s in srcs)
    # comparison table: one row per run with CI brackets
    comp = html.split(f">{COMPARISON}</h2>")[1].split("</table>")[0]
    assert "run_good" in comp and "run_noisy" in comp and "[" in comp
    assert "localisation" in html and "<b>attention</b>" in html
    assert "| run |" in md


def test_report_single_run_and_missing_run(two_runs, tmp_path):
    from medalign.cli import main

    root, good, _ = two_runs
    assert main(["report", str(good), "--out", str(tmp_path / "r.html"), "--no-thumbnails"]) == 0
    assert (tmp_path / "r.md").is_file()
    assert main(["report", str(tmp_path / "nope"), "--out", str(tmp_path / "x.html")]) == 2


def test_report_needs_evaluation(tmp_path):
    from medalign.errors import MedAlignError

    (tmp_path / "empty_run").mkdir()
    with pytest.raises(MedAlignError, match="medalign evaluate"):
        build_report([tmp_path / "empty_run"], tmp_path / "r.html")


def test_md_to_html_escapes():
    h = md_to_html("# T\n<script>x</script> **b**\n\n- a\n- `c`")
    assert "<script>" not in h and "&lt;script&gt;" in h and "<b>b</b>" in h and "<li><code>c</code></li>" in h


class _FakeModel:
    """Stands in for api.load(): deterministic text embeddings from the text's hash."""

    def __init__(self, run_dir):
        self.config = {"recipe": {"name": "clip"}, "data": {"manifest": "m.csv", "cache_dir": "no_cache"}}
        self.model_id = "fake123"
        self.cache_dir = None

    def encode_text(self, texts):
        import hashlib

        out = []
        for t in texts:
            seed = int(hashlib.sha256(t.encode()).hexdigest()[:8], 16)
            out.append(np.random.default_rng(seed).normal(size=16))
        return np.asarray(out, np.float32)


def test_evaluate_run_and_cli_with_fake_model(tmp_path, monkeypatch):
    """Orchestration: api.load + embed_manifest replaced by fakes; CLI writes metrics + plots."""
    import medalign.api as api
    import medalign.eval.run as ev
    from medalign.cli import main

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(len(CLASSES), 16)) * 2
    splits = {"test": _fake_split(12, rng, 0.1, centres, prefix="t"), "train": _fake_split(30, rng, 0.1, centres, prefix="r")}
    splits["test"]["has_report"] = np.array([True] * 11 + [False])  # one study without a report
    monkeypatch.setattr(api, "load", lambda run_dir, **k: _FakeModel(run_dir))
    monkeypatch.setattr(ev, "_embed", lambda model, manifest, cache, split, required=True: splits[split])
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("recipe: {name: clip}\n")
    assert main(["evaluate", str(run), "--no-baselines", "--n-boot", "20", "--pool", "max"]) == 0
    m = json.loads((run / "eval" / "metrics.json").read_text(encoding="utf-8"))
    assert m["zero_shot"]["pool"] == "max" and m["model_id"] == "fake123" and m["recipe"] == "clip"
    assert m["retrieval"]["text_to_image"]["pool_size"] == 11 and m["n_without_report"] == 1
    assert (run / "eval" / "embeddings_test.npz").is_file() and (run / "eval" / "prompts.npz").is_file()
    assert "training_curves" not in m["plots"]  # no metrics.jsonl in this run
    assert main(["evaluate", str(run), "--pool", "median"]) == 2
    assert main(["evaluate", str(tmp_path / "missing")]) == 2


def test_text_only_classifier_on_fake_encoder():
    from medalign.eval.baselines import supervised_config, text_only_classifier

    vocab = {c: np.eye(len(CLASSES))[i] for i, c in enumerate(CLASSES)}
    enc = lambda ts: np.array([vocab[t.split()[-1]] for t in ts])  # noqa: E731
    tr = [f"finding {CLASSES[i % 5]}" for i in range(20)]
    te = [f"finding {CLASSES[i % 5]}" for i in range(10)]
    res = text_only_classifier(tr, [i % 5 for i in range(20)], te, [i % 5 for i in range(10)], encode=enc,
                               n_classes=5, n_boot=20)
    assert res["classifier"]["accuracy"] == 1.0 and res["classifier"]["ci"]["accuracy"]["lo"] == 1.0
    cfg = supervised_config({"recipe": {"name": "clip", "image_encoder": {"name": "unet3d_cpu"}, "embed_dim": 16},
                             "train": {"epochs": 300}, "data": {"augment": "paper"}}, epochs=2)
    assert cfg["recipe"] == {"name": "supervised", "image_encoder": {"name": "unet3d_cpu"}}
    assert cfg["train"]["epochs"] == 2 and cfg["data"]["augment"] is None
    assert supervised_config({"recipe": {"name": "clip"}, "train": {"epochs": 300}})["train"]["epochs"] == 30


def test_supervised_baseline_budget_follows_the_runs_steps():
    """A tenth of the run's steps, at least 130 (10 epochs of 211 studies at batch 16), never more epochs than the
    run's: the CPU preset keeps 10 epochs, the FLAIR-heavy demo (811 studies, 20 epochs) gets 3, not 10."""
    from medalign.eval.baselines import baseline_epochs, supervised_config

    assert baseline_epochs(80, batch_size=16, n_train=211) == 10      # 13 steps an epoch: 130 steps
    assert baseline_epochs(20, batch_size=16, n_train=811) == 3       # 50 an epoch: 150 steps, not 500
    assert baseline_epochs(300, batch_size=16, n_train=211) == 30     # a tenth of 3900 steps
    assert baseline_epochs(2, batch_size=4, n_train=8) == 2           # a tiny run: its own epochs
    assert baseline_epochs(20, batch_size=16, n_train=811, drop_last=False) == 3  # 51 an epoch
    assert baseline_epochs(20, batch_size=16, n_train=10) == 20       # fewer studies than a batch: one step an epoch
    cfg = supervised_config({"recipe": {"name": "clip"}, "train": {"epochs": 20, "batch_size": 16}}, n_train=811)
    assert cfg["train"]["epochs"] == 3
    assert supervised_config({"recipe": {"name": "clip"}, "train": {"epochs": 20}}, n_train=811, epochs=7)["train"]["epochs"] == 7


def test_a_finished_supervised_baseline_is_reused_only_when_trained_alike(tmp_path):
    """evaluate run again reuses the baseline it trained (same recipe, seed, epochs and data), not another one."""
    import yaml

    from medalign.eval.baselines import _trained_alike

    cfg = {"seed": 0, "recipe": {"name": "supervised", "image_encoder": {"name": "unet3d_cpu"}},
           "train": {"epochs": 3, "batch_size": 16}, "data": {"manifest": "m.csv", "cache_dir": "c"}}
    assert not _trained_alike(tmp_path, cfg)  # nothing there
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({**cfg, "train": {**cfg["train"], "lr": 0.001}}))
    assert not _trained_alike(tmp_path, cfg)  # not finished (no summary.json): an interrupted run is not reused
    (tmp_path / "summary.json").write_text("{}")
    assert _trained_alike(tmp_path, cfg)  # keys the budget does not depend on may differ
    assert not _trained_alike(tmp_path, {**cfg, "train": {"epochs": 10}})
    assert not _trained_alike(tmp_path, {**cfg, "data": {"manifest": "other.csv", "cache_dir": "c"}})
    assert not _trained_alike(tmp_path, {**cfg, "seed": 1})


def test_supervised_recipe_step_and_gradients():
    import torch

    from medalign.recipes import build_recipe
    import medalign.recipes.supervised  # noqa: F401

    torch.manual_seed(0)
    r = build_recipe({"recipe": {"name": "supervised", "image_encoder": {"name": "unet3d_cpu", "channels": [4, 8],
                                                                         "local_level": 1, "out_dim": 8}},
                      "data": {"sequences": ["dwi", "flair"], "shape": [8, 16, 16]}})
    batch = {"image": torch.randn(3, 2, 8, 16, 16), "sequence_mask": torch.ones(3, 2, dtype=torch.bool),
             "label": torch.tensor([0, 4, -1])}
    out = r.training_step(batch)
    logits = r.logits(batch["image"], batch["sequence_mask"])
    expect = torch.nn.functional.cross_entropy(logits[:2], batch["label"][:2])
    assert torch.allclose(out["classification_loss"], expect, atol=1e-6)  # label -1 ignored
    out["classification_loss"].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in r.parameters() if p.requires_grad)
    emb = r.encode_image(batch["image"], batch["sequence_mask"])
    assert emb.shape == (3, 8) and torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    r.eval()  # one pass gives both (the baseline's embedding and its head's calls), as two passes do
    with torch.no_grad():
        both = r.encode_and_classify(batch["image"], batch["sequence_mask"])
        assert torch.allclose(both[0], r.encode_image(batch["image"], batch["sequence_mask"]), atol=1e-6)
        assert torch.allclose(both[1], r.logits(batch["image"], batch["sequence_mask"]), atol=1e-6)
    r.train()
    v = r.validation_end([r.validation_step(batch)])
    assert 0.0 <= v["accuracy"] <= 1.0


def test_image_only_embeddings_skip_cross_modal_parts(tmp_path):
    """A recipe without a text side (SimCLR/MICLe): case->case and probes only, report still renders."""
    from medalign.eval.evaluate import evaluate_embeddings, write_plots

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(len(CLASSES), 16)) * 2
    test = _fake_split(10, rng, 0.1, centres, prefix="t")
    train = _fake_split(20, rng, 0.1, centres, prefix="r")
    for d in (test, train):
        d["has_report"] = np.zeros(len(d["study_id"]), bool)
    m = evaluate_embeddings(test, train=train, n_boot=10, probes=("knn",), fractions=(1.0,))
    assert "text_to_image" not in m["retrieval"] and "case_to_case" in m["retrieval"]
    assert "tables" not in m and m["probe"]["knn"]["1.0"]["accuracy"] > 0.9
    run = tmp_path / "img_run"
    m["plots"] = write_plots(run / "eval", test, m, run_dir=run)
    assert "similarity_matrix" not in m["plots"] and "embedding_map" in m["plots"]
    (run / "eval" / "metrics.json").write_text(json.dumps(m))
    html_p, _ = build_report([run], tmp_path / "r.html", thumbnails=False)
    assert ">Retrieval</h3>" in html_p.read_text(encoding="utf-8")


def test_report_renders_a_run_with_only_extras(tmp_path):
    """GiMP/SSL runs have report extras but no embedding evaluation: render the extras alone."""
    import json

    from medalign.eval.report import build_report

    run = tmp_path / "gimp_run"
    (run / "report_extras").mkdir(parents=True)
    (run / "report_extras" / "gimp_ablation.json").write_text(json.dumps({
        "title": "GiMP ablation", "markdown": "Aggregator on/off.",
        "tables": [{"caption": "Table 2", "columns": ["config", "acc"], "rows": [["GiMP", 0.85]]}]}),
        encoding="utf-8")
    html, md = build_report([run], tmp_path / "r.html")
    text = html.read_text(encoding="utf-8")
    assert "GiMP ablation" in text and "Table 2" in text and "0.85" in text
    # no headline figures -> no empty comparison table; the run is still listed
    assert "Comparison across runs" not in text and "gimp_run (" in text
    empty = tmp_path / "empty_run"
    empty.mkdir()
    import pytest

    from medalign.errors import MedAlignError
    with pytest.raises(MedAlignError, match="no metrics"):
        build_report([empty], tmp_path / "r2.html")
