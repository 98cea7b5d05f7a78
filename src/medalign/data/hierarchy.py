"""Data hierarchies for HLSS: patient -> study (or sequence) -> slab/slice for MRI, and
patient -> slide -> patch for histology-style bags.

A :class:`Hierarchy` lists *instances* (the finest unit: a slab of a study, a patch of a slide)
and, for every level, the integer id of the instance's ancestor at that level. SupCon at level
L then uses ``hierarchy.labels(L)`` as its labels: two instances are positives at level L when
they share the level-L ancestor.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from medalign.errors import CohortError


@dataclass
class Hierarchy:
    """``levels`` coarse -> fine (e.g. ("patient", "study", "slab")); ``ids[level]`` is an int64
    (N,) array, one entry per instance; ``names[level][k]`` names ancestor k of that level;
    ``position[i]`` is the instance's index within its parent (slab index, patch index)."""

    levels: tuple[str, ...]
    ids: dict[str, np.ndarray]
    names: dict[str, list[str]]
    position: np.ndarray
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.position.shape[0])

    def labels(self, level: str) -> torch.Tensor:
        """Integer tensor (N,) for SupCon at ``level``."""
        if level not in self.ids:
            raise KeyError(f"unknown level '{level}'; levels: {self.levels}")
        return torch.from_numpy(self.ids[level])

    def parent_of(self, level: str) -> np.ndarray:
        """For each ancestor at ``level``, the id of its parent one level up (e.g. study -> patient)."""
        i = self.levels.index(level)
        if i == 0:
            raise ValueError(f"'{level}' is the top level")
        up = self.levels[i - 1]
        out = np.full(len(self.names[level]), -1, dtype=np.int64)
        out[self.ids[level]] = self.ids[up]
        return out


def _index(values: Sequence) -> tuple[np.ndarray, list[str]]:
    """Strings -> dense ints in order of first appearance."""
    lookup: dict[str, int] = {}
    ids = np.array([lookup.setdefault(str(v), len(lookup)) for v in values], dtype=np.int64)
    return ids, list(lookup)


def build_hierarchy(patient_ids: Sequence, parent_ids: Sequence, n_children: int | Sequence[int], *,
                    levels: tuple[str, str, str] = ("patient", "study", "slab")) -> Hierarchy:
    """Generic three-level hierarchy: one row per middle-level unit (study / slide) with its patient,
    each expanded into ``n_children`` finest units (slabs / patches; an int or one count per row).

    Instances are ordered row-major: all children of row 0, then row 1, ...
    """
    patient_ids, parent_ids = [str(p) for p in patient_ids], [str(s) for s in parent_ids]
    if len(patient_ids) != len(parent_ids):
        raise ValueError(f"{len(patient_ids)} patient ids but {len(parent_ids)} {levels[1]} ids")
    counts = [int(n_children)] * len(parent_ids) if np.isscalar(n_children) else [int(c) for c in n_children]
    if len(counts) != len(parent_ids):
        raise ValueError(f"n_children has {len(counts)} entries for {len(parent_ids)} {levels[1]}s")
    seen: dict[str, str] = {}
    for pid, sid in zip(patient_ids, parent_ids):
        if seen.setdefault(sid, pid) != pid:
            raise CohortError(f"{levels[1]} belongs to two patients ('{seen[sid]}' and '{pid}')", study_id=sid)
    for sid, c in zip(parent_ids, counts):
        if c < 1:
            raise CohortError(f"needs >= 1 {levels[2]}, got {c}", study_id=sid)
    rep = np.repeat(np.arange(len(parent_ids)), counts)  # (N,) row of each instance
    pat_ids, pat_names = _index(patient_ids)
    mid_ids, mid_names = _index(parent_ids)
    position = np.concatenate([np.arange(c) for c in counts]).astype(np.int64) if counts else np.zeros(0, np.int64)
    fine_names = [f"{parent_ids[r]}#{p}" for r, p in zip(rep, position)]
    return Hierarchy(
        levels=levels,
        ids={levels[0]: pat_ids[rep], levels[1]: mid_ids[rep], levels[2]: np.arange(len(rep), dtype=np.int64)},
        names={levels[0]: pat_names, levels[1]: mid_names, levels[2]: fine_names},
        position=position,
        meta={"n_children": counts},
    )


