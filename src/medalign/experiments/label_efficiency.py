"""``medalign ssl label-efficiency``: SimCLR / MICLe pretraining vs. scratch at 1 / 10 / 100 % labels.

It answers "I have few labels and many unlabelled scans: how do I pretrain?": it pretrains the
same small encoder with SimCLR and MICLe on the (unlabelled) training images, then compares, at
1%, 10% and 100% of the training labels, (a) a logistic-regression probe on frozen features and
(b) end-to-end fine-tuning, against the same encoder from scratch (and a CLIP-pretrained encoder
when ``clip_run`` is given). Pretraining and fine-tuning go through the one training loop
(``medalign.train.loop.train_model``) in memory. Accuracy and AUROC with percentile bootstrap
CIs over test studies (medalign.eval.bootstrap) go to ``OUT/label_efficiency.json`` and to a
report section ``OUT/report_extras/label_efficiency.json``.

Heavy imports live inside the functions where they can, so ``medalign --help`` stays instant.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from medalign.recipes.base import Recipe

if TYPE_CHECKING:
    from medalign.data.memory import ColumnDataset
    from medalign.train.config import TrainConfig


# ---------------------------------------------------------------------------------------------
# Data: everything in memory (tiny cohorts / 28x28 X-rays)
# ---------------------------------------------------------------------------------------------
def _load_pneumoniamnist(path: Optional[Path], size: Optional[int], limit: Optional[int]) -> dict[str, dict]:
    """PneumoniaMNIST train and test in memory; every image is its own patient and study."""
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


# ---------------------------------------------------------------------------------------------
# Pretraining, embedding, probing, fine-tuning (through the one loop)
# ---------------------------------------------------------------------------------------------
def _train_config(*, steps_epochs: tuple[int, Optional[int]], batch_size: int, lr: float, scheduler: str,
                  weight_decay: float) -> "TrainConfig":
    """The loop's settings for an in-memory run: plain Adam, no clipping / AMP / EMA / files."""
    from medalign.train.config import TrainConfig

    epochs, max_steps = steps_epochs
    return TrainConfig(epochs=epochs, max_steps=max_steps, batch_size=batch_size, optimizer="adam", lr=lr,
                       weight_decay=weight_decay, scheduler=scheduler, min_lr=0.0, grad_clip=None, ema_decay=None,
                       amp=False, progress=False, tensorboard=False)


def _ssl_samples(train: dict) -> "ColumnDataset":
    """``train`` as a Dataset of the sample dicts an SSL recipe's training_step reads."""
    from medalign.data.memory import ColumnDataset

    return ColumnDataset({"image": train["x"], "sequence_mask": train["mask"], "patient_id": train["pid"],
                          "study_id": train["sid"]})


