"""Evaluate one run: embed the split, compute every metric with CIs, write metrics.json + plots.

Layout written under ``RUN/eval/``::

    metrics.json                   every number (see HEADLINE for the ones with CIs)
    embeddings_<split>.npz         study_id, patient_id, label, report, image_embed, text_embed
    embeddings_train.npz           (for probes; image-only)
    prompts.npz                    the zero-shot prompt bank (texts, class_index, kind, embed)
    plots/*.png                    figures for the report

The array-only part (:func:`evaluate_embeddings`, :func:`write_plots`) needs no model, so the
report can be rebuilt from the saved npz files and tests run on fake embeddings.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medalign.eval.bootstrap import bootstrap_ci
from medalign.eval.retrieval import DEFAULT_KS, case_retrieval, cosine_similarity, cross_modal_retrieval, top_k
from medalign.utils import atomic_path
from medalign.eval.zeroshot import DEFAULT_POOL

EMBED_KEYS = ("study_id", "patient_id", "label", "report", "image_embed", "text_embed")

# (metrics.json path, display name) of the figures shown with CIs in comparison tables
HEADLINE: tuple[tuple[str, str], ...] = (
    ("retrieval.text_to_image.R@1", "report→image R@1"),
    ("retrieval.text_to_image.R@5", "report→image R@5"),
    ("retrieval.text_to_image.MRR", "report→image MRR"),
    ("retrieval.image_to_text.R@1", "image→report R@1"),
    ("retrieval.image_to_text.MRR", "image→report MRR"),
    ("retrieval.case_to_case.P@5", "case→case P@5"),
    ("zero_shot.accuracy", "zero-shot acc"),
    ("zero_shot.balanced_accuracy", "zero-shot bal. acc"),
    ("zero_shot.auroc_macro", "zero-shot AUROC"),
    ("zero_shot.one_prompt_per_class.accuracy", "zero-shot acc (1 prompt/class)"),
    ("probe.logreg.1.0.balanced_accuracy", "logreg probe bal. acc (100%)"),
    ("probe.logreg.0.1.balanced_accuracy", "logreg probe bal. acc (10%)"),
    ("classifier.balanced_accuracy", "own head / text-only bal. acc"),
)


# ----------------------------------------------------------------------------- helpers
def label_names(labels: Sequence[Any], classes: Sequence[str]) -> np.ndarray:
    """Labels as class names ('' for unknown); ints index ``classes``, -1 = none."""
    out = []
    for v in labels:
        if isinstance(v, (int, np.integer)) or (isinstance(v, str) and v.lstrip("-").isdigit()):
            i = int(v)
            out.append(classes[i] if 0 <= i < len(classes) else "")
        elif v is None or (isinstance(v, float) and np.isnan(v)):
            out.append("")
        else:
            out.append(str(v))
    return np.asarray(out, dtype=str)


def label_ints(names: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    idx = {c: i for i, c in enumerate(classes)}
    return np.asarray([idx.get(str(n), -1) for n in names], dtype=int)


def save_embeddings(path: str | Path, emb: dict) -> Path:
    """Atomic npz of an embed_manifest()-style dict (strings stored as unicode arrays)."""
    arrays = {}
    for k, v in emb.items():
        a = np.asarray(v)
        if a.dtype == object:
            a = a.astype(str)
        arrays[k] = a
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)
    return Path(path)


def load_embeddings(path: str | Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def get_path(d: dict, dotted: str) -> Any:
    """metrics['a']['b'] for 'a.b'; keys may themselves contain dots (probe fractions '1.0')."""
    node: Any = d
    parts = dotted.split(".")
    i = 0
    while i < len(parts):
        if not isinstance(node, dict):
            return None
        for j in range(len(parts), i, -1):  # longest key first
            key = ".".join(parts[i:j])
            if key in node:
                node, i = node[key], j
                break
        else:
            return None
    return node


def with_reports(emb: dict) -> dict:
    """Rows of an embeddings dict whose study has a report (``has_report``; all rows when absent)."""
    if "has_report" not in emb:
        return emb
    keep = np.asarray(emb["has_report"], bool)
    n = len(keep)
    return {k: (np.asarray(v)[keep] if np.ndim(v) and len(v) == n else v) for k, v in emb.items()}


def _mean_le(k):
    return lambda r: float(np.mean(r <= k))


def _mrr(r):
    return float(np.mean(1.0 / r))


def rank_cis(ranks: np.ndarray, ks: Sequence[int], *, n_boot: int, seed: int, mrr: bool = True) -> dict:
    """Bootstrap CIs of R@k for each k (and MRR) from the rank of each query's match (1 = first)."""
    r = np.asarray(ranks)
    ci = {f"R@{k}": bootstrap_ci(_mean_le(k), r, n=n_boot, seed=seed) for k in ks}
    if mrr:
        ci["MRR"] = bootstrap_ci(_mrr, r, n=n_boot, seed=seed)
    return ci