def mri_hierarchy(patient_ids: Sequence, study_ids: Sequence, *, n_slabs: int,
                  middle: str = "study", fine: str = "slab") -> Hierarchy:
    """patient -> study -> slab (``n_slabs`` equal slabs along D; ``fine="slice"`` when n_slabs = D).
    With ``middle="sequence"`` pass one row per (study, sequence), e.g. ids ``"s01/flair"``."""
    return build_hierarchy(patient_ids, study_ids, n_slabs, levels=("patient", middle, fine))


def bag_hierarchy(patient_ids: Sequence, slide_ids: Sequence, n_patches: int | Sequence[int]) -> Hierarchy:
    """patient -> slide -> patch for histology-style bags."""
    return build_hierarchy(patient_ids, slide_ids, n_patches, levels=("patient", "slide", "patch"))


def manifest_hierarchy(df, *, n_slabs: int, middle: str = "study", sequences: Sequence[str] | None = None) -> Hierarchy:
    """From a manifest (one row per study). ``middle="sequence"`` makes one middle unit per
    (study, available sequence) among ``sequences`` (default: every ``image_<seq>`` column)."""
    for col in ("study_id", "patient_id"):
        if col not in df.columns:
            raise CohortError(f"manifest has no '{col}' column", column=col)
    if middle == "study":
        return mri_hierarchy(df["patient_id"].tolist(), df["study_id"].tolist(), n_slabs=n_slabs)
    if middle != "sequence":
        raise ValueError(f"middle must be 'study' or 'sequence', got '{middle}'")
    seqs = list(sequences) if sequences is not None else [c[len("image_"):] for c in df.columns if c.startswith("image_")]
    pats, units = [], []
    for _, row in df.iterrows():
        for s in seqs:
            v = row.get(f"image_{s}")
            if isinstance(v, str) and v.strip():
                pats.append(row["patient_id"]); units.append(f"{row['study_id']}/{s}")
    return mri_hierarchy(pats, units, n_slabs=n_slabs, middle="sequence")


def split_slabs(image: torch.Tensor, n_slabs: int) -> torch.Tensor:
    """(B, C, D, H, W) -> (B * S, C, D // S, H, W): S equal, contiguous slabs along depth,
    ordered study-major (instance b * S + s is slab s of study b), matching :func:`mri_hierarchy`.
    ``n_slabs = D`` gives single slices; (B, C, H, W) 2D input splits along H into bands."""
    if image.ndim not in (4, 5):
        raise ValueError(f"split_slabs needs (B, C, D, H, W) or (B, C, H, W), got {tuple(image.shape)}")
    b, c, d = image.shape[:3]
    if n_slabs < 1 or d % n_slabs:
        raise ValueError(f"depth {d} is not divisible into {n_slabs} slabs")
    t = d // n_slabs
    x = image.reshape(b, c, n_slabs, t, *image.shape[3:])  # (B, C, S, T, ...)
    x = x.transpose(1, 2)  # (B, S, C, T, ...)
    return x.reshape(b * n_slabs, c, t, *image.shape[3:])  # (B*S, C, T, ...)


def batch_hierarchy_labels(patient_ids: Sequence, study_ids: Sequence, n_slabs: int) -> dict[str, torch.Tensor]:
    """Labels for a batch of B studies split into S slabs each (order of :func:`split_slabs`):
    {"patient": (B*S,), "study": (B*S,), "slab": (B*S,), "position": (B*S,)}."""
    h = mri_hierarchy(patient_ids, study_ids, n_slabs=n_slabs)
    out = {lvl: h.labels(lvl) for lvl in h.levels}
    out["position"] = torch.from_numpy(h.position)
    return out
