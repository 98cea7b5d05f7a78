"""Inner-product FAISS index over L2-normalised embeddings (cosine similarity).

Which index (chosen by :func:`choose_kind` from the number of vectors ``n``):

- ``flat``  (``n <= exact_max``, default 50 000): ``IndexFlatIP``, exact; a cohort of a few
  thousand studies is searched in well under a millisecond, so approximation buys nothing.
- ``ivf``   (above the threshold): ``IndexIVFFlat`` with inner-product metric,
  ``nlist = clamp(round(sqrt(n)), 16, 65536)`` coarse cells, trained with k-means (10 iterations)
  on at most ``64 * nlist`` sampled vectors; ``nprobe = max(8, nlist // 16)`` cells searched per
  query (about 6 % of the data: recall@10 is high on clustered real embeddings; it is the worst
  case on the uniform random vectors of the benchmark, which prints it).
- ``hnsw``  (on request): ``IndexHNSWFlat(M=32)``, ``efConstruction=80``, ``efSearch=64``. No
  training, best latency/recall, but slower to build and larger in memory than IVF.

Vectors are always normalised here, so callers can pass raw encoder outputs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medalign.errors import MedAlignError

EXACT_MAX = 50_000
KINDS = ("flat", "ivf", "hnsw")


def l2_normalise(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit L2 norm, as contiguous float32 (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]  # (1, E)
    if x.ndim != 2:
        raise MedAlignError(f"embeddings must be 2-D (N, E), got shape {x.shape}")
    norm = np.linalg.norm(x, axis=1, keepdims=True)  # (N, 1)
    return np.ascontiguousarray(x / np.maximum(norm, eps), dtype=np.float32)


def choose_kind(n: int, *, exact_max: int = EXACT_MAX) -> str:
    """``flat`` up to ``exact_max`` vectors, ``ivf`` above."""
    return "flat" if n <= exact_max else "ivf"


def ivf_params(n: int) -> dict[str, int]:
    """Documented IVF parameters for ``n`` vectors (see module docstring)."""
    nlist = int(min(65536, max(16, round(math.sqrt(max(n, 1))))))
    return {"nlist": nlist, "nprobe": max(8, nlist // 16), "train_size": min(n, 64 * nlist), "niter": 10}


HNSW_PARAMS = {"M": 32, "efConstruction": 80, "efSearch": 64}


@dataclass
class VectorIndex:
    """A FAISS index plus the kind and parameters that built it."""

    index: Any
    kind: str
    dim: int
    params: dict[str, int] = field(default_factory=dict)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @classmethod
    def build(cls, vectors: np.ndarray, *, kind: str | None = None, exact_max: int = EXACT_MAX,
              seed: int = 0) -> "VectorIndex":
        """Build an index over ``vectors`` (N, E); ``kind=None`` picks by size."""
        import faiss

        x = l2_normalise(vectors)  # (N, E)
        n, dim = x.shape
        kind = kind or choose_kind(n, exact_max=exact_max)
        if kind not in KINDS:
            raise MedAlignError(f"unknown index kind '{kind}'; allowed: {', '.join(KINDS)}")
        params: dict[str, int] = {}
        if kind == "flat" or (kind == "ivf" and n < 16 * 39):  # too few points to train IVF cells
            kind = "flat"
            index = faiss.IndexFlatIP(dim)
        elif kind == "ivf":
            params = ivf_params(n)
            quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFFlat(quantizer, dim, params["nlist"], faiss.METRIC_INNER_PRODUCT)
            index.cp.niter = params["niter"]
            index.cp.seed = seed
            rng = np.random.default_rng(seed)
            sample = x if params["train_size"] >= n else x[rng.choice(n, params["train_size"], replace=False)]
            index.train(sample)
            index.nprobe = params["nprobe"]
        else:
            params = dict(HNSW_PARAMS)
            index = faiss.IndexHNSWFlat(dim, params["M"], faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = params["efConstruction"]
            index.hnsw.efSearch = params["efSearch"]
        if n:
            index.add(x)
        return cls(index=index, kind=kind, dim=dim, params=params)

    def add(self, vectors: np.ndarray) -> None:
        """Append vectors (IVF keeps its trained cells; HNSW links the new points)."""
        x = l2_normalise(vectors)  # (N, E)
        if x.shape[1] != self.dim:
            raise MedAlignError(f"embedding dim {x.shape[1]} != index dim {self.dim}")
        self.index.add(x)

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
    def load(cls, path: str | Path, *, kind: str, params: dict[str, int] | None = None) -> "VectorIndex":
        import faiss

        index = faiss.read_index(str(path))
        params = dict(params or {})
        if kind == "ivf" and "nprobe" in params:
            index.nprobe = params["nprobe"]
        if kind == "hnsw" and "efSearch" in params:
            index.hnsw.efSearch = params["efSearch"]
        return cls(index=index, kind=kind, dim=int(index.d), params=params)


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
