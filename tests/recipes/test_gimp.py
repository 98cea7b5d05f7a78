"""GiMP recipe end to end on a tiny synthetic image-omic cohort; CLI commands."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from medalign.data.omic_cohort import ImageOmicCohort, cohort_batch
from medalign.data.synth.omics import generate_omics_cohort
from medalign.experiments.gimp import ABLATIONS, run_gimp
from medalign.recipes.gimp import GiMP

TINY_SYNTH = dict(n=16, feat_dim=8, n_genes=32, n_gene_groups=4, informative_groups=1, bag_min=20, bag_max=150)
TINY_TRAIN = dict(dim=8, aggregator_kwargs={"heads": 2, "num_landmarks": 8}, gene_kwargs={"groupmsa": {"n_fragments": 8, "n_groups": 2,
                  "dim": 8, "heads": 2}, "snn": {"hidden": (16,), "dim": 8}}, pretrain_epochs=1, finetune_epochs=1, gene_epochs=1, mpm_length=32, batch_size=4)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn")
    return ImageOmicCohort.from_manifest(generate_omics_cohort(out, seed=1, **TINY_SYNTH))


def test_synthetic_cohort_layout_and_structure(tmp_path):
    m = generate_omics_cohort(tmp_path, n=8, feat_dim=8, n_genes=16, n_gene_groups=4, bag_min=400, bag_max=500,
                              tumour_fraction=0.2, fmt="pt")
    df = pd.read_csv(m)
    assert set(df.columns) >= {"study_id", "patient_id", "split", "label", "bag", "omics", "n_patches"}
    assert (tmp_path / df.bag[0]).exists() and "pt_files" in df.bag[0]
    truth = json.loads((tmp_path / "ground_truth.json").read_text())
    assert len(truth["studies"]) == 8
    c = ImageOmicCohort.from_manifest(m)
    bag = c.bags[0].numpy()
    # spatial contiguity: consecutive patches are far more alike than random pairs
    near = np.linalg.norm(bag[1:] - bag[:-1], axis=1).mean()
    rand = np.linalg.norm(bag[np.random.default_rng(0).permutation(len(bag))] - bag, axis=1).mean()
    assert near < rand
    # train statistics only: train expression is standardised
    tr = c.expression[c.indices("train")]
    assert torch.allclose(tr.mean(0), torch.zeros(tr.shape[1]), atol=1e-4)


def test_manifest_errors_name_file(tmp_path):
    from medalign.errors import CohortError

    m = generate_omics_cohort(tmp_path, **TINY_SYNTH)
    df = pd.read_csv(m)
    df.loc[0, "bag"] = "bags/missing.h5"
    df.to_csv(m, index=False)
    with pytest.raises(CohortError, match="missing.h5"):
        ImageOmicCohort.from_manifest(m)


def test_pretrain_step_losses_and_gradients(cohort):
    model = GiMP(in_dim=cohort.in_dim, n_genes=cohort.expression.shape[1], n_classes=2, dim=8, mpm_length=32,
                 aggregator_kwargs={"heads": 2, "num_landmarks": 8},
                 gene_kwargs={"n_fragments": 8, "n_groups": 2, "dim": 8, "heads": 2})
    batch = cohort_batch(cohort, np.arange(8))
    out = model.training_step(batch)
    assert {"triplet_loss", "reconstruction_loss"} <= set(out)
    sum(v for k, v in out.items() if k.endswith("_loss")).backward()
    assert model.aggregator.embed.fc[0].weight.grad is not None
    assert model.decoder.net[1].weight.grad is not None
    assert all(p.grad is None for p in model.gene_encoder.parameters())  # frozen
    model.stage = "finetune"
    ft = model.training_step(model.collate([{"bag": b, "expression": e, "label": int(y), "study_id": s} for b, e, y, s in
                                            zip(batch["bags"], batch["expression"], batch["label"], batch["study_id"])]))
    assert ft["ce_loss"].requires_grad


def test_mpm_requires_token_aggregator():
    with pytest.raises(ValueError, match="MPM"):
        GiMP(in_dim=8, n_genes=32, aggregator="abmil", use_mpm=True)


@pytest.mark.parametrize("row", ["GiMP (all)", "ABMIL (image only)", "SNN (gene only)"])
def test_run_gimp_rows(cohort, row):
    r = run_gimp(cohort, **ABLATIONS[row], **TINY_TRAIN)
    assert r["probs"].shape == (len(cohort.indices("test")), 2)
    assert np.allclose(r["probs"].sum(1), 1, atol=1e-5)
    if row == "GiMP (all)":
        assert r["tsne_tokens"].shape == (len(cohort.indices("train")), 8 + 8)


def test_cli_synth_and_ablation(tmp_path):
    from medalign.cli import main

    assert main(["synth", "omics", str(tmp_path / "c"), "--n", "12", "--feat-dim", "8", "--n-genes", "32",
                 "--n-gene-groups", "4", "--bag-min", "20", "--bag-max", "60"]) == 0
    cfg = tmp_path / "g.yaml"
    cfg.write_text("train:\n  dim: 8\n  aggregator_kwargs: {heads: 2, num_landmarks: 8}\n"
                   "  gene_kwargs: {n_fragments: 8, n_groups: 2, dim: 8, heads: 2}\n  pretrain_epochs: 1\n"
                   "  finetune_epochs: 1\n  gene_epochs: 1\n  mpm_length: 16\n  n_boot: 50\n")
    rc = main(["gimp", "ablation", "--config", str(cfg), "--manifest", str(tmp_path / "c" / "manifest.csv"),
               "--out", str(tmp_path / "run"), "--rows", "GiMP (all),Aggregator + Triplet"])
    assert rc == 0
    extra = json.loads((tmp_path / "run" / "report_extras" / "gimp_ablation.json").read_text())
    rows = extra["tables"][0]["rows"]
    assert len(rows) == 3 and rows[-1][0].startswith("Majority class")  # 2 ablation rows + the baseline
    assert (tmp_path / "run" / extra["images"][0]).exists()
    assert main(["gimp", "ablation", "--out", str(tmp_path / "r2"), "--manifest", str(tmp_path / "c" / "manifest.csv"),
                 "--rows", "nope"]) == 2


def test_shared_loop_runs_gimp_pretraining(cohort, tmp_path):
    """The gimp recipe plugs into medalign.train.loop.fit through RECIPES (bag batches via its own collate)."""
    loop = pytest.importorskip("medalign.train.loop")
    manifest = tmp_path / "m"
    generate_omics_cohort(manifest, seed=1, **TINY_SYNTH)
    cfg = {"seed": 0,
           "data": {"manifest": str(manifest / "manifest.csv")},
           "recipe": {"name": "gimp", "in_dim": 8, "n_genes": 32, "n_classes": 2, "dim": 8, "mpm_length": 32,
                      "aggregator_kwargs": {"heads": 2, "num_landmarks": 8},
                      "gene_kwargs": {"n_fragments": 8, "n_groups": 2, "dim": 8, "heads": 2}},
           "train": {"epochs": 1, "batch_size": 4, "optimizer": "adamw", "lr": 1e-4, "scheduler": "cosine",
                     "progress": False, "tensorboard": False, "amp": False}}
    loop.fit(cfg, tmp_path / "run")
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert any("reconstruction_loss" in ln for ln in lines)
    assert (tmp_path / "run" / "checkpoints" / "last.safetensors").exists()


def test_gene_encoder_checkpoint_round_trip(tmp_path):
    from medalign.errors import CohortError
    from medalign.models.omics import build_gene_encoder, save_gene_encoder

    enc = build_gene_encoder("groupmsa", 32, n_fragments=8, n_groups=2, dim=8, heads=2)
    save_gene_encoder(enc, tmp_path / "g.safetensors")
    kw = dict(in_dim=8, n_genes=32, dim=8, mpm_length=16, aggregator_kwargs={"heads": 2, "num_landmarks": 8},
              gene_kwargs={"n_fragments": 8, "n_groups": 2, "dim": 8, "heads": 2})
    model = GiMP(**kw, gene_checkpoint=str(tmp_path / "g.safetensors"))
    for (k, a), b in zip(enc.state_dict().items(), model.gene_encoder.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(CohortError, match="nothere.safetensors"):
        GiMP(**kw, gene_checkpoint=str(tmp_path / "nothere.safetensors"))


def test_cli_gimp_tcga_on_tiny_xena_layout(tmp_path):
    """`medalign gimp tcga` end to end on a hand-made Xena layout (two cohorts, separable)."""
    from medalign.cli import main

    rng = np.random.default_rng(0)
    data = tmp_path / "tcga"
    data.mkdir()
    for j, c in enumerate(("aaa", "bbb")):
        ids = [f"{c}-{i}" for i in range(25)]
        x = rng.normal(size=(25, 40)) + 3.0 * j
        pd.DataFrame(x, index=ids, columns=[f"G{g}" for g in range(40)]).to_csv(data / f"xena_{c}_rna.csv")
        pd.DataFrame({"case_id": ids, "oncotree_code": c.upper()}).to_csv(data / f"xena_{c}_metadata.csv")
    out = tmp_path / "run"
    assert main(["gimp", "tcga", "--data", str(data), "--cohorts", "aaa,bbb", "--out", str(out), "--epochs", "2",
                 "--dim", "8", "--n-fragments", "8", "--n-groups", "4", "--n-boot", "20"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["results"]) == {"Majority class", "Logistic regression", "GroupMSA", "SNN"}
    assert res["results"]["Logistic regression"]["accuracy"]["value"] == 1.0
    splits = pd.read_csv(out / "splits.csv", index_col=0)
    assert not splits.index.duplicated().any() and set(splits.split) == {"train", "val", "test"}
    extra = json.loads((out / "report_extras" / "gimp_tcga_cohort.json").read_text())
    assert extra["tables"][0]["columns"][0] == "Model" and len(extra["tables"][0]["rows"]) == 4
    assert (out / "groupmsa_encoder.safetensors").exists()
    assert main(["gimp", "tcga", "--data", str(tmp_path / "nope"), "--out", str(out)]) == 2
