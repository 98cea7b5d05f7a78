"""``medalign ssl ...``: self-supervised pretraining experiments (SimCLR / MICLe label efficiency,
HLSS kNN tables).

``label-efficiency`` answers "I have few labels and many unlabelled scans: how do I pretrain?":
it pretrains the same small encoder with SimCLR and MICLe on the (unlabelled) training images,
then compares, at 1%, 10% and 100% of the training labels, (a) a logistic-regression probe on
frozen features and (b) end-to-end fine-tuning, against the same encoder from scratch (and a
CLIP-pretrained encoder when ``--clip-run`` is given). Accuracy and AUROC with percentile
bootstrap CIs over test studies go to ``OUT/label_efficiency.json`` and to a report section
``OUT/report_extras/label_efficiency.json``.

Heavy imports live inside the functions so ``medalign --help`` stays instant.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer


# ---------------------------------------------------------------------------------------------
# Data: everything in memory (tiny cohorts / 28x28 X-rays)
# ---------------------------------------------------------------------------------------------
def _load_pneumoniamnist(path: Optional[Path], size: Optional[int], limit: Optional[int]) -> dict[str, dict]:
    from medalign.data.xray import PneumoniaMNISTDataset

    out = {}
    for split in ("train", "test"):
        ds = PneumoniaMNISTDataset(split, path=path, limit=limit, size=size)
        ids = [f"pmnist-{split}-{int(i)}" for i in ds.index]
        out[split] = {"x": ds.images, "mask": None, "y": ds.labels.numpy(), "pid": ids, "sid": list(ids)}
    return out


def _load_cohort(manifest: Path, cache_dir: Path, test_splits: tuple[str, ...] = ("test",)) -> dict[str, dict]:
    """Train and test (the union of ``test_splits``) of a preprocessed cohort, stacked in memory."""
    import numpy as np
    import torch

    from medalign.data.datasets import CohortDataset
    from medalign.errors import CohortError

    out = {}
    for split, names in (("train", ("train",)), ("test", tuple(test_splits))):
        samples = []
        for name in names:
            ds = CohortDataset(manifest, cache_dir, split=name)
            samples += [ds[i] for i in range(len(ds))]
        if not samples:
            raise CohortError(f"split(s) {', '.join(names)} empty", path=str(manifest))
        out[split] = {
            "x": torch.stack([torch.as_tensor(s["image"]) for s in samples]),  # (N, C, D, H, W)
            "mask": torch.stack([torch.as_tensor(s["sequence_mask"]) for s in samples]),  # (N, C)
            "y": np.array([int(s["label"]) for s in samples]),
            "pid": [str(s["patient_id"]) for s in samples],
            "sid": [str(s["study_id"]) for s in samples],
        }
    return out


def _batches(n: int, bs: int, rng) -> list:
    order = rng.permutation(n)
    return [order[i:i + bs] for i in range(0, n - bs + 1, bs)] or [order]


# ---------------------------------------------------------------------------------------------
# Pretraining, embedding, probing, fine-tuning
# ---------------------------------------------------------------------------------------------
def pretrain(recipe, train: dict, *, epochs: int, batch_size: int, lr: float, seed: int,
             patient_batches: bool = False, log=print) -> list[float]:
    """A minimal SSL loop (Adam, cosine decay) over in-memory ``train``; returns per-epoch losses."""
    import math

    import numpy as np
    import torch

    from medalign.data.samplers import PatientBatchSampler

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam([p for p in recipe.parameters() if p.requires_grad], lr=lr, weight_decay=1e-6)
    n = train["x"].shape[0]
    sampler = None
    if patient_batches:
        bs = max(4, min(batch_size, n) // 2 * 2)
        sampler = PatientBatchSampler(train["pid"], batch_size=bs, seed=seed, drop_last=False)
    steps_per_epoch = len(sampler) if sampler is not None else len(_batches(n, min(batch_size, n), rng))
    total = max(1, epochs * steps_per_epoch)
    step, losses = 0, []
    recipe.train()
    for epoch in range(epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
            batches = list(sampler)
        else:
            batches = _batches(n, min(batch_size, n), rng)
        tot, k = 0.0, 0
        for idx in batches:
            idx = torch.as_tensor(np.asarray(idx))
            batch = {"image": train["x"][idx], "patient_id": [train["pid"][i] for i in idx.tolist()],
                     "study_id": [train["sid"][i] for i in idx.tolist()]}
            if train["mask"] is not None:
                batch["sequence_mask"] = train["mask"][idx]
            for g in opt.param_groups:
                g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
            out = recipe.training_step(batch)
            loss = sum(v for key, v in out.items() if key.endswith("_loss"))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot, k, step = tot + float(loss.detach()), k + 1, step + 1
        losses.append(tot / max(k, 1))
        log(f"  epoch {epoch + 1}/{epochs} loss {losses[-1]:.4f}")
    recipe.eval()
    return losses


def embed(encode, x, mask, *, batch_size: int = 256):
    """Run ``encode(image, mask) -> (B, E)`` over x in batches without gradients -> numpy (N, E)."""
    import torch

    outs = []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            m = mask[i:i + batch_size] if mask is not None else None
            outs.append(encode(x[i:i + batch_size], m).float().cpu())
    return torch.cat(outs).numpy()


def _metric_cis(y, scores, n_classes: int, n_boot: int, seed: int) -> dict:
    import numpy as np

    from medalign.eval.bootstrap import bootstrap_ci
    from medalign.eval.zeroshot import classification_metrics

    m = classification_metrics(y, scores, n_classes=n_classes)

    def acc(yy, ss):
        return float(np.mean(np.asarray(ss).argmax(1) == yy))

    def auc(yy, ss):
        return classification_metrics(yy, ss, n_classes=n_classes)["auroc_macro"]

    return {"accuracy": bootstrap_ci(acc, y, scores, n=n_boot, seed=seed),
            "auroc": bootstrap_ci(auc, y, scores, n=n_boot, seed=seed),
            "balanced_accuracy": m["balanced_accuracy"]}


def probe(train_X, train_y, test_X, test_y, *, fractions, n_classes: int, n_boot: int, seed: int) -> dict:
    """Logistic-regression probe on frozen features at each label fraction (D's probe code)."""
    from medalign.eval.probe import fit_predict_scores, stratified_subsample

    res = {}
    for f in fractions:
        idx = stratified_subsample(train_y, f, seed=seed)
        scores = fit_predict_scores("logreg", train_X[idx], train_y[idx], test_X, n_classes, seed=seed)
        res[str(float(f))] = {"n_train": int(len(idx)), **_metric_cis(test_y, scores, n_classes, n_boot, seed)}
    return res


def finetune(encoder, feat_dim: int, train: dict, test: dict, *, fraction: float, n_classes: int, steps: int,
             batch_size: int, lr: float, seed: int, augment=None, n_boot: int = 200) -> dict:
    """End-to-end fine-tuning of a *copy* of ``encoder`` + a linear head on a stratified label fraction."""
    import copy

    import numpy as np
    import torch
    import torch.nn.functional as F

    from medalign.eval.probe import stratified_subsample

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    enc = copy.deepcopy(encoder).train()
    head = torch.nn.Linear(feat_dim, n_classes)
    params = list(enc.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=lr, weight_decay=1e-5)
    idx = stratified_subsample(train["y"], fraction, seed=seed)
    x, y = train["x"][idx], torch.as_tensor(train["y"][idx], dtype=torch.long)
    mask = train["mask"][idx] if train["mask"] is not None else None

    def forward(xb, mb):
        if mb is not None:
            xb = xb * mb.to(xb).reshape(tuple(mb.shape) + (1,) * (xb.ndim - 2))  # mask as (B, C, 1...)
        return head(enc(xb)["global"])  # (B, n_classes)

    bs = min(batch_size, len(idx))
    for step in range(steps):
        b = torch.as_tensor(rng.choice(len(idx), size=bs, replace=len(idx) < bs))
        xb, mb = x[b], (mask[b] if mask is not None else None)
        if augment is not None:
            xb = augment(xb, mb)
        loss = F.cross_entropy(forward(xb, mb), y[b])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    enc.eval()
    with torch.no_grad():
        scores = torch.cat([forward(test["x"][i:i + 256], test["mask"][i:i + 256] if test["mask"] is not None else None)
                            .softmax(-1) for i in range(0, test["x"].shape[0], 256)]).numpy()
    return {"n_train": int(len(idx)), **_metric_cis(test["y"], scores, n_classes, n_boot, seed)}


def _fmt(ci: dict) -> str:
    from medalign.eval.bootstrap import format_ci

    return format_ci(ci, 3)


def _report(results: dict, out: Path, dataset: str, notes: list[str], n_classes: Optional[int] = None) -> None:
    """results[method][mode][fraction] -> report_extras/label_efficiency.json + a plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medalign.eval.plots import save_figure
    from medalign.utils import atomic_write_json

    fractions = sorted({float(f) for m in results.values() for mode in m.values() for f in mode})
    tables, images = [], []
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, mode in zip(axes, ("probe", "finetune")):
        rows = []
        for j, (method, res) in enumerate(results.items()):
            if mode not in res:
                continue
            r = res[mode]
            accs = [r[str(f)]["accuracy"] for f in fractions if str(f) in r]
            # dodge the methods sideways (log axis: a factor) so overlapping CI whiskers stay readable
            dodge = 1.07 ** (j - (len(results) - 1) / 2)
            xs = [f * 100 * dodge for f in fractions if str(f) in r]
            # A percentile CI need not contain the point estimate (few resamples): clip at 0.
            lo = [max(0.0, a["value"] - (a["lo"] if a["lo"] is not None else a["value"])) for a in accs]
            hi = [max(0.0, (a["hi"] if a["hi"] is not None else a["value"]) - a["value"]) for a in accs]
            ax.errorbar(xs, [a["value"] for a in accs], yerr=[lo, hi], marker="o", capsize=3, label=method)
            for f in fractions:
                if str(f) in r:
                    e = r[str(f)]
                    rows.append([method, f"{f:g}", e["n_train"], _fmt(e["accuracy"]), _fmt(e["auroc"])])
        if n_classes:
            ax.axhline(1.0 / n_classes, color="grey", ls=":", lw=1, label=f"chance (1/{n_classes})")
        ax.set_xscale("log")
        ax.set_xlabel("% of training labels")
        ax.set_ylabel("test accuracy")
        ax.set_title({"probe": "linear probe (frozen)", "finetune": "fine-tuned"}[mode])
        ax.legend(fontsize=7)
        tables.append({"caption": f"{dataset}: {mode} — accuracy and AUROC with 95% bootstrap CIs (test studies)",
                       "columns": ["method", "label fraction", "n labelled", "accuracy [95% CI]", "AUROC [95% CI]"],
                       "rows": rows})
    fig.tight_layout()
    img = save_figure(fig, out / "report_extras" / "label_efficiency.png")
    images.append(str(img.relative_to(out)))
    md = (f"Label efficiency on **{dataset}**: the same encoder pretrained by SimCLR / MICLe on the unlabelled "
          "training images, then probed (logistic regression on frozen features) or fine-tuned end to end "
          "with 1%, 10% and 100% of the training labels, against training from scratch. "
          "CIs: percentile bootstrap over test studies (resampling studies).\n\n" + "\n".join(f"- {n}" for n in notes))
    atomic_write_json(out / "report_extras" / "label_efficiency.json",
                      {"title": f"Self-supervised pretraining: label efficiency ({dataset})", "markdown": md,
                       "images": images, "tables": tables})


def run_label_efficiency(*, dataset: str, out: Path, data: dict[str, dict], spatial_dims: int, in_channels: int,
                         input_shape, channels=(16, 32, 64), methods=("scratch", "simclr", "micle"),
                         fractions=(0.01, 0.1, 1.0), pretrain_epochs: int = 15, batch_size: int = 128,
                         lr: float = 1e-3, finetune_steps: int = 150, finetune_lr: float = 1e-3, seed: int = 0,
                         n_boot: int = 200, clip_run: Optional[Path] = None, layer_order: str = "cbr",
                         global_pool: str = "avgmax", pool_levels="all", stem_stride=1, log=print) -> dict:
    """The experiment behind ``medalign ssl label-efficiency`` (in-memory ``data`` with train/test).

    The encoder is the ``unet3d_cpu`` preset's (Conv -> BatchNorm -> ReLU blocks, avg + max pooling of
    every level, no FC): with the paper's GroupNorm-first blocks and last-level average pooling it
    learned nothing from ~100-200 synthetic studies, even supervised, so every method sat at chance.
    ``pool_levels``: ``"all"``, ``None`` (last level only) or level indices.
    """
    import numpy as np
    import torch

    from medalign.recipes.micle import MICLeRecipe
    from medalign.recipes.simclr import SimCLRRecipe, TensorAugment
    from medalign.utils import atomic_write_json, seed_everything

    seed_everything(seed)
    enc_cfg = {"name": "unet3d_cpu", "spatial_dims": spatial_dims, "channels": list(channels),
               "stem_stride": stem_stride, "layer_order": layer_order, "global_pool": global_pool,
               "local_level": len(channels) - 1}
    if global_pool != "flatten":
        # no FC after the pooling: the probe and the projection head see the pooled maps themselves
        enc_cfg["pool_levels"] = pool_levels if pool_levels in ("all", None) else [int(i) for i in pool_levels]
    common = {"sequences": tuple(f"c{i}" for i in range(in_channels)), "input_shape": tuple(input_shape),
              "image_encoder": enc_cfg, "proj_dim": 64, "gather": False}
    multi = any(p != q for p, q in zip(sorted(data["train"]["pid"]), sorted(set(data["train"]["pid"]))))
    notes = []
    if multi:
        micle_kw, micle_name = {"instance": "study", "fallback": "sequence" if in_channels > 1 else "views"}, "micle"
        notes.append("MICLe positives: two different studies of one patient (patient-grouped batches); "
                     "patients with one study fall back to two different sequences of that study.")
    else:
        micle_kw, micle_name = {"instance": "pseudo"}, "micle (pseudo-instances)"
        notes.append("No patient ids in this data set (one image per 'patient'): true MICLe pairs do not exist. "
                     "'micle (pseudo-instances)' uses two different fixed crops of one image as the two instances, "
                     "i.e. SimCLR with a crop prior; it is *not* evidence about multi-instance pairs.")
    n_classes = int(max(data["train"]["y"].max(), data["test"]["y"].max()) + 1)
    fin_aug = TensorAugment(spatial_dims=spatial_dims, min_area=0.7, intensity=0.1, shift=0.05, noise=0.0)
    results: dict[str, dict] = {}
    timings = {}
    for method in methods:
        t0 = time.time()
        torch.manual_seed(seed)
        if method == "clip":
            if clip_run is None:
                continue
            from medalign.api import load

            model = load(clip_run)
            rec = model.recipe.eval()
            enc = rec.image_encoder
            encode, feat_dim, name = rec.encode_image, int(enc.out_dim), "clip-pretrained"
        else:
            if method == "micle":
                rec = MICLeRecipe(**common, **micle_kw)
                name = micle_name
            elif method in ("simclr", "scratch"):
                rec = SimCLRRecipe(**common)
                name = "scratch" if method == "scratch" else "simclr"
            else:
                raise ValueError(f"unknown method '{method}' (scratch, simclr, micle, clip)")
            if method != "scratch":
                log(f"[{name}] pretraining {pretrain_epochs} epochs on {data['train']['x'].shape[0]} unlabelled images")
                losses = pretrain(rec, data["train"], epochs=pretrain_epochs, batch_size=batch_size, lr=lr, seed=seed,
                                  patient_batches=getattr(rec, "patient_batches", False), log=log)
                results.setdefault(name, {})["pretrain_loss"] = losses
                from safetensors.torch import save_file

                from medalign.utils import atomic_path

                with atomic_path(out / "pretrained" / f"{method}.safetensors", suffix=".safetensors") as tmp:
                    save_file({k: v.contiguous() for k, v in rec.encoder.state_dict().items()}, str(tmp))
            rec.eval()
            enc, feat_dim, encode = rec.encoder, rec.feat_dim, rec.encode_image
        tr_X = embed(encode, data["train"]["x"], data["train"]["mask"])
        te_X = embed(encode, data["test"]["x"], data["test"]["mask"])
        log(f"[{name}] probing")
        res = results.setdefault(name, {})
        res["probe"] = probe(tr_X, data["train"]["y"], te_X, data["test"]["y"], fractions=fractions,
                             n_classes=n_classes, n_boot=n_boot, seed=seed)
        if finetune_steps > 0:
            res["finetune"] = {}
            for f in fractions:
                log(f"[{name}] fine-tuning with {f:g} of the labels ({finetune_steps} steps)")
                res["finetune"][str(float(f))] = finetune(
                    enc, feat_dim, data["train"], data["test"], fraction=f, n_classes=n_classes, steps=finetune_steps,
                    batch_size=min(64, batch_size), lr=finetune_lr, seed=seed, augment=fin_aug, n_boot=n_boot)
        timings[name] = round(time.time() - t0, 1)
        log(f"[{name}] done in {timings[name]} s")
    if "clip" in methods and clip_run is None:
        why = "PneumoniaMNIST has no reports to train CLIP on" if dataset == "pneumoniamnist" else "no --clip-run given"
        notes.append(f"CLIP-pretrained: not run ({why}).")
    levels_txt = "all levels" if pool_levels == "all" else ("the last level" if pool_levels is None else
                                                             f"levels {list(pool_levels)}")
    notes.append(f"Encoder: U-Net contracting path {list(channels)} (spatial_dims={spatial_dims}, "
                 f"'{layer_order}' blocks, {global_pool} pooling of {levels_txt}, stem stride {stem_stride}); "
                 f"probe: logistic regression on L2-normalised frozen backbone features; pretraining {pretrain_epochs} epochs, batch {batch_size}, Adam {lr:g} cosine; "
                 f"fine-tuning {finetune_steps} steps, Adam {finetune_lr:g}; seed {seed}; train n = "
                 f"{len(data['train']['y'])}, test n = {len(data['test']['y'])}.")
    summary = {"dataset": dataset, "results": results, "notes": notes, "timings_s": timings,
               "fractions": [float(f) for f in fractions], "config": {
                   "channels": list(channels), "layer_order": layer_order, "global_pool": global_pool,
                   "pool_levels": pool_levels if pool_levels in ("all", None) else list(pool_levels),
                   "stem_stride": stem_stride, "pretrain_epochs": pretrain_epochs, "batch_size": batch_size, "lr": lr,
                   "finetune_steps": finetune_steps, "finetune_lr": finetune_lr, "seed": seed, "n_boot": n_boot}}
    atomic_write_json(out / "label_efficiency.json", summary)
    _report(results, out, dataset, notes, n_classes=n_classes)
    return summary


# ---------------------------------------------------------------------------------------------
# HLSS kNN evaluation
# ---------------------------------------------------------------------------------------------
def hlss_knn(run_dir: Path, *, manifest: Optional[Path] = None, cache_dir: Optional[Path] = None, k: int = 5,
             n_boot: int = 200, checkpoint: str = "best", test_splits: tuple[str, ...] = ("test",),
             random_init: bool = True) -> dict:
    """kNN (cosine, train split as memory) at slab/slice, study and patient level for an HLSS run.

    With ``random_init`` the same recipe freshly initialised (the run's seed, i.e. the weights
    training started from) is evaluated on the same rows: the baseline that tells whether HLSS
    learned anything beyond what a random network's features already separate.
    """
    import numpy as np
    import torch

    from medalign.config import load_config
    from medalign.errors import MedAlignError
    from medalign.recipes import build_recipe
    from medalign.utils import atomic_write_json, seed_everything

    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise MedAlignError(f"{run_dir}: no config.yaml (not a medalign run directory)")
    cfg = load_config(cfg_path)
    if (cfg.get("recipe") or {}).get("name") != "hlss":
        raise MedAlignError(f"{run_dir}: recipe is '{(cfg.get('recipe') or {}).get('name')}', not 'hlss'")
    ck = run_dir / "checkpoints" / f"{checkpoint}.safetensors"
    if not ck.is_file():
        raise MedAlignError(f"{run_dir}: no checkpoint {ck.name} in checkpoints/ (use --checkpoint last?)")
    from medalign.train.checkpoint import load_weights

    seed_everything(int(cfg.get("seed") or 0))
    recipe = build_recipe(cfg)
    baseline = None
    if random_init:
        import copy

        baseline = copy.deepcopy(recipe).eval()  # the initial weights of a run with this seed
    load_weights(recipe, ck, strict=True)
    recipe.eval()
    dc = dict(cfg.get("data") or {})
    if manifest is not None:
        dc["manifest"] = str(manifest)
    if cache_dir is not None:
        dc["cache_dir"] = str(cache_dir)
    samples = {}
    for split, names in (("train", ("train",)), ("test", tuple(test_splits))):
        rows = []
        for name in names:
            ds = recipe.build_dataset(dc, name, train=False)
            rows += [ds[i] for i in range(len(ds))]
        if not rows:
            raise MedAlignError(f"split(s) {', '.join(names)} of {dc.get('manifest')} empty")
        samples[split] = rows

    def slab_data(rec) -> dict:
        out = {}
        for split, rows in samples.items():
            x = torch.stack([torch.as_tensor(s["image"]) for s in rows])  # (N, C, D, H, W)
            m = torch.stack([torch.as_tensor(s["sequence_mask"]) for s in rows]) if "sequence_mask" in rows[0] else None
            with torch.no_grad():
                slab = torch.cat([rec.slab_features(x[i:i + 8], m[i:i + 8] if m is not None else None)
                                  for i in range(0, len(x), 8)])  # (N, S, F)
            out[split] = {"slab": slab.numpy(), "y": np.array([int(s["label"]) for s in rows]),
                          "pid": [str(s["patient_id"]) for s in rows]}
        return out

    data = slab_data(recipe)
    result = knn_levels(data["train"], data["test"], k=k, n_boot=n_boot, fine=recipe.fine_level)
    result.update({"checkpoint": checkpoint, "test_splits": list(test_splits)})
    encoders = [("HLSS", result["levels"])]
    if baseline is not None:
        rand = slab_data(baseline)
        result["random_init"] = knn_levels(rand["train"], rand["test"], k=k, n_boot=n_boot, fine=recipe.fine_level)
        encoders.append(("random init", result["random_init"]["levels"]))
    atomic_write_json(run_dir / "hlss_knn.json", result)
    rows = [[lvl, name, r["n_test"], _fmt(r["accuracy"]), _fmt(r["balanced_accuracy"])]
            for lvl in result["levels"] for name, levels in encoders for r in [levels.get(lvl)] if r is not None]
    n_classes = int(max(data["train"]["y"].max(), data["test"]["y"].max()) + 1)
    images = [_knn_plot(run_dir, encoders, n_classes=n_classes)]
    variant = getattr(recipe, "coarse_features", "slab")
    atomic_write_json(run_dir / "report_extras" / "hlss_knn.json", {
        "title": "HLSS: kNN evaluation at slab, study and patient level",
        "markdown": (f"Cosine kNN (k={k}) on HLSS backbone features ({checkpoint} checkpoint); memory = train split, "
                     f"queries = {'+'.join(test_splits)}. "
                     f"Training: study/patient losses on {'mean-pooled study' if variant == 'mean' else 'slab'} "
                     f"features (recipe.coarse_features={variant}). "
                     f"{recipe.fine_level.capitalize()} features are the encoder output per {recipe.fine_level}; "
                     "study = mean of its slab features, patient = mean of its studies. Labels: the study label "
                     "(slabs inherit it; patients take their most frequent study label). "
                     + ("'random init' = the same network with the weights training started from (same seed), "
                        "the baseline HLSS has to beat. " if baseline is not None else "")
                     + "CIs: 95% percentile bootstrap over test rows (slab rows are not independent: "
                       "slabs of one study share a label, so the slab CI is too narrow)."),
        "images": images, "tables": [{"caption": "kNN accuracy [95% CI]",
                                      "columns": ["level", "encoder", "n test", "accuracy", "balanced accuracy"],
                                      "rows": rows}]})
    return result


def _knn_plot(run_dir: Path, encoders: list, n_classes: Optional[int] = None) -> str:
    """Grouped bars (level x encoder) of kNN accuracy with CI whiskers -> report_extras/hlss_knn.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from medalign.eval.plots import save_figure

    lvls = list(encoders[0][1])
    fig, ax = plt.subplots(figsize=(5, 3.2))
    w = 0.8 / len(encoders)
    for j, (name, levels) in enumerate(encoders):
        acc = [levels[lv]["accuracy"] for lv in lvls]
        v = np.array([a["value"] for a in acc])
        lo = np.array([a["lo"] if a["lo"] is not None else a["value"] for a in acc])
        hi = np.array([a["hi"] if a["hi"] is not None else a["value"] for a in acc])
        ax.bar(np.arange(len(lvls)) + (j - (len(encoders) - 1) / 2) * w, v, w, label=name,
               yerr=[np.clip(v - lo, 0, None), np.clip(hi - v, 0, None)], capsize=3)
    if n_classes:
        ax.axhline(1.0 / n_classes, color="grey", ls=":", lw=1, label=f"chance (1/{n_classes})")
    ax.set_xticks(np.arange(len(lvls)), lvls)
    ax.set_ylabel("kNN accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    img = save_figure(fig, run_dir / "report_extras" / "hlss_knn.png")
    return str(img.relative_to(run_dir))


def knn_levels(train: dict, test: dict, *, k: int = 5, n_boot: int = 200, seed: int = 0, fine: str = "slab") -> dict:
    """kNN accuracy with CIs at ``fine`` (slab/slice), study and patient level.

    train/test: {"slab": (N, S, F) features, "y": (N,) study labels, "pid": [N patient ids]}.
    """
    import numpy as np

    from medalign.eval.bootstrap import bootstrap_ci
    from medalign.eval.probe import fit_predict_scores

    def levels(d):
        n, s, f = d["slab"].shape
        out = {fine: (d["slab"].reshape(n * s, f), np.repeat(d["y"], s))}  # (N*S, F)
        out["study"] = (d["slab"].mean(1), d["y"])  # (N, F)
        pids = list(dict.fromkeys(d["pid"]))
        feats = np.stack([d["slab"].mean(1)[[i for i, p in enumerate(d["pid"]) if p == q]].mean(0) for q in pids])
        labels = np.array([np.bincount(d["y"][[i for i, p in enumerate(d["pid"]) if p == q]].clip(0)).argmax()
                           for q in pids])
        out["patient"] = (feats, labels)
        return out

    tr, te = levels(train), levels(test)
    n_classes = int(max(train["y"].max(), test["y"].max()) + 1)
    res = {}
    for lvl in (fine, "study", "patient"):
        (Xtr, ytr), (Xte, yte) = tr[lvl], te[lvl]
        keep_tr, keep_te = ytr >= 0, yte >= 0
        Xtr, ytr, Xte, yte = Xtr[keep_tr], ytr[keep_tr], Xte[keep_te], yte[keep_te]
        if len(ytr) == 0 or len(yte) == 0:
            continue
        scores = fit_predict_scores("knn", Xtr, ytr, Xte, n_classes, seed=seed) if k == 5 else _knn(Xtr, ytr, Xte, n_classes, k)

        def acc(y, s):
            return float(np.mean(np.asarray(s).argmax(1) == y))

        def bacc(y, s):
            p = np.asarray(s).argmax(1)
            return float(np.mean([np.mean(p[y == c] == c) for c in np.unique(y)]))

        res[lvl] = {"n_train": int(len(ytr)), "n_test": int(len(yte)),
                    "accuracy": bootstrap_ci(acc, yte, scores, n=n_boot, seed=seed),
                    "balanced_accuracy": bootstrap_ci(bacc, yte, scores, n=n_boot, seed=seed)}
    return {"k": k, "levels": res}


def _knn(Xtr, ytr, Xte, n_classes: int, k: int):
    import numpy as np
    from sklearn.neighbors import KNeighborsClassifier

    est = KNeighborsClassifier(n_neighbors=max(1, min(k, len(ytr))), metric="cosine").fit(Xtr, ytr)
    out = np.zeros((len(Xte), n_classes))
    out[:, est.classes_] = est.predict_proba(Xte)
    return out


def _parse_pool_levels(text: str):
    """"all" -> "all", "last" -> None (last level only), "1,2" -> [1, 2]."""
    from medalign.errors import MedAlignError

    t = text.strip().lower()
    if t in ("all", "last"):
        return "all" if t == "all" else None
    try:
        return [int(i) for i in t.split(",") if i.strip()]
    except ValueError:
        raise MedAlignError(f"--pool-levels must be 'all', 'last' or level indices like '1,2', got '{text}'") from None


def _parse_stride(text: str, spatial_dims: int):
    """"2" -> 2, "1,2,2" -> [1, 2, 2] (one value per spatial axis)."""
    from medalign.errors import MedAlignError

    try:
        vals = [int(i) for i in text.split(",") if i.strip()]
    except ValueError:
        vals = []
    if len(vals) == 1:
        return vals[0]
    if len(vals) != spatial_dims or min(vals) < 1:
        raise MedAlignError(f"--stem-stride must be one integer or {spatial_dims} comma-separated ones, got '{text}'")
    return vals


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def register(app: typer.Typer, synth: typer.Typer) -> None:
    ssl = typer.Typer(help="Self-supervised pretraining experiments: SimCLR / MICLe label efficiency, HLSS kNN.",
                      no_args_is_help=True)
    app.add_typer(ssl, name="ssl")

    @ssl.command("label-efficiency")
    def label_efficiency_cmd(
        out: Path = typer.Option(..., "--out", help="Output folder (results JSON, report_extras/, pretrained/)."),
        dataset: str = typer.Option("pneumoniamnist", help="pneumoniamnist | brain"),
        data_path: Optional[Path] = typer.Option(None, "--data", help="pneumoniamnist: the .npz (default ../shared/data)."),
        manifest: Optional[Path] = typer.Option(None, help="brain: cohort manifest (with train/test split)."),
        cache_dir: Optional[Path] = typer.Option(None, help="brain: preprocessed cohort cache."),
        methods: str = typer.Option("scratch,simclr,micle,clip", help="Comma list: scratch, simclr, micle, clip."),
        clip_run: Optional[Path] = typer.Option(None, help="A brain-CLIP run dir for the 'clip' baseline."),
        fractions: str = typer.Option("0.01,0.1,1.0", help="Label fractions."),
        channels: str = typer.Option("16,32,64", help="Encoder feature maps per level."),
        layer_order: str = typer.Option("cbr", help="Encoder blocks: cbr (Conv-BatchNorm-ReLU), cgr, gcr (paper)."),
        global_pool: str = typer.Option("avgmax", help="Encoder global pooling: avgmax, avg, max."),
        pool_levels: str = typer.Option("all", help="Pooled levels: all, last, or indices like 1,2."),
        stem_stride: str = typer.Option("1", help="Strided stem: 1 (none), 2, or per axis like 1,2,2 (D,H,W)."),
        pretrain_epochs: int = typer.Option(15), batch_size: int = typer.Option(128), lr: float = typer.Option(1e-3),
        finetune_steps: int = typer.Option(150), finetune_lr: float = typer.Option(1e-3),
        size: Optional[int] = typer.Option(None, help="pneumoniamnist: resize to SIZE x SIZE."),
        limit: Optional[int] = typer.Option(None, help="Keep the first N images per split (smoke tests)."),
        n_boot: int = typer.Option(200), seed: int = typer.Option(0),
        test_splits: str = typer.Option("test", help="brain: manifest split(s) used as test set, e.g. val,test."),
    ) -> None:
        """Pretrain (SimCLR, MICLe), then probe and fine-tune with 1/10/100% labels vs. from scratch."""
        from medalign.errors import MedAlignError

        if dataset == "pneumoniamnist":
            data = _load_pneumoniamnist(data_path, size, limit)
            spatial_dims, in_ch = 2, 1
        elif dataset == "brain":
            if manifest is None or cache_dir is None:
                raise MedAlignError("--dataset brain needs --manifest and --cache-dir (a preprocessed cohort)")
            data = _load_cohort(manifest, cache_dir, tuple(t.strip() for t in test_splits.split(",") if t.strip()))
            if limit:
                data = {s: {k: (v[:limit] if v is not None else None) for k, v in d.items()} for s, d in data.items()}
            spatial_dims, in_ch = 3, int(data["train"]["x"].shape[1])
        else:
            raise MedAlignError(f"unknown --dataset '{dataset}' (pneumoniamnist, brain)")
        summary = run_label_efficiency(
            dataset=dataset, out=out, data=data, spatial_dims=spatial_dims, in_channels=in_ch,
            input_shape=tuple(data["train"]["x"].shape[2:]), channels=tuple(int(c) for c in channels.split(",")),
            methods=tuple(m.strip() for m in methods.split(",") if m.strip()),
            fractions=tuple(float(f) for f in fractions.split(",")), pretrain_epochs=pretrain_epochs,
            batch_size=batch_size, lr=lr, finetune_steps=finetune_steps, finetune_lr=finetune_lr, seed=seed,
            n_boot=n_boot, clip_run=clip_run, layer_order=layer_order, global_pool=global_pool,
            pool_levels=_parse_pool_levels(pool_levels), stem_stride=_parse_stride(stem_stride, spatial_dims),
            log=typer.echo)
        for name, res in summary["results"].items():
            for mode in ("probe", "finetune"):
                for f, e in (res.get(mode) or {}).items():
                    typer.echo(f"{name:28s} {mode:8s} {float(f):5g}  acc {_fmt(e['accuracy'])}  auroc {_fmt(e['auroc'])}")
        typer.echo(f"wrote {out / 'label_efficiency.json'} and {out / 'report_extras' / 'label_efficiency.json'}")

    @ssl.command("hlss-knn")
    def hlss_knn_cmd(
        run: Path = typer.Argument(..., help="An HLSS run directory (medalign train with recipe hlss)."),
        manifest: Optional[Path] = typer.Option(None, help="Override the run's data.manifest."),
        cache_dir: Optional[Path] = typer.Option(None, help="Override the run's data.cache_dir."),
        k: int = typer.Option(5), n_boot: int = typer.Option(200),
        checkpoint: str = typer.Option("best", help="best | last"),
        test_splits: str = typer.Option("test", help="Query split(s), e.g. val,test (memory = train)."),
        random_init: bool = typer.Option(True, "--random-init/--no-random-init",
                                         help="Also evaluate the run's initial (random) weights as a baseline."),
    ) -> None:
        """kNN accuracy (with CIs) at slab/slice, study and patient level; writes report_extras/hlss_knn.json."""
        res = hlss_knn(run, manifest=manifest, cache_dir=cache_dir, k=k, n_boot=n_boot, checkpoint=checkpoint,
                       test_splits=tuple(t.strip() for t in test_splits.split(",") if t.strip()),
                       random_init=random_init)
        for name, levels in (("HLSS", res["levels"]), ("random init", (res.get("random_init") or {}).get("levels"))):
            for lvl, r in (levels or {}).items():
                typer.echo(f"{name:12s} {lvl:8s} n={r['n_test']:4d}  acc {_fmt(r['accuracy'])}  "
                           f"bacc {_fmt(r['balanced_accuracy'])}")
        typer.echo(json.dumps({"wrote": str(Path(run) / "report_extras" / "hlss_knn.json")}))
