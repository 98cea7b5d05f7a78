"""Inner-product FAISS index over L2-normalised embeddings (cosine similarity).

Which index (chosen by :func:`choose_kind` from the number of vectors ``n``):

- ``flat``  (``n <= exact_max``, default 50 000): ``IndexFlatIP``, exact; a cohort of a few
  thousand studies is searched in well under a millisecond, so approximation buys nothing.
- ``ivf``   (up to ``compact_min``, default 4 M): ``IndexIVFFlat``, inner-product metric,
  ``nlist = clamp(round(8 * sqrt(n)), 16, 65536)`` coarse cells trained by spherical k-means
  (10 iterations; two-level above 1024 cells) on at most ``40 * nlist`` sampled vectors. Why
  8 sqrt(n) (FAISS's guidance is 4-16 sqrt(n)) and not sqrt(n): on clustered embeddings with more
  clusters than cells, each cell mixes several clusters, points of one cluster scatter over cells
  and recall@10 >= 0.95 needed nprobe 256 of 1000 cells at 1M (benchmark, 100 points per
  cluster); with ~1 cluster per cell a few cells suffice. The price: assigning a vector costs
  nlist inner products (adding 1M vectors ~1.5 min on one core; a query ~0.2 ms). Full float32 vectors: 1 KiB per
  256-d study. ``add`` assigns new vectors to the trained cells (no retraining); the store
  rebuilds once an index has grown past twice the size it was trained on.
- ``ivfsq`` (above ``compact_min``): the same cells, vectors stored as 8-bit scalar-quantised
  codes (``IndexIVFScalarQuantizer``, QT_8bit): a quarter of the memory (256 B per 256-d study),
  recall barely changed (8-bit codes keep cosine ranks to ~1e-3). The memory-bounded choice.
- ``hnsw``  (on request): ``IndexHNSWFlat(M=32)``, ``efConstruction=80``. No training, best
  latency/recall, but slow to build (minutes per million on one core) and larger in memory.

Tuning (:func:`tune_recall`): an approximate index is searched with a held-back sample of the
cohort's own vectors (leave-one-out: each query's own row is removed from both answers), and
``nprobe`` (IVF) or ``efSearch`` (HNSW) is raised (x1.5 a step) until the one-sided 95 % lower bound of
recall@10 against the exact answer (mean - 1.645 SE over the queries) is at least ``target_recall`` (0.95). The measured recall, the number of queries and the chosen
setting are stored in ``params`` (and so in the index metadata).

Vectors are always normalised here, so callers can pass raw encoder outputs.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medalign.errors import MedAlignError

log = logging.getLogger(__name__)

EXACT_MAX = 50_000
COMPACT_MIN = 4_000_000
KINDS = ("flat", "ivf", "ivfsq", "hnsw")
TARGET_RECALL = 0.95
RECALL_Z = 1.645  # one-sided 95 %: the tuned recall's lower bound, not its sample mean, must reach the target
RECALL_QUERIES = 256
HNSW_PARAMS = {"M": 32, "efConstruction": 80, "efSearch": 16}


def l2_normalise(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit L2 norm, as contiguous float32 (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]  # (1, E)
    if x.ndim != 2:
        raise MedAlignError(f"embeddings must be 2-D (N, E), got shape {x.shape}")
    norm = np.linalg.norm(x, axis=1, keepdims=True)  # (N, 1)
    return np.ascontiguousarray(x / np.maximum(norm, eps), dtype=np.float32)


def choose_kind(n: int, *, exact_max: int = EXACT_MAX, compact_min: int = COMPACT_MIN) -> str:
    """``flat`` up to ``exact_max`` vectors, ``ivf`` up to ``compact_min``, ``ivfsq`` above."""
    return "flat" if n <= exact_max else "ivf" if n <= compact_min else "ivfsq"


def ivf_params(n: int) -> dict[str, int]:
    """Starting IVF parameters for ``n`` vectors (see module docstring); ``nprobe`` is then tuned."""
    nlist = int(min(65536, max(16, round(8 * math.sqrt(max(n, 1))))))
    return {"nlist": nlist, "nprobe": 8, "train_size": min(n, 40 * nlist), "niter": 10, "n_trained": n}


def memory_bytes(kind: str, n: int, dim: int, params: dict[str, Any] | None = None) -> int:
    """Estimated resident size of an index of ``n`` vectors (codes + ids + coarse centroids + graph)."""
    p = params or {}
    if kind == "flat":
        return 4 * n * dim
    if kind in ("ivf", "ivfsq"):
        code = 4 * dim if kind == "ivf" else dim
        return n * (code + 8) + 4 * int(p.get("nlist", 0)) * dim
    if kind == "hnsw":  # level-0 links: 2*M int32 per point; upper levels add ~1/M of that
        return n * (4 * dim + int(2 * p.get("M", 32) * 4 * 1.05))
    raise MedAlignError(f"unknown index kind '{kind}'; allowed: {', '.join(KINDS)}")


def exact_neighbours(db: np.ndarray, queries: np.ndarray, k: int, chunk: int = 131072) -> np.ndarray:
    """(Q, k) ids of the exact top-``k`` inner products, best first (NumPy matmul over row chunks;
    no copy of ``db``). NumPy's BLAS is used rather than faiss.knn: 3-4x faster on this machine."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_i = np.zeros((len(q), 0), np.int64)
    for s in range(0, db.shape[0], chunk):
        sims = q @ db[s: s + chunk].T  # (Q, C)
        kk = min(k, sims.shape[1])
        part = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]  # (Q, kk) unordered
        best_s = np.concatenate([best_s, np.take_along_axis(sims, part, axis=1)], axis=1)  # (Q, <=2k)
        best_i = np.concatenate([best_i, part + s], axis=1)
        order = np.argsort(-best_s, axis=1, kind="stable")[:, :k]  # (Q, k)
        best_s, best_i = np.take_along_axis(best_s, order, axis=1), np.take_along_axis(best_i, order, axis=1)
    return best_i


