"""Paired comparison of two evaluated runs on the same studies (``medalign compare RUN_A RUN_B``).

Both runs must have been evaluated (``medalign evaluate``) on the same split of the same cohort:
this module reads each run's ``eval/embeddings_<split>.npz`` and ``eval/prompts.npz``, computes
per-study outcomes (report->image hit at k, reciprocal rank, zero-shot correct) for the studies
both runs embedded, and gives each metric for A, for B and for A - B with a paired percentile
bootstrap CI (the same resampled studies for both runs, ``medalign.eval.bootstrap``). A CI of the
difference that excludes 0 is evidence that the runs differ on this cohort; one that includes 0 is not.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from medalign.errors import MedAlignError
from medalign.eval.bootstrap import bootstrap_cis
from medalign.eval.evaluate import label_ints, label_names, load_embeddings
from medalign.eval.retrieval import cosine_similarity, match_ranks
from medalign.eval.zeroshot import DEFAULT_POOL


def _load(run: Path, split: str) -> tuple[dict, dict | None, dict]:
    emb_p, bank_p = run / "eval" / f"embeddings_{split}.npz", run / "eval" / "prompts.npz"
    if not emb_p.is_file():
        raise MedAlignError(f"{run}: no {emb_p.relative_to(run)}; run `medalign evaluate {run} --split {split}` first")
    metrics_p = run / "eval" / "metrics.json"
    metrics = json.loads(metrics_p.read_text(encoding="utf-8")) if metrics_p.is_file() else {}
    return load_embeddings(emb_p), (load_embeddings(bank_p) if bank_p.is_file() else None), metrics


def per_study_outcomes(emb: dict, bank: dict | None, *, k: int = 5, pool: str = DEFAULT_POOL, absence: str = "ignore",
                       classes: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """{study_id (N,), hit (N,) report->image rank <= k, rr (N,) 1/rank, zs_correct (N,) or absent}."""
    from medalign.data.schema import CLASSES
    from medalign.eval.zeroshot import scores_from_prompt_bank

    ids = np.asarray(emb["study_id"]).astype(str)
    img = np.asarray(emb["image_embed"], np.float64)
    out: dict[str, np.ndarray] = {"study_id": ids}
    if "text_embed" in emb and np.asarray(emb["text_embed"]).size:
        ranks, _ = match_ranks(cosine_similarity(np.asarray(emb["text_embed"], np.float64), img), ids, ids)  # (N,)
        out["hit"], out["rr"] = (ranks <= k).astype(float), 1.0 / ranks
    if bank is not None:
        names = label_names(emb.get("label", [""] * len(ids)), list(classes or CLASSES))
        y = label_ints(names, list(bank["classes"]))
        pred = scores_from_prompt_bank(img, bank, pool=pool, absence=absence).argmax(1)  # (N,)
        out["zs_correct"] = np.where(y >= 0, (pred == y).astype(float), np.nan)
    return out


def _protocol(metrics: dict) -> dict[str, str]:
    zs = metrics.get("zero_shot") or {}
    return {"pool": str(zs.get("pool") or "mean"), "absence": str(zs.get("absence") or "ignore")}


def compare_runs(run_a: str | Path, run_b: str | Path, *, split: str = "test", k: int = 5, n_boot: int = 1000,
                 seed: int = 0) -> dict:
    """Metrics of A, of B and of A - B (paired bootstrap CIs) on the studies both runs evaluated."""
    ra, rb = Path(run_a), Path(run_b)
    (ea, ba, ma), (eb, bb, mb) = _load(ra, split), _load(rb, split)
    # each run scored with the zero-shot protocol its own evaluation used (pool, absence prompts)
    oa = per_study_outcomes(ea, ba, k=k, **_protocol(ma))
    ob = per_study_outcomes(eb, bb, k=k, **_protocol(mb))
    common = sorted(set(oa["study_id"]) & set(ob["study_id"]))
    if len(common) < 2:
        raise MedAlignError(f"{ra} and {rb} share {len(common)} evaluated studies on split '{split}': "
                            "evaluate both on the same cohort")
    ia = {s: i for i, s in enumerate(oa["study_id"])}
    ib = {s: i for i, s in enumerate(ob["study_id"])}
    rows_a, rows_b = [ia[s] for s in common], [ib[s] for s in common]
    names = {"hit": f"R@{k} (report->image)", "rr": "MRR (report->image)", "zs_correct": "zero-shot accuracy"}
    out: dict = {"run_a": str(ra), "run_b": str(rb), "split": split, "n": len(common), "n_boot": n_boot,
                 "seed": seed, "k": k, "metrics": {},
                 "note": "paired percentile bootstrap over studies: each resample scores both runs on the same studies"}
    for key, title in names.items():
        if key not in oa or key not in ob:
            continue
        a, b = oa[key][rows_a], ob[key][rows_b]  # (n,) each, aligned by study
        keep = ~(np.isnan(a) | np.isnan(b))
        if keep.sum() < 2:
            continue
        cis = bootstrap_cis(lambda x, y: {"a": float(x.mean()), "b": float(y.mean()), "diff": float((x - y).mean())},
                            a[keep], b[keep], n=n_boot, seed=seed)
        out["metrics"][key] = {"title": title, "n": int(keep.sum()), **cis}
    return out
