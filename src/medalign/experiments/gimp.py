"""GiMP experiments: gene-encoder pretraining, pretrain -> finetune -> test, the TCGA and ablation tables.

* ``pretrain_gene_encoder``: supervised gene-only training of a gene encoder (then frozen, as in
  the paper), through the one loop (``medalign.train.loop.train_model``) via ``GeneTask``.
* ``run_gimp``: one configuration end to end; both GiMP stages (``recipe.stage``) go through
  ``train_model`` in memory (AdamW, cosine; finetune keeps the best-val-accuracy weights).
* ``run_ablation``: the paper's Table 2 rows + baselines on a synthetic image-omic cohort, t-SNE of CLS_pat.
* ``run_tcga``: gene encoders (+ majority class) vs logistic regression on real TCGA.
Confidence intervals come from medalign.eval.bootstrap.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medalign.data.memory import ColumnDataset
from medalign.data.omic_cohort import (BagOmicDataset, ImageOmicCohort, cohort_batch,
                                       iterate_minibatches)
from medalign.errors import CohortError
from medalign.eval.bootstrap import bootstrap_cis, format_ci
from medalign.experiments.progress import Progress, load_row, row_file, save_row
from medalign.models.omics import GeneClassifier, build_gene_encoder, save_gene_encoder
from medalign.recipes import Recipe
from medalign.recipes.gimp import GiMP
from medalign.train.config import TrainConfig
from medalign.train.loop import train_model

ABLATIONS: dict[str, dict[str, Any]] = {
    # name: (aggregator, gene_encoder, triplet, mpm) -- the rows of the paper's Table 2 + baselines
    "ABMIL (image only)": dict(aggregator="abmil", gene_encoder=None, use_triplet=False, use_mpm=False),
    "TransMIL (image only)": dict(aggregator="transmil", gene_encoder=None, use_triplet=False, use_mpm=False),
    "Aggregator (image only)": dict(aggregator="nystrom", gene_encoder=None, use_triplet=False, use_mpm=False),
    "SNN (gene only)": dict(aggregator=None, gene_encoder="snn", use_triplet=False, use_mpm=False),
    "GroupMSA (gene only)": dict(aggregator=None, gene_encoder="groupmsa", use_triplet=False, use_mpm=False),
    "Aggregator + SNN": dict(aggregator="nystrom", gene_encoder="snn", use_triplet=False, use_mpm=False),
    "Aggregator + GroupMSA": dict(aggregator="nystrom", gene_encoder="groupmsa", use_triplet=False, use_mpm=False),
    "Aggregator + MPM": dict(aggregator="nystrom", gene_encoder=None, use_triplet=False, use_mpm=True),
    "Aggregator + Triplet": dict(aggregator="nystrom", gene_encoder=None, use_triplet=True, use_mpm=False),
    "Aggregator + GroupMSA + Triplet": dict(aggregator="nystrom", gene_encoder="groupmsa", use_triplet=True,
                                            use_mpm=False),
    "GiMP (all)": dict(aggregator="nystrom", gene_encoder="groupmsa", use_triplet=True, use_mpm=True),
    "GiMP with SNN genes": dict(aggregator="nystrom", gene_encoder="snn", use_triplet=True, use_mpm=True),
}


# Defaults of ``medalign gimp ablation`` (configs/gimp_cpu.yaml holds the same): small enough for
# ~2 min on one shared CPU core; the paper's L = 6000 / 1024-d / 100+70 epochs need a GPU.
DEFAULT_ABLATION: dict[str, dict[str, Any]] = {
    "synth": dict(n=200, n_classes=2, seed=0, feat_dim=32, n_genes=256, n_gene_groups=16, informative_groups=4,
                  img_signal=1.0, gene_signal=1.5, tumour_fraction=0.04, bag_min=100, bag_max=1500, fmt="h5"),
    "train": dict(dim=32, aggregator_kwargs={"heads": 2, "num_landmarks": 32},
                  gene_kwargs={"groupmsa": {"n_fragments": 16, "n_groups": 4, "dim": 32, "heads": 2},
                               "snn": {"hidden": (128,), "dim": 32}},
                  pretrain_epochs=6, finetune_epochs=8, gene_epochs=60, lr=1e-3, pretrain_lr=1e-3, batch_size=4,
                  mpm_length=512, mining="batch_hard", margin=0.8, n_boot=1000),
}


def stage_config(*, epochs: int, lr: float, batch_size: int, weight_decay: float = 1e-2,
                 select_on_val: bool = False) -> TrainConfig:
    """AdamW + cosine (no warm-up, no clipping, fp32), quiet; ``select_on_val`` monitors val accuracy."""
    return TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, optimizer="adamw", scheduler="cosine",
                       weight_decay=weight_decay, grad_clip=None, warmup_steps=0, progress=False,
                       tensorboard=False, drop_last=True, ema_decay=None, amp=False,
                       monitor="acc" if select_on_val else "loss", monitor_mode="max" if select_on_val else "min")


class GeneTask(Recipe):
    """A GeneClassifier as a recipe for the one loop: cross-entropy on (expression, label) batches."""

    def __init__(self, classifier: GeneClassifier) -> None:
        super().__init__()
        self.classifier = classifier

    def training_step(self, batch: dict) -> dict[str, Tensor]:
        return {"ce_loss": F.cross_entropy(self.classifier(batch["expression"]), batch["label"])}

    @torch.no_grad()
    def validation_step(self, batch: dict) -> dict[str, Tensor]:
        logits = self.classifier(batch["expression"])  # (B, n_classes)
        return {"ce_loss": F.cross_entropy(logits, batch["label"]), "correct": logits.argmax(1) == batch["label"]}

    def validation_end(self, outputs: list[dict[str, Any]]) -> dict[str, float]:
        return {"acc": float(torch.cat([o["correct"] for o in outputs]).float().mean())}


def pretrain_gene_encoder(encoder: nn.Module, x_train: Tensor, y_train: Tensor, x_val: Tensor, y_val: Tensor, *,
                          n_classes: int, epochs: int = 30, lr: float = 1e-3, weight_decay: float = 1e-2,
                          batch_size: int = 32, seed: int = 0) -> tuple[GeneClassifier, dict]:
    """Supervised gene-only training (AdamW, cosine); keeps the weights with the best val accuracy."""
    torch.manual_seed(seed)
    model = GeneClassifier(encoder, n_classes)
    val_ds = ColumnDataset({"expression": x_val, "label": y_val}) if len(x_val) else None
    tc = stage_config(epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay,
                      select_on_val=val_ds is not None)
    summary = train_model(GeneTask(model), ColumnDataset({"expression": x_train, "label": y_train}), val_ds, tc,
                          seed=seed, keep_best=val_ds is not None)
    model.eval()
    best = summary.get("best_acc") if val_ds is not None else None
    return model, {"best_val_acc": best if best is not None else 0.0, "summary": summary}


def train_stage(model: GiMP, cohort: ImageOmicCohort, stage: str, *, epochs: int, lr: float, batch_size: int,
                seed: int, weight_decay: float = 1e-2, select_on_val: bool = False,
                log: list | None = None) -> dict[str, Any]:
    """One GiMP stage ("pretrain" | "finetune") on the train split; best-val-accuracy weights when selecting."""
    model.stage = stage  # the recipe's training_step follows it
    val_ds = BagOmicDataset(cohort, "val") if select_on_val else None
    val_ds = val_ds if val_ds is not None and len(val_ds) else None
    tc = stage_config(epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay,
                      select_on_val=val_ds is not None)
    summary = train_model(model, BagOmicDataset(cohort, "train"), val_ds, tc, seed=seed, keep_best=val_ds is not None)
    if log is not None:
        log.append({"stage": stage, **{k: v for k, v in summary.items() if k not in ("run_dir", "world_size")}})
    return summary


@torch.no_grad()
def predict(model: GiMP, cohort: ImageOmicCohort, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities (n, C), CLS_pat (n, pat_dim)) for the given rows, whole bags."""
    model.eval()
    probs, toks = [], []
    for b in iterate_minibatches(idx, 16, rng=None):
        batch = cohort_batch(cohort, b)
        tok = model.encode_patient(batch["bags"], batch["expression"])
        probs.append(model.head(tok).softmax(-1))
        toks.append(tok)
    return torch.cat(probs).numpy(), torch.cat(toks).numpy()