# ----------------------------------------------------------------------------- array-only evaluation
def evaluate_embeddings(
    test: dict,
    *,
    train: dict | None = None,
    prompt_bank: dict | None = None,
    classes: Sequence[str] | None = None,
    pool: str = DEFAULT_POOL,
    absence: str = "ignore",
    ks: Sequence[int] = DEFAULT_KS,
    n_boot: int = 1000,
    seed: int = 0,
    fractions: Sequence[float] = (0.01, 0.1, 1.0),
    probes: Sequence[str] = ("logreg", "knn", "mlp"),
    n_queries_table: int = 5,
) -> dict:
    """Every metric from embeddings alone. ``test``/``train`` are embed_manifest()-style dicts."""
    from medalign.data.schema import CLASSES
    from medalign.eval.probe import label_efficiency
    from medalign.eval.zeroshot import classification_metrics, scores_from_prompt_bank

    classes = list(classes or CLASSES)
    ids = np.asarray(test["study_id"]).astype(str)
    img, txt = np.asarray(test["image_embed"], np.float64), np.asarray(test["text_embed"], np.float64)
    names = label_names(test.get("label", [""] * len(ids)), classes)
    y = label_ints(names, classes)
    has_labels = bool((y >= 0).any())
    out: dict = {"n_test": int(len(ids)), "classes": classes, "seed": seed, "n_boot": n_boot}

    # --- retrieval (both ways) + CIs over query studies; only studies that have a report take part
    # image-only parts (case->case, zero-shot, probes) use every study of the split
    img_all, names_all, y_all = img, names, y
    has_rep = np.asarray(test["has_report"], bool) if "has_report" in test else np.ones(len(ids), bool)
    cross = has_rep.sum() >= 2  # image-only recipes (no text side) skip cross-modal retrieval
    if cross and not has_rep.all():
        keep = np.flatnonzero(has_rep)
        test = with_reports(test)
        out["n_without_report"] = int((~has_rep).sum())
        ids, img, txt, names, y = ids[keep], img[keep], txt[keep], names[keep], y[keep]
    ret = cross_modal_retrieval(img, txt, ids, names if has_labels else None, ks=ks) if cross else {}
    if not cross:
        out["retrieval_note"] = "no reports embedded (image-only model): cross-modal retrieval skipped"
    for d in ret.values():
        r = np.asarray(d["ranks"])
        d["ci"] = rank_cis(r, ks, n_boot=n_boot, seed=seed)
        if has_labels:  # per-class breakdown (paper Fig. 7: normal was easiest)
            d["by_class"] = {c: {"n": int((names == c).sum()), "median_rank": float(np.median(r[names == c])),
                                 "R@1": float(np.mean(r[names == c] <= 1))}
                             for c in classes if (names == c).any()}
    if has_labels and (y_all >= 0).sum() >= 2:
        lab = y_all >= 0
        cc = case_retrieval(img_all[lab], names_all[lab], ks=ks)
        if "skipped" not in cc:
            r = np.asarray(cc["ranks"])
            cc["ci"] = rank_cis(r, ks, n_boot=n_boot, seed=seed, mrr=False)
            cc["ci"].update({pk: bootstrap_ci(np.mean, np.asarray(v), n=n_boot, seed=seed)
                             for pk, v in cc.pop("precision").items()})
        ret["case_to_case"] = cc
    out["retrieval"] = ret

    # --- tables 2 and 3: top-5 images for a query report, rank-1 match per query
    if cross:
        sim_ti = cosine_similarity(txt, img)  # (N_text, N_image)
        t5 = top_k(sim_ti, 5)
        order = _table_queries(names, classes, n_queries_table)
        reports = np.asarray(test.get("report", [""] * len(ids))).astype(str)
        out["tables"] = {
            "top5": [{"query": ids[q], "query_class": names[q], "query_report": reports[q],
                      "hits": [{"study_id": ids[j], "class": names[j], "similarity": float(sim_ti[q, j]),
                                "correct": bool(ids[j] == ids[q])} for j in t5[q]]} for q in order],
            "rank1": [{"query": ids[q], "query_class": names[q], "match": ids[t5[q, 0]],
                       "match_class": names[t5[q, 0]], "similarity": float(sim_ti[q, t5[q, 0]]),
                       "rank_of_right_image": int(ret["text_to_image"]["ranks"][q])} for q in range(len(ids))],
        }

    # --- zero-shot
    if prompt_bank is not None and has_labels:
        lab = y_all >= 0
        zs = {}
        for mode, one in (("pooled", False), ("one_prompt", True)):
            s = scores_from_prompt_bank(img_all[lab], prompt_bank, pool=pool, absence=absence, one_per_class=one)
            m = classification_metrics(y_all[lab], s, n_classes=len(classes), class_names=classes)
            m["ci"] = class_cis(y_all[lab], s, n_boot, seed)
            zs[mode] = m
        out["zero_shot"] = {**zs["pooled"], "pool": pool, "absence": absence,
                            "n_prompts": int(len(prompt_bank["texts"])), "one_prompt_per_class": zs["one_prompt"]}

    # --- probes on frozen image embeddings (image-only)
    if train is not None and has_labels:
        tr_y = label_ints(label_names(train.get("label", []), classes), classes)
        if (tr_y >= 0).sum() >= 2:
            out["probe"] = label_efficiency(np.asarray(train["image_embed"]), tr_y, img_all, y_all, fractions=fractions,
                                            probes=probes, seed=seed, n_boot=min(n_boot, 500),
                                            n_classes=len(classes), class_names=classes)
            out["n_train"] = int((tr_y >= 0).sum())
    return out


