"""Retrieval metrics on embeddings: text->image, image->text and case->case.

Pure functions on numpy arrays. A query is matched to its candidates **by study id**
(never by report string: two studies may share a report word for word). Ranks are
1-based and *pessimistic* under ties (a candidate that scores exactly as high as the
right one counts as ranked above it), so constant embeddings cannot look perfect.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)


def l2_normalise(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(Q, E) x (N, E) -> (Q, N) cosine similarities."""
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"embedding sizes differ: {a.shape[1]} vs {b.shape[1]}")
    return l2_normalise(a) @ l2_normalise(b).T  # (Q, N)


def match_ranks(
    sim: np.ndarray,
    query_ids: Sequence[str],
    cand_ids: Sequence[str],
) -> tuple[np.ndarray, np.ndarray]:
    """Rank (1-based, pessimistic under ties) of the first candidate sharing the query's id.

    Returns (ranks (Q,), similarity of the matched candidate (Q,)). Raises ValueError
    naming the first query with no matching candidate.
    """
    sim = np.asarray(sim, dtype=np.float64)
    q_ids = np.asarray([str(s) for s in query_ids])
    c_ids = np.asarray([str(s) for s in cand_ids])
    if sim.shape != (len(q_ids), len(c_ids)):
        raise ValueError(f"similarity shape {sim.shape} != (queries {len(q_ids)}, candidates {len(c_ids)})")
    match = q_ids[:, None] == c_ids[None, :]  # (Q, N)
    missing = np.flatnonzero(~match.any(axis=1))
    if len(missing):
        raise ValueError(f"query study '{q_ids[missing[0]]}' has no candidate with the same study id")
    true_sim = np.where(match, sim, -np.inf).max(axis=1)  # (Q,)
    others = ~match
    # pessimistic: every non-matching candidate scoring >= the match is ranked above it
    ranks = 1 + ((sim >= true_sim[:, None]) & others).sum(axis=1)
    return ranks.astype(np.int64), true_sim


def rank_summary(ranks: np.ndarray, ks: Sequence[int] = DEFAULT_KS, pool_size: int | None = None) -> dict:
    """Recall@K, MRR, median and mean rank from 1-based ranks."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out: dict = {f"R@{k}": float(np.mean(ranks <= k)) for k in ks}
    out.update(
        MRR=float(np.mean(1.0 / ranks)),
        median_rank=float(np.median(ranks)),
        mean_rank=float(np.mean(ranks)),
        n_queries=int(len(ranks)),
    )
    if pool_size is not None:
        out["pool_size"] = int(pool_size)
        out.update({f"chance_R@{k}": min(k, pool_size) / pool_size for k in ks})
    return out


def class_precision_per_query(
    sim: np.ndarray,
    query_labels: Sequence,
    cand_labels: Sequence,
    k: int,
    *,
    self_mask: np.ndarray | None = None,
) -> np.ndarray:
    """(Q,) fraction of each query's top-K candidates sharing its class.

    ``self_mask`` (Q, N) bool marks candidates to drop from each query's pool (self).
    Ties are broken by candidate order (stable sort).
    """
    sim = np.asarray(sim, dtype=np.float64).copy()
    ql, cl = np.asarray(query_labels), np.asarray(cand_labels)
    if self_mask is not None:
        sim[self_mask] = -np.inf
    n_pool = sim.shape[1] - (0 if self_mask is None else int(self_mask.sum(axis=1).max()))
    order = np.argsort(-sim, axis=1, kind="stable")  # (Q, N)
    same = cl[order] == ql[:, None]  # (Q, N) class agreement in rank order
    kk = max(1, min(k, n_pool))
    return same[:, :kk].mean(axis=1)


def class_precision_at_k(
    sim: np.ndarray,
    query_labels: Sequence,
    cand_labels: Sequence,
    ks: Sequence[int] = DEFAULT_KS,
    *,
    self_mask: np.ndarray | None = None,
) -> dict[str, float]:
    """Mean over queries of the fraction of the top-K candidates that share the query's class."""
    return {f"P@{k}": float(class_precision_per_query(sim, query_labels, cand_labels, k, self_mask=self_mask).mean())
            for k in ks}