def run_gimp(cohort: ImageOmicCohort, *, aggregator: str | None = "nystrom", gene_encoder: str | None = "groupmsa",
             use_triplet: bool = True, use_mpm: bool = True, dim: int = 32, aggregator_kwargs: dict | None = None,
             gene_kwargs: dict | None = None, gene_encoders: dict[str, nn.Module] | None = None,
             pretrain_epochs: int = 10, finetune_epochs: int = 10, gene_epochs: int = 30, lr: float = 1e-4,
             pretrain_lr: float | None = None, batch_size: int = 8, mpm_length: int = 6000,
             mining: str = "batch_hard", margin: float = 0.8, seed: int = 0) -> dict[str, Any]:
    """One configuration end to end: [gene pretrain] -> [GiMP pretrain] -> finetune -> test.

    ``gene_encoders`` caches pretrained gene encoders by name so an ablation trains each once.
    Returns metrics, the pretrained CLS_pat of the train split (for t-SNE) and the log.
    """
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    log: list[dict] = []
    model = GiMP(in_dim=cohort.in_dim, n_genes=cohort.expression.shape[1], n_classes=len(cohort.classes), dim=dim,
                 aggregator=aggregator, aggregator_kwargs=aggregator_kwargs, gene_encoder=gene_encoder,
                 gene_kwargs=gene_kwargs, use_triplet=use_triplet, use_mpm=use_mpm, mpm_length=mpm_length,
                 margin=margin, mining=mining, seed=seed)
    if gene_encoder is not None:  # supervised gene-only pretraining, then frozen
        cache = gene_encoders if gene_encoders is not None else {}
        if gene_encoder not in cache:
            tr, va = cohort.indices("train"), cohort.indices("val")
            torch.manual_seed(seed)  # the same gene encoder whichever row asks first
            enc = build_gene_encoder(gene_encoder, cohort.expression.shape[1], **(gene_kwargs or {}))
            clf, info = pretrain_gene_encoder(enc, cohort.expression[tr], cohort.labels[tr], cohort.expression[va],
                                              cohort.labels[va], n_classes=len(cohort.classes), epochs=gene_epochs,
                                              lr=1e-3, seed=seed)
            cache[gene_encoder] = clf.encoder
            log.append({"stage": "gene_pretrain", "best_val_acc": info["best_val_acc"]})
        model.gene_encoder.load_state_dict(cache[gene_encoder].state_dict())
    train_idx, test_idx = cohort.indices("train"), cohort.indices("test")
    tsne_tokens = tsne_test = None
    if aggregator is not None and (use_triplet or use_mpm) and pretrain_epochs > 0:
        train_stage(model, cohort, "pretrain", epochs=pretrain_epochs, lr=pretrain_lr or lr, batch_size=batch_size,
                    seed=seed, log=log)
        _, tsne_tokens = predict(model, cohort, train_idx)
        _, tsne_test = predict(model, cohort, test_idx)
    train_stage(model, cohort, "finetune", epochs=finetune_epochs, lr=lr, batch_size=batch_size, seed=seed,
                select_on_val=True, log=log)
    probs, _ = predict(model, cohort, test_idx)
    y = cohort.labels[test_idx].numpy()
    return {"probs": probs, "y": y, "pred": probs.argmax(1), "tsne_tokens": tsne_tokens,
            "tsne_labels": cohort.labels[train_idx].numpy(), "tsne_test_tokens": tsne_test,
            "tsne_test_labels": cohort.labels[test_idx].numpy(), "log": log, "seconds": time.perf_counter() - t0,
            "model": model}