def _assign(x: np.ndarray, centroids: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """(N,) int64 nearest centroid (largest inner product) of each row of ``x``."""
    out = np.empty(len(x), np.int64)
    for s in range(0, len(x), chunk):
        out[s: s + chunk] = np.argmax(x[s: s + chunk] @ centroids.T, axis=1)  # (C, nlist) -> (C,)
    return out


def _spherical_kmeans(x: np.ndarray, k: int, niter: int, seed: int) -> np.ndarray:
    """(k, E) unit centroids: Lloyd iterations on the sphere (assign by inner product, mean, renormalise).

    Written with NumPy's matmul rather than faiss.Kmeans for speed here (see exact_neighbours);
    empty cells are re-seeded from random rows.
    """
    rng = np.random.default_rng(seed)
    cent = x[rng.choice(len(x), k, replace=False)].copy()  # (k, E)
    for _ in range(niter):
        a = _assign(x, cent)  # (N,)
        order = np.argsort(a, kind="stable")
        counts = np.bincount(a, minlength=k)  # (k,)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        nonempty = counts > 0
        sums = np.add.reduceat(x[order], starts[nonempty], axis=0)  # (k_nonempty, E)
        cent[nonempty] = sums
        empty = np.flatnonzero(~nonempty)
        if len(empty):
            cent[empty] = x[rng.choice(len(x), len(empty), replace=False)]
        cent = l2_normalise(cent)
    return cent


def _recall_loo(found: np.ndarray, exact: np.ndarray, self_ids: np.ndarray, k: int) -> np.ndarray:
    """Per-query recall@k (Q,) with each query's own row removed from both (k+1)-long answers."""
    hits = []
    for f, e, s in zip(found, exact, self_ids):
        e_k = [i for i in e if i != s][:k]
        f_k = [i for i in f if i != s and i >= 0][:k]
        hits.append(len(set(f_k) & set(e_k)) / max(len(e_k), 1))
    return np.asarray(hits, dtype=np.float64)


def recall_lower_bound(per_query: np.ndarray, z: float = RECALL_Z) -> float:
    """One-sided lower confidence bound of the mean recall: mean - z * SE over the queries.

    Why: tuning stops at the first setting whose *sample* recall reaches the target, so the
    chosen setting sits at the target on the tuning sample and below it, on average, on new
    queries (seen: 0.954 at build, 0.937 held-out for IVF-SQ8). Asking the lower bound to reach
    the target leaves a margin sized by the sample's own spread."""
    if len(per_query) == 0:
        return 1.0
    se = float(per_query.std(ddof=1)) / math.sqrt(len(per_query)) if len(per_query) > 1 else 0.0
    return float(per_query.mean()) - z * se


@dataclass
class VectorIndex:
    """A FAISS index plus the kind and parameters that built it (and its measured recall)."""

    index: Any
    kind: str
    dim: int
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def memory_bytes(self) -> int:
        """Estimated resident size (see :func:`memory_bytes`)."""
        return memory_bytes(self.kind, self.ntotal, self.dim, self.params)

    @classmethod
    def build(cls, vectors: np.ndarray, *, kind: str | None = None, exact_max: int = EXACT_MAX,
              compact_min: int = COMPACT_MIN, seed: int = 0, target_recall: float = TARGET_RECALL,
              recall_queries: int = RECALL_QUERIES) -> "VectorIndex":
        """Build an index over ``vectors`` (N, E); ``kind=None`` picks by size. Approximate kinds are
        tuned to ``target_recall`` on ``recall_queries`` held-back vectors (0 = no tuning)."""
        import faiss

        x = l2_normalise(vectors)  # (N, E)
        n, dim = x.shape
        kind = kind or choose_kind(n, exact_max=exact_max, compact_min=compact_min)
        if kind not in KINDS:
            raise MedAlignError(f"unknown index kind '{kind}'; allowed: {', '.join(KINDS)}")
        params: dict[str, Any] = {}
        if kind == "flat" or (kind in ("ivf", "ivfsq") and n < 16 * 39):  # too few points to train IVF cells
            kind, index = "flat", faiss.IndexFlatIP(dim)
        elif kind in ("ivf", "ivfsq"):
            params = ivf_params(n)
            index = _train_ivf(x, kind, params, seed)
        else:
            params = dict(HNSW_PARAMS)
            index = faiss.IndexHNSWFlat(dim, params["M"], faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = params["efConstruction"]
        if n:
            _add_vectors(index, x)
        vi = cls(index=index, kind=kind, dim=dim, params=params)
        vi.apply_params()
        if kind != "flat" and recall_queries > 0 and n > 10:
            vi.tune_recall(x, target=target_recall, n_queries=recall_queries, seed=seed)
        return vi

    def apply_params(self) -> None:
        """Set the search-time knobs recorded in ``params`` on the FAISS object."""
        if self.kind in ("ivf", "ivfsq") and "nprobe" in self.params:
            self.index.nprobe = int(self.params["nprobe"])
        if self.kind == "hnsw" and "efSearch" in self.params:
            self.index.hnsw.efSearch = int(self.params["efSearch"])

    def tune_recall(self, db: np.ndarray, *, target: float = TARGET_RECALL, n_queries: int = RECALL_QUERIES,
                    k: int = 10, seed: int = 0) -> float:
        """Raise ``nprobe`` / ``efSearch`` (x1.5 a step) until leave-one-out recall@k on held-back rows of ``db``
        (the indexed vectors, normalised) reaches ``target``; records the result in ``params``."""
        n = db.shape[0]
        rng = np.random.default_rng(seed + 1)
        sel = np.sort(rng.choice(n, min(n_queries, n), replace=False))  # (Q,) held-back rows
        q = db[sel]  # (Q, E)
        exact = exact_neighbours(db, q, k + 1)  # (Q, k+1)
        knob, top = (("nprobe", int(self.params.get("nlist", 1))) if self.kind in ("ivf", "ivfsq")
                     else ("efSearch", 1024))
        value = int(self.params.get(knob, 8))
        while True:
            self.params[knob] = value
            self.apply_params()
            _, found = self.index.search(q, k + 1)
            per_query = _recall_loo(found, exact, sel, k)  # (Q,)
            recall, lower = float(per_query.mean()) if len(per_query) else 1.0, recall_lower_bound(per_query)
            if lower >= target or value >= top:
                break
            value = min(max(value + 1, value * 3 // 2), top)  # x1.5: doubling overshoots the latency
        if lower < target:
            log.warning("index recall@%d %.3f (lower bound %.3f) < target %.2f even at %s=%d",
                        k, recall, lower, target, knob, value)
        self.params.update(recall10=round(recall, 4), recall10_lower=round(lower, 4), recall_queries=int(len(sel)),
                           recall_target=target)
        return recall

    def add(self, vectors: np.ndarray) -> None:
        """Append vectors (IVF keeps its trained cells; HNSW links the new points)."""
        x = l2_normalise(vectors)  # (N, E)
        if x.shape[1] != self.dim:
            raise MedAlignError(f"embedding dim {x.shape[1]} != index dim {self.dim}")
        _add_vectors(self.index, x)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores (Q, k) cosine, ids (Q, k) positions; -1 where fewer than k exist)."""
        q = l2_normalise(queries)  # (Q, E)
        if q.shape[1] != self.dim:
            raise MedAlignError(f"query dim {q.shape[1]} != index dim {self.dim}")
        k = max(1, min(int(k), max(self.ntotal, 1)))
        scores, ids = self.index.search(q, k)
        return scores, ids

    def save(self, path: str | Path) -> None:
        """Write the index to ``path`` atomically."""
        import faiss

        from medalign.utils import atomic_path

        with atomic_path(path, suffix=".faiss") as tmp:
            faiss.write_index(self.index, str(tmp))

    @classmethod
    def load(cls, path: str | Path, *, kind: str, params: dict[str, Any] | None = None) -> "VectorIndex":
        """Read an index written by :meth:`save` and set its recorded search knobs."""
        import faiss

        index = faiss.read_index(str(path))
        vi = cls(index=index, kind=kind, dim=int(index.d), params=dict(params or {}))
        vi.apply_params()
        return vi


def _two_level_kmeans(x: np.ndarray, k: int, niter: int, seed: int) -> np.ndarray:
    """(<= k, E) unit centroids: sqrt(k) coarse cells, then each split in proportion to its share.

    Why: flat k-means costs samples x k per iteration (hours for k = 4000 at 160k samples on one
    core); two levels cost samples x 2 sqrt(k). The cells are a little less balanced.
    """
    k1 = max(2, int(round(math.sqrt(k))))
    coarse = _spherical_kmeans(x, k1, niter, seed)  # (k1, E)
    a = _assign(x, coarse)  # (N,)
    counts = np.bincount(a, minlength=k1)  # (k1,)
    share = counts / counts.sum() * k
    alloc = np.minimum(np.maximum(np.floor(share).astype(int), (counts > 0).astype(int)), counts)
    for g in np.argsort(-(share - np.floor(share))):  # hand out the rounding remainder
        if alloc.sum() >= k:
            break
        if alloc[g] < counts[g]:
            alloc[g] += 1
    return np.concatenate([_spherical_kmeans(x[a == g], int(alloc[g]), niter, seed + 1 + int(g))
                           for g in range(k1) if alloc[g] > 0])


def _train_ivf(x: np.ndarray, kind: str, params: dict[str, Any], seed: int) -> Any:
    """An IVF (flat or 8-bit SQ codes) whose ``params['nlist']`` cells are trained on a sample of ``x``
    (flat k-means up to 1024 cells, two-level above); a flat coarse quantizer: exact cell ranking
    (an HNSW graph over nearly orthogonal cells was tried and lost recall) at nlist x E per query."""
    import faiss

    n, dim = x.shape
    rng = np.random.default_rng(seed)
    sample = x if params["train_size"] >= n else x[np.sort(rng.choice(n, params["train_size"], replace=False))]
    quantizer = faiss.IndexFlatIP(dim)
    km = _spherical_kmeans if params["nlist"] <= 1024 else _two_level_kmeans
    cells = km(sample, params["nlist"], params["niter"], seed)  # (nlist', E)
    params["nlist"] = int(len(cells))
    quantizer.add(cells)
    if kind == "ivf":
        index = faiss.IndexIVFFlat(quantizer, dim, params["nlist"], faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexIVFScalarQuantizer(quantizer, dim, params["nlist"], faiss.ScalarQuantizer.QT_8bit,
                                              faiss.METRIC_INNER_PRODUCT)
    index.train(sample)  # cells are already there (faiss skips k-means); trains the SQ ranges for ivfsq
    return index  # faiss's Python wrapper keeps ``quantizer`` alive as a referenced object


def _add_vectors(index: Any, x: np.ndarray) -> None:
    """``index.add(x)``; IVF rows are assigned to cells with NumPy first (the slow part of adding)."""
    import faiss

    q = faiss.downcast_index(index.quantizer) if isinstance(index, faiss.IndexIVF) else None
    if isinstance(q, faiss.IndexFlat):
        from faiss.contrib.ivf_tools import add_preassigned

        cent = q.reconstruct_n(0, q.ntotal)  # (nlist, E)
        add_preassigned(index, x, _assign(x, cent))
    else:
        index.add(x)


def brute_force_search(db: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner product with NumPy (reference for tests and benchmarks).

    ``db`` and ``queries`` must already be normalised. Returns (scores (Q, k), ids (Q, k)),
    best first.
    """
    sims = queries @ db.T  # (Q, N)
    k = min(k, db.shape[0])
    part = np.argpartition(-sims, k - 1, axis=1)[:, :k]  # (Q, k) unordered
    part_scores = np.take_along_axis(sims, part, axis=1)  # (Q, k)
    order = np.argsort(-part_scores, axis=1)  # (Q, k)
    return np.take_along_axis(part_scores, order, axis=1), np.take_along_axis(part, order, axis=1)