def pretrain(recipe, train: dict, *, epochs: int, batch_size: int, lr: float, seed: int,
             patient_batches: bool = False, log=print) -> list[float]:
    """SSL pretraining of ``recipe`` through the one loop (Adam, per-step cosine decay to 0) over
    in-memory ``train``; patient-grouped batches for MICLe study pairs. Returns per-epoch losses."""
    import torch

    from medalign.data.memory import FixedEpochSampler
    from medalign.data.samplers import PatientBatchSampler, ResumableBatchSampler
    from medalign.train.loop import train_model

    torch.manual_seed(seed)
    n = train["x"].shape[0]
    bs = min(batch_size, n)
    if patient_batches:
        inner = PatientBatchSampler(train["pid"], batch_size=max(4, bs // 2 * 2), seed=seed, drop_last=False)
    else:
        inner = ResumableBatchSampler(n, bs, shuffle=True, seed=seed, drop_last=True)
    sampler = FixedEpochSampler(inner)
    tc = _train_config(steps_epochs=(epochs, None), batch_size=bs, lr=lr, scheduler="cosine", weight_decay=1e-6)
    summary = train_model(recipe, _ssl_samples(train), None, tc, seed=seed, sampler=sampler)
    recipe.eval()
    losses = [h["train_loss"] for h in summary["history"]]
    for epoch, loss in enumerate(losses):
        log(f"  epoch {epoch + 1}/{epochs} loss {loss:.4f}")
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
    """Accuracy and macro AUROC with percentile bootstrap CIs (medalign.eval.bootstrap), balanced accuracy."""
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


class _Finetuner(Recipe):
    """A copy of an encoder + a linear head, trained by the loop on cross-entropy."""

    def __init__(self, encoder, feat_dim: int, n_classes: int, augment=None) -> None:
        import copy

        import torch

        super().__init__()
        self.enc = copy.deepcopy(encoder)
        self.head = torch.nn.Linear(feat_dim, n_classes)
        self.augment = augment

    def forward(self, x, mask=None):
        if mask is not None:
            x = x * mask.to(x).reshape(tuple(mask.shape) + (1,) * (x.ndim - 2))  # mask as (B, C, 1...)
        return self.head(self.enc(x)["global"])  # (B, n_classes)

    def training_step(self, batch: dict) -> dict:
        import torch.nn.functional as F

        x, m = batch["image"], batch.get("sequence_mask")
        if self.augment is not None:
            x = self.augment(x, m)
        return {"ce_loss": F.cross_entropy(self(x, m), batch["label"])}


def finetune(encoder, feat_dim: int, train: dict, test: dict, *, fraction: float, n_classes: int, steps: int,
             batch_size: int, lr: float, seed: int, augment=None, n_boot: int = 200) -> dict:
    """End-to-end fine-tuning of a *copy* of ``encoder`` + a linear head on a stratified label fraction:
    ``steps`` Adam steps through the one loop, each on a random batch (batches drawn with replacement)."""
    import torch

    from medalign.data.memory import ColumnDataset, ReplacementBatchSampler
    from medalign.eval.probe import stratified_subsample
    from medalign.train.loop import train_model

    torch.manual_seed(seed)
    model = _Finetuner(encoder, feat_dim, n_classes, augment)
    idx = stratified_subsample(train["y"], fraction, seed=seed)
    ds = ColumnDataset({"image": train["x"][idx], "label": torch.as_tensor(train["y"][idx], dtype=torch.long),
                        "sequence_mask": train["mask"][idx] if train["mask"] is not None else None})
    bs = min(batch_size, len(idx))
    tc = _train_config(steps_epochs=(1, steps), batch_size=bs, lr=lr, scheduler="constant", weight_decay=1e-5)
    train_model(model, ds, None, tc, seed=seed, sampler=ReplacementBatchSampler(len(idx), bs, steps, seed=seed))
    model.eval()
    with torch.no_grad():
        tm = test["mask"]
        scores = torch.cat([model(test["x"][i:i + 256], tm[i:i + 256] if tm is not None else None).softmax(-1)
                            for i in range(0, test["x"].shape[0], 256)]).numpy()  # (N_test, n_classes)
    return {"n_train": int(len(idx)), **_metric_cis(test["y"], scores, n_classes, n_boot, seed)}


# ---------------------------------------------------------------------------------------------
# Report and the experiment
# ---------------------------------------------------------------------------------------------
def _fmt(ci: dict) -> str:
    """A bootstrap CI dict as 'value [lo, hi]' (3 decimals)."""
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


def _encoder_setup(data: dict, *, spatial_dims: int, in_channels: int, input_shape, channels, layer_order: str,
                   global_pool: str, pool_levels, stem_stride) -> tuple[dict, dict, str, list[str]]:
    """(recipe kwargs, MICLe kwargs, MICLe name, notes): the shared encoder and how MICLe pairs are made."""
    enc_cfg = {"name": "unet3d_cpu", "spatial_dims": spatial_dims, "channels": list(channels),
               "stem_stride": stem_stride, "layer_order": layer_order, "global_pool": global_pool,
               "local_level": len(channels) - 1}
    if global_pool != "flatten":
        # no FC after the pooling: the probe and the projection head see the pooled maps themselves
        enc_cfg["pool_levels"] = pool_levels if pool_levels in ("all", None) else [int(i) for i in pool_levels]
    common = {"sequences": tuple(f"c{i}" for i in range(in_channels)), "input_shape": tuple(input_shape),
              "image_encoder": enc_cfg, "proj_dim": 64, "gather": False}
    multi = any(p != q for p, q in zip(sorted(data["train"]["pid"]), sorted(set(data["train"]["pid"]))))
    if multi:
        return common, {"instance": "study", "fallback": "sequence" if in_channels > 1 else "views"}, "micle", [
            "MICLe positives: two different studies of one patient (patient-grouped batches); "
            "patients with one study fall back to two different sequences of that study."]
    return common, {"instance": "pseudo"}, "micle (pseudo-instances)", [
        "No patient ids in this data set (one image per 'patient'): true MICLe pairs do not exist. "
        "'micle (pseudo-instances)' uses two different fixed crops of one image as the two instances, "
        "i.e. SimCLR with a crop prior; it is *not* evidence about multi-instance pairs."]


def _method_encoder(method: str, *, common: dict, micle_kw: dict, micle_name: str, data: dict, out: Path,
                    results: dict, clip_run: Optional[Path], pretrain_kw: dict, log) -> Optional[tuple]:
    """(name, encoder, feat_dim, encode) for one method, pretrained first unless it is 'scratch';
    None for 'clip' without a run. Pretraining losses land in ``results[name]``."""
    from medalign.recipes.micle import MICLeRecipe
    from medalign.recipes.simclr import SimCLRRecipe

    if method == "clip":
        if clip_run is None:
            return None
        from medalign.api import load

        rec = load(clip_run).recipe.eval()
        return "clip-pretrained", rec.image_encoder, int(rec.image_encoder.out_dim), rec.encode_image
    if method == "micle":
        rec, name = MICLeRecipe(**common, **micle_kw), micle_name
    elif method in ("simclr", "scratch"):
        rec, name = SimCLRRecipe(**common), method
    else:
        raise ValueError(f"unknown method '{method}' (scratch, simclr, micle, clip)")
    if method != "scratch":
        log(f"[{name}] pretraining {pretrain_kw['epochs']} epochs on {data['train']['x'].shape[0]} unlabelled images")
        results.setdefault(name, {})["pretrain_loss"] = pretrain(
            rec, data["train"], patient_batches=getattr(rec, "patient_batches", False), log=log, **pretrain_kw)
        from safetensors.torch import save_file

        from medalign.utils import atomic_path

        with atomic_path(out / "pretrained" / f"{method}.safetensors", suffix=".safetensors") as tmp:
            save_file({k: v.contiguous() for k, v in rec.encoder.state_dict().items()}, str(tmp))
    rec.eval()
    return name, rec.encoder, rec.feat_dim, rec.encode_image


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
    import torch

    from medalign.recipes.simclr import TensorAugment
    from medalign.utils import atomic_write_json, seed_everything

    seed_everything(seed)
    common, micle_kw, micle_name, notes = _encoder_setup(
        data, spatial_dims=spatial_dims, in_channels=in_channels, input_shape=input_shape, channels=channels,
        layer_order=layer_order, global_pool=global_pool, pool_levels=pool_levels, stem_stride=stem_stride)
    n_classes = int(max(data["train"]["y"].max(), data["test"]["y"].max()) + 1)
    fin_aug = TensorAugment(spatial_dims=spatial_dims, min_area=0.7, intensity=0.1, shift=0.05, noise=0.0)
    pretrain_kw = {"epochs": pretrain_epochs, "batch_size": batch_size, "lr": lr, "seed": seed}
    results: dict[str, dict] = {}
    timings = {}
    for method in methods:
        t0 = time.time()
        torch.manual_seed(seed)
        got = _method_encoder(method, common=common, micle_kw=micle_kw, micle_name=micle_name, data=data, out=out,
                              results=results, clip_run=clip_run, pretrain_kw=pretrain_kw, log=log)
        if got is None:
            continue
        name, enc, feat_dim, encode = got
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