def _table_queries(names: np.ndarray, classes: Sequence[str], n: int) -> list[int]:
    """One query per class first (so every class is shown), then in order."""
    picked = []
    for c in classes:
        hit = np.flatnonzero(names == c)
        if len(hit):
            picked.append(int(hit[0]))
    for i in range(len(names)):
        if len(picked) >= n:
            break
        if i not in picked:
            picked.append(i)
    return picked[:n]


def class_cis(y: np.ndarray, s: np.ndarray, n_boot: int, seed: int) -> dict:
    """CIs of accuracy, balanced accuracy, macro-F1 and macro AUROC in one bootstrap pass."""
    from medalign.eval.bootstrap import bootstrap_cis
    from medalign.eval.zeroshot import classification_metrics

    keys = ("accuracy", "balanced_accuracy", "macro_f1", "auroc_macro")

    def f(yy, ss):
        m = classification_metrics(yy, ss, n_classes=s.shape[1])
        return {k: m[k] for k in keys}

    return bootstrap_cis(f, y, s, n=n_boot, seed=seed)


def headline_cis(metrics: dict) -> dict[str, dict | None]:
    """{display name: {"value","lo","hi"}|None} for HEADLINE, reading CIs where stored."""
    out = {}
    for path, name in HEADLINE:
        parent, _, key = path.rpartition(".")
        node = get_path(metrics, parent)
        if not isinstance(node, dict) or node.get(key) is None:
            out[name] = None
            continue
        ci = (node.get("ci") or {}).get(key) or node.get(f"{key}_ci")
        out[name] = ci if ci else {"value": node[key], "lo": None, "hi": None}
    return out


