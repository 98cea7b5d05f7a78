"""``--shard K/N``: split a cohort into N disjoint parts so a cluster scheduler (a SLURM array,
a Kubernetes indexed job) can preprocess or embed them in parallel.

A study's shard is ``sha256(study_id) mod N``: it does not depend on the manifest's row order,
so ``preprocess --shard 2/8`` and ``embed --shard 2/8`` pick the same studies, and adding rows to
the manifest never moves a study to another shard. K counts from 0 (``0/N`` .. ``N-1/N``), as
``SLURM_ARRAY_TASK_ID`` does for ``--array=0-7``.
"""
from __future__ import annotations

import hashlib
import re
from typing import Any

from medalign.errors import MedAlignError


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    """``"K/N"`` -> (K, N) with 0 <= K < N; None stays None."""
    if spec is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(spec))
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise MedAlignError(f"--shard must be K/N with 0 <= K < N (e.g. 0/4), got '{spec}'")
    return int(m.group(1)), int(m.group(2))


def shard_of(study_id: str, n: int) -> int:
    """The shard (0..n-1) a study belongs to."""
    return int(hashlib.sha256(str(study_id).encode("utf-8")).hexdigest()[:16], 16) % n


def select_shard(df: Any, shard: tuple[int, int] | None) -> Any:
    """The manifest rows of shard (K, N) (all rows for None), index reset."""
    if shard is None:
        return df
    k, n = shard
    keep = [shard_of(s, n) == k for s in df["study_id"].astype(str)]
    return df[keep].reset_index(drop=True)
