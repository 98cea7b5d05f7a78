"""``medalign ssl hlss-knn``: kNN evaluation of an HLSS run at slab/slice, study and patient level.

Cosine kNN with the train split as memory; accuracy and balanced accuracy with percentile
bootstrap CIs (medalign.eval.bootstrap) go to ``RUN/hlss_knn.json`` and a report section
``RUN/report_extras/hlss_knn.json``. Heavy imports live inside the functions so
``medalign --help`` stays instant.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional


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
    from medalign.eval.bootstrap import format_ci
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
    rows = [[lvl, name, r["n_test"], format_ci(r["accuracy"], 3), format_ci(r["balanced_accuracy"], 3)]
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