def classification_metrics(y: np.ndarray, pred: np.ndarray, *, n_boot: int = 1000, seed: int = 0) -> dict:
    """Accuracy and macro-F1 with percentile bootstrap CIs over test patients (one resampling pass)."""
    from sklearn.metrics import f1_score

    def both(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
        return {"accuracy": float((a == b).mean()), "macro_f1": float(f1_score(a, b, average="macro"))}

    cis = bootstrap_cis(both, y, pred, n=n_boot, seed=seed)
    return {**cis, "n_test": int(len(y))}


def _write_extra(run_dir: Path, name: str, payload: dict) -> Path:
    """run_dir/report_extras/<name>.json in the CONTRACTS.md format (rendered by the HTML report)."""
    from medalign.utils import atomic_write_json

    path = run_dir / "report_extras" / f"{name}.json"
    atomic_write_json(path, payload)
    return path


def _tsne_plot(path: Path, panels: list[list[tuple[str, np.ndarray, np.ndarray]]], classes: list[str],
               seed: int) -> None:
    """One row of t-SNE panels per entry of ``panels`` (e.g. train split, test split)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    from medalign.eval.plots import save_figure

    n_rows, n_cols = len(panels), len(panels[0])
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(4.2 * n_cols, 4 * n_rows), squeeze=False)
    for ax, (title, tok, y) in ((a, p) for row_axes, row in zip(axes, panels) for a, p in zip(row_axes, row)):
        if 1 < len(set(y.tolist())) < len(y):  # a number to go with the picture: silhouette of CLS_pat by class
            from sklearn.metrics import silhouette_score

            title = f"{title}\nsilhouette {silhouette_score(tok, y):.2f}"
        if len(tok) >= 8:
            emb = TSNE(n_components=2, perplexity=min(30, max(2, len(tok) // 4)), init="pca",
                       random_state=seed).fit_transform(tok)
        else:  # too few points for t-SNE (tiny test runs): the first two coordinates
            emb = tok[:, :2]
        for c, name in enumerate(classes):
            ax.scatter(emb[y == c, 0], emb[y == c, 1], s=12, label=name)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([]), ax.set_yticks([])
    axes[0][0].legend(fontsize=8)
    fig.suptitle("t-SNE of CLS_pat after pretraining (rows: train split, test split)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


TSNE_TITLES = {"GiMP (all)": "GiMP: image + GroupMSA genes", "GiMP with SNN genes": "GiMP with SNN genes",
               "Aggregator + Triplet": "without gene inducing (image triplet)", "Aggregator + MPM": "image only, MPM"}


def run_ablation(manifest: str | Path, out_dir: str | Path, *, rows: list[str] | None = None,
                 seeds: tuple[int, ...] = (0,), n_boot: int = 1000, tsne: bool = True,
                 log: Callable[[str], None] | None = print, **kwargs: Any) -> dict[str, Any]:
    """Table-2-style ablation (+ baselines) on an image-omic cohort; t-SNE of CLS_pat (Fig. 2 style).

    kwargs go to ``run_gimp`` (dim, epochs, mpm_length, aggregator_kwargs, gene_kwargs ...).
    Writes results.json, report_extras/gimp_ablation.json and report_extras/gimp_ablation_tsne.png.
    Each finished (row, seed) is written at once to ``OUT/rows/`` and a rerun with the same
    manifest and settings reuses it; ``log`` gets a progress line with an ETA per unit.
    """
    from medalign.utils import atomic_path, atomic_write_json

    out_dir = Path(out_dir)
    cohort = ImageOmicCohort.from_manifest(manifest)
    names = rows or list(ABLATIONS)
    unknown = [r for r in names if r not in ABLATIONS]
    if unknown:
        raise CohortError(f"unknown ablation rows {unknown}; known: {list(ABLATIONS)}")
    table, summary, tsne_panels = [], {}, []
    gene_caches: dict[int, dict[str, nn.Module]] = {}  # each gene encoder is pretrained once per seed
    progress = Progress(len(names) * len(seeds), log)
    for name in names:
        cfg = ABLATIONS[name]
        accs, f1s, secs, first = [], [], [], None
        for seed in seeds:
            path = row_file(out_dir, name, seed, {"manifest": str(manifest), "settings": kwargs})
            reused = path.is_file()
            if reused:
                r = load_row(path)
            else:
                progress.start(name, seed)
                r = run_gimp(cohort, **cfg, seed=seed, gene_encoders=gene_caches.setdefault(seed, {}), **kwargs)
                save_row(path, r)
            m = classification_metrics(r["y"], r["pred"], n_boot=n_boot, seed=seed)
            progress.finish(name, seed, m["accuracy"]["value"], r["seconds"], reused)
            accs.append(m["accuracy"]["value"]), f1s.append(m["macro_f1"]["value"]), secs.append(r["seconds"])
            first = first or (r, m)
        r, m = first
        if tsne and r["tsne_tokens"] is not None and name in TSNE_TITLES:
            tsne_panels.append((name, r["tsne_tokens"], r["tsne_labels"], r["tsne_test_tokens"],
                                r["tsne_test_labels"]))
        mark = lambda b: "✓" if b else ""  # noqa: E731
        gene = {"groupmsa": "GroupMSA", "snn": "SNN", None: ""}[cfg["gene_encoder"]]
        agg = {"nystrom": "Nystrom", "transmil": "TransMIL", "abmil": "ABMIL", None: ""}[cfg["aggregator"]]
        acc_txt = format_ci(m["accuracy"]) + (f"; mean over {len(seeds)} seeds {np.mean(accs):.3f}" if len(seeds) > 1 else "")
        table.append([name, agg, gene, mark(cfg["use_triplet"]), mark(cfg["use_mpm"]), acc_txt, format_ci(m["macro_f1"]),
                      f"{np.mean(secs):.1f}"])
        summary[name] = {**{k: v for k, v in cfg.items()}, "accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
                         "accuracy_per_seed": accs, "macro_f1_per_seed": f1s, "seconds": secs,
                         "log_seed0": r["log"]}
    table.append(_majority_row(cohort, n_boot, seeds[0], summary))
    images = []
    if tsne_panels:
        order = list(TSNE_TITLES)
        tsne_panels.sort(key=lambda p: order.index(p[0]))
        titles = TSNE_TITLES
        png = out_dir / "report_extras" / "gimp_ablation_tsne.png"
        _tsne_plot(png, [[(f"{titles[p[0]]} (train)", p[1], p[2]) for p in tsne_panels],
                         [(f"{titles[p[0]]} (test)", p[3], p[4]) for p in tsne_panels]], cohort.classes, seeds[0])
        with atomic_path(out_dir / "cls_pat_pretrained.npz", suffix=".npz") as tmp:  # to re-plot or re-measure
            np.savez(tmp, **{f"{p[0]}/train": p[1] for p in tsne_panels}, **{f"{p[0]}/test": p[3] for p in tsne_panels},
                     train_labels=tsne_panels[0][2], test_labels=tsne_panels[0][4])
        images.append(png.relative_to(out_dir).as_posix())
    n_split = {s: int(len(cohort.indices(s))) for s in ("train", "val", "test")}
    lens = [int(b.shape[0]) for b in cohort.bags]
    md = (f"Synthetic image-omic cohort `{manifest}`: {len(cohort.bags)} patients ({', '.join(cohort.classes)}), "
          f"bags of {min(lens)}..{max(lens)} patches x {cohort.in_dim} features, {cohort.expression.shape[1]} genes; "
          f"train/val/test = {n_split['train']}/{n_split['val']}/{n_split['test']}. Pretraining (triplet and/or MPM) on "
          f"the train split, then fine-tuning (MLP head, AdamW, cosine, best-val epoch), test accuracy with 95% "
          f"bootstrap CIs over test patients. Settings: "
          + ", ".join(f"{k}={v}" for k, v in sorted(kwargs.items())) + f"; seeds={list(seeds)}. "
          "Read the t-SNE with care: the gene encoder was pretrained with labels on the same train patients, "
          "so a clean train-split picture is not evidence of generalisation; the test row and the table are.")
    payload = {"title": "GiMP ablation (paper Table 2 style) on the synthetic image-omic cohort", "markdown": md,
               "images": images, "captions": {p: "t-SNE of the patient token CLS_pat after pretraining, per "
                                                 "configuration (top: train patients, bottom: test), coloured by class"
                                              for p in images},
               "tables": [{"caption": "Ablation: aggregator / gene encoder / triplet / MPM (test, 95% CI)",
                           "columns": ["Configuration", "Aggregator", "Genes", "Triplet", "MPM", "Accuracy",
                                       "Macro-F1", "Seconds"], "rows": table}]}
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_extra(out_dir, "gimp_ablation", payload)
    atomic_write_json(out_dir / "results.json", {"manifest": str(manifest), "settings": kwargs, "seeds": list(seeds),
                                                 "results": summary})
    return {"results": summary, "table": table, "images": images}


def _majority_row(cohort: ImageOmicCohort, n_boot: int, seed: int, summary: dict) -> list:
    """The reference every accuracy in the table must beat: the train split's most frequent class."""
    y_tr, y_te = (cohort.labels[cohort.indices(s)].numpy() for s in ("train", "test"))
    m = classification_metrics(y_te, np.full(len(y_te), np.bincount(y_tr).argmax()), n_boot=n_boot, seed=seed)
    summary["Majority class (train)"] = {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}
    return ["Majority class (train)", "", "", "", "", format_ci(m["accuracy"]), format_ci(m["macro_f1"]), "0.0"]


# --------------------------------------------------------------------------- real TCGA expression
def _tcga_inputs(data_dir: Path, cohorts: tuple[str, ...], *, label: str, use_signatures: bool, seed: int,
                 fractions: tuple[float, float, float]) -> dict[str, Any]:
    """Aligned Xena expression, patient split, train-only z-scores: x/y per split + what the report says."""
    from medalign.data.omics import ExpressionScaler, load_xena, patient_split, read_signatures, signature_gene_order

    table = load_xena(data_dir, cohorts, label=label)
    counts = table.labels.value_counts()
    keep = counts[counts >= 10].index  # classes too rare to split are dropped (and reported)
    dropped = {k: int(v) for k, v in counts.items() if k not in keep}
    mask = table.labels.isin(keep).to_numpy()
    expr, labels = table.expression[mask], table.labels[mask]
    genes, groups = list(expr.columns), {}
    sig_path = data_dir / "xena_signatures.csv"
    if use_signatures and sig_path.exists():
        genes, groups = signature_gene_order(genes, read_signatures(sig_path))
        expr = expr[genes]
    split = patient_split(labels, fractions=fractions, seed=seed)
    classes = sorted(labels.unique())
    y_all = labels.map({c: i for i, c in enumerate(classes)}).to_numpy(np.int64)
    idx = {s: np.flatnonzero(split.to_numpy() == s) for s in ("train", "val", "test")}
    scaler = ExpressionScaler(log="auto").fit(expr.to_numpy()[idx["train"]])  # train-only statistics
    x_all = scaler.transform(expr.to_numpy())
    return {"xs": {s: torch.from_numpy(x_all[i]) for s, i in idx.items()},
            "ys": {s: torch.from_numpy(y_all[i]) for s, i in idx.items()},
            "classes": classes, "genes": genes, "groups": groups, "dropped": dropped, "split": split,
            "labels": labels, "n_split": {s: int(len(i)) for s, i in idx.items()}, "log": scaler.use_log_}


def _baselines(xs: dict[str, Tensor], ys: dict[str, Tensor], classes: list[str]) -> dict[str, dict]:
    """Majority class (of the train split) and logistic regression with C picked on val."""
    from sklearn.linear_model import LogisticRegression

    y_tr, y_va = ys["train"].numpy(), ys["val"].numpy()
    major = int(np.bincount(y_tr, minlength=len(classes)).argmax())
    out = {"Majority class": {"pred": np.full(len(ys["test"]), major), "val_acc": float((y_va == major).mean()),
                              "seconds": 0.0, "params": {"class": classes[major]}}}
    t0 = time.perf_counter()
    best_c, best_acc, best_lr = 1.0, -1.0, None
    for c in (0.001, 0.01, 0.1, 1.0):
        lr = LogisticRegression(C=c, max_iter=3000).fit(xs["train"].numpy(), y_tr)
        acc = float((lr.predict(xs["val"].numpy()) == y_va).mean())
        if acc > best_acc:
            best_c, best_acc, best_lr = c, acc, lr
    out["Logistic regression"] = {"pred": best_lr.predict(xs["test"].numpy()), "val_acc": best_acc,
                                  "seconds": time.perf_counter() - t0, "params": {"C": best_c}}
    return out


def _gene_encoders(xs: dict[str, Tensor], ys: dict[str, Tensor], n_classes: int, out_dir: Path, *, epochs: int,
                   seed: int, dim: int, n_fragments: int, n_groups: int) -> dict[str, dict]:
    """GroupMSA and SNN trained supervised (best val epoch); each encoder saved for reuse (frozen)."""
    n_genes = xs["train"].shape[1]
    specs = {"GroupMSA": ("groupmsa", dict(n_fragments=n_fragments, n_groups=n_groups, dim=dim, heads=4)),
             "SNN": ("snn", dict(hidden=(256,), dim=dim))}
    out = {}
    for name, (key, kw) in specs.items():
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        clf, info = pretrain_gene_encoder(build_gene_encoder(key, n_genes, **kw), xs["train"], ys["train"], xs["val"],
                                          ys["val"], n_classes=n_classes, epochs=epochs, lr=1e-3, seed=seed)
        with torch.no_grad():
            pred = clf(xs["test"]).argmax(1).numpy()
        save_gene_encoder(clf.encoder, out_dir / f"{key}_encoder.safetensors")
        out[name] = {"pred": pred, "val_acc": info["best_val_acc"], "seconds": time.perf_counter() - t0,
                     "params": {**kw, "n_parameters": sum(p.numel() for p in clf.parameters())}}
    return out


def run_tcga(data_dir: str | Path, out_dir: str | Path, *, cohorts: tuple[str, ...] = ("blca", "coadread", "stad"),
             label: str = "cohort", use_signatures: bool = True, epochs: int = 30, seed: int = 0, dim: int = 64,
             n_fragments: int = 64, n_groups: int = 8, n_boot: int = 1000,
             fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)) -> dict[str, Any]:
    """GroupMSA vs SNN vs logistic regression vs the majority class on real TCGA expression (patient split).

    Scaling statistics come from the train split only; logistic regression picks C on val.
    Writes results.json, splits.csv and report_extras/gimp_tcga_<label>.json under out_dir.
    """
    from medalign.utils import atomic_path, atomic_write_json

    data_dir, out_dir = Path(data_dir), Path(out_dir)
    d = _tcga_inputs(data_dir, cohorts, label=label, use_signatures=use_signatures, seed=seed, fractions=fractions)
    xs, ys, classes = d["xs"], d["ys"], d["classes"]
    out_dir.mkdir(parents=True, exist_ok=True)
    results = _baselines(xs, ys, classes)
    results.update(_gene_encoders(xs, ys, len(classes), out_dir, epochs=epochs, seed=seed, dim=dim,
                                  n_fragments=n_fragments, n_groups=n_groups))
    rows, summary = [], {}
    for name, r in results.items():
        m = classification_metrics(ys["test"].numpy(), r["pred"], n_boot=n_boot, seed=seed)
        summary[name] = {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "val_acc": r["val_acc"],
                         "seconds": round(r["seconds"], 2), "params": r["params"]}
        rows.append([name, format_ci(m["accuracy"]), format_ci(m["macro_f1"]), f"{r['val_acc']:.3f}",
                     f"{r['seconds']:.1f}"])
    n_genes, groups, n_split = len(d["genes"]), d["groups"], d["n_split"]
    out = {"task": label, "cohorts": list(cohorts), "classes": classes, "dropped_rare_classes": d["dropped"],
           "n_genes": n_genes, "n_signature_groups": len(groups), "split_sizes": n_split, "seed": seed,
           "log_transform": d["log"], "results": summary}
    atomic_write_json(out_dir / "results.json", out)
    with atomic_path(out_dir / "splits.csv") as tmp:
        d["split"].rename("split").to_frame().assign(label=d["labels"]).to_csv(tmp)
    task = "cancer type" if label == "cohort" else f"subtype ({label})"
    md = (f"Real TCGA RNA-seq (Xena tables: {', '.join(c.upper() for c in cohorts)}), {task}, "
          f"{len(classes)} classes ({', '.join(classes)}), {n_genes} genes"
          f"{f' ordered by {len(groups)} signature groups' if groups else ''}. Patient-level stratified split "
          f"train/val/test = {n_split['train']}/{n_split['val']}/{n_split['test']}; z-scores use train "
          f"statistics only. Gene encoders trained supervised ({epochs} epochs, AdamW, cosine; best val epoch). "
          f"Majority class = the most frequent train class for every test patient. "
          f"95% percentile bootstrap CIs over test patients ({n_boot} resamples)."
          + (f" Classes with < 10 patients dropped: {d['dropped']}." if d["dropped"] else ""))
    _write_extra(out_dir, f"gimp_tcga_{label}", {
        "title": f"GiMP gene encoders on real TCGA: {task}", "markdown": md, "images": [],
        "tables": [{"caption": "Test accuracy / macro-F1 [95% CI]",
                    "columns": ["Model", "Accuracy", "Macro-F1", "Val acc", "Seconds"], "rows": rows}]})
    return out