# ----------------------------------------------------------------------------- plots
def write_plots(eval_dir: str | Path, test: dict, metrics: dict, *, run_dir: str | Path | None = None,
                seed: int = 0, batch: int = 8, embedding_map: str = "tsne") -> dict[str, str]:
    """All figures for one run into eval_dir/plots; returns {name: path relative to eval_dir}."""
    from medalign.eval import plots as P

    eval_dir = Path(eval_dir)
    pdir = eval_dir / "plots"
    classes = metrics["classes"]
    all_names = label_names(test.get("label", [""] * len(test["study_id"])), classes)
    all_img = np.asarray(test["image_embed"])
    test = with_reports(test)  # the retrieval figures cover the studies that have a report
    names = label_names(test.get("label", [""] * len(test["study_id"])), classes)
    ids = np.asarray(test["study_id"]).astype(str)
    made: dict[str, Path | None] = {}
    if run_dir is not None:
        made["training_curves"] = P.plot_training_curves(P.read_metrics_jsonl(Path(run_dir) / "metrics.jsonl"),
                                                         pdir / "training_curves.png")
    t2i = (metrics.get("retrieval") or {}).get("text_to_image")
    if t2i:
        b = min(batch, len(ids))
        sim = cosine_similarity(np.asarray(test["text_embed"])[:b], np.asarray(test["image_embed"])[:b])  # (b, b)
        lab = [f"{i} ({c})" if c else i for i, c in zip(ids[:b], names[:b])]
        made["similarity_matrix"] = P.plot_similarity_matrix(sim, lab, lab, pdir / "similarity_matrix.png")
        made["rank_vs_similarity"] = P.plot_rank_vs_similarity(t2i["ranks"], t2i["true_sim"], names, classes,
                                                               pdir / "rank_vs_similarity.png",
                                                               pool_size=t2i["pool_size"])
    made["embedding_map"] = P.plot_embedding_map(all_img, all_names, classes,
                                                 pdir / "embedding_map.png", method=embedding_map, seed=seed)
    zs = metrics.get("zero_shot")
    if zs:
        made["confusion_zero_shot"] = P.plot_confusion(zs["confusion"], classes, pdir / "confusion_zero_shot.png",
                                                       title=f"zero-shot ({zs['pool']} over prompts)")
    pr = metrics.get("probe")
    if pr:
        best = pr["logreg"][str(float(pr["fractions"][-1]))] if "logreg" in pr else None
        if best:
            made["confusion_probe"] = P.plot_confusion(best["confusion"], classes, pdir / "confusion_probe.png",
                                                       title="logreg probe, all labels")
        curves = {"this run": pr}
        for bname, bres in (metrics.get("baselines") or {}).items():
            if isinstance(bres, dict) and bres.get("probe"):
                curves[bname] = {**bres["probe"], "probes": ["logreg"]}
        made["label_efficiency"] = P.plot_label_efficiency(curves, pdir / "label_efficiency.png")
    return {k: str(v.relative_to(eval_dir)) for k, v in made.items() if v is not None}


# ----------------------------------------------------------------------------- run-level orchestration
def _embed(model, manifest, cache, split, *, required: bool = True):
    """embed_manifest for one split; a missing optional split (train, for probes) gives None."""
    from medalign.errors import MedAlignError
    from medalign.train.embed import embed_manifest

    try:
        return embed_manifest(model, manifest, cache, split=split)
    except MedAlignError:
        if required:
            raise
        return None