def top_k(sim: np.ndarray, k: int = 5, *, self_mask: np.ndarray | None = None) -> np.ndarray:
    """Indices (Q, k) of the k most similar candidates per query, best first."""
    sim = np.asarray(sim, dtype=np.float64).copy()
    if self_mask is not None:
        sim[self_mask] = -np.inf
    k = min(k, sim.shape[1] - (0 if self_mask is None else 1))
    return np.argsort(-sim, axis=1, kind="stable")[:, :k]


def cross_modal_retrieval(
    image_embed: np.ndarray,
    text_embed: np.ndarray,
    study_ids: Sequence[str],
    labels: Sequence | None = None,
    *,
    ks: Sequence[int] = DEFAULT_KS,
) -> dict:
    """Both directions over one set of studies (row i of each array = study_ids[i]).

    Returns {"text_to_image": {...}, "image_to_text": {...}} each with the summary,
    class precision@K (when labels are given) and per-query ``ranks`` / ``true_sim`` lists.
    """
    image_embed, text_embed = np.asarray(image_embed), np.asarray(text_embed)
    if len(image_embed) != len(text_embed) or len(image_embed) != len(study_ids):
        raise ValueError(
            f"row counts differ: image {len(image_embed)}, text {len(text_embed)}, ids {len(study_ids)}"
        )
    sim_ti = cosine_similarity(text_embed, image_embed)  # (N_text, N_image)
    out = {}
    for name, sim in (("text_to_image", sim_ti), ("image_to_text", sim_ti.T)):
        ranks, true_sim = match_ranks(sim, study_ids, study_ids)
        res = rank_summary(ranks, ks, pool_size=sim.shape[1])
        if labels is not None:
            res.update(class_precision_at_k(sim, labels, labels, ks))
        res["ranks"] = ranks.tolist()
        res["true_sim"] = true_sim.tolist()
        out[name] = res
    return out


def case_retrieval(
    image_embed: np.ndarray,
    labels: Sequence,
    *,
    ks: Sequence[int] = DEFAULT_KS,
) -> dict:
    """Image -> image over one set, each query excluding itself; relevant = same class.

    ``ranks`` is the rank of the first same-class study (so R@K = "a same-class case in the
    top K"); P@K is the class precision. A query whose class has no other member is skipped.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if n < 2:
        raise ValueError("case retrieval needs at least 2 studies")
    sim = cosine_similarity(image_embed, image_embed)  # (N, N)
    self_mask = np.eye(n, dtype=bool)
    rel = (labels[:, None] == labels[None, :]) & ~self_mask  # (N, N) relevant candidates
    keep = rel.any(axis=1)
    if not keep.any():  # e.g. a tiny split with one study per class: no case has a same-class partner
        return {"skipped": "no study in this split has another study of its class", "pool_size": n - 1}
    s = np.where(self_mask, -np.inf, sim)
    best_rel = np.where(rel, s, -np.inf).max(axis=1)  # (N,)
    ranks = 1 + ((s >= best_rel[:, None]) & ~rel & ~self_mask).sum(axis=1)
    res = rank_summary(ranks[keep], ks, pool_size=n - 1)
    # chance for "a same-class case in top K" depends on class sizes; record P@K chance instead
    for k in ks:
        res.pop(f"chance_R@{k}", None)
    res.update(class_precision_at_k(sim[keep], labels[keep], labels, ks, self_mask=self_mask[keep]))
    counts = {c: int((labels == c).sum()) for c in np.unique(labels)}
    res["chance_P@1"] = float(np.mean([(counts[c] - 1) / (n - 1) for c in labels[keep]]))
    res["ranks"] = ranks[keep].tolist()
    res["precision"] = {f"P@{k}": class_precision_per_query(sim[keep], labels[keep], labels, k,
                                                            self_mask=self_mask[keep]).tolist() for k in ks}
    res["n_skipped"] = int((~keep).sum())
    return res
