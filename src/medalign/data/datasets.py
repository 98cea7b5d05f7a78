"""Torch datasets yielding the sample dict of DESIGN.md from the preprocessed cache."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from medalign.data.cache import CohortCache
from medalign.data.schema import CLASSES, IMAGE_PREFIX, PARAPHRASES_COLUMN
from medalign.errors import CohortError


def _label_int(v: Any) -> int:
    if v is None or (isinstance(v, float) and np.isnan(v)) or str(v).strip() == "":
        return -1
    return CLASSES.index(str(v).strip())


class CohortDataset(Dataset):
    """One item per manifest row (optionally one split) whose arrays are in the cache.

    Sample: ``image`` float32 (C, D, H, W), ``sequence_mask`` bool (C,), ``text`` str (report,
    "" if none), ``label`` int (-1 if none), ``study_id``, ``patient_id``, ``mask`` uint8
    (D, H, W) when the cache holds one, and ``paraphrases`` (list of str: other wordings of the
    report, for training-only text views) when the manifest has a ``report_paraphrases``
    column (``self.paraphrases`` is then the list per row, else None). ``augment`` (e.g.
    ``build_augment("paper")``) is applied last; pass it for the train split only.
    """

    def __init__(self, manifest: pd.DataFrame | str | Path, cache_dir: str | Path, *, split: str | None = None,
                 augment: Callable[[dict], dict] | None = None) -> None:
        from medalign.data.manifest import load_manifest, parse_paraphrases

        df = manifest if isinstance(manifest, pd.DataFrame) else load_manifest(manifest, check_files=False)
        paras: list[list[str]] | None = None
        if PARAPHRASES_COLUMN in df.columns:  # parsed before the split is taken, so errors name the file's row
            paras = [parse_paraphrases(v, row=k, study_id=str(s))
                     for k, (v, s) in enumerate(zip(df[PARAPHRASES_COLUMN], df["study_id"]), start=1)]
        if split is not None:
            if "split" not in df.columns:
                raise CohortError(f"manifest has no 'split' column (asked for split '{split}'); "
                                  "run `medalign split` first", column="split")
            keep = (df["split"].astype(str) == split).tolist()
            df = df[keep]
            paras = None if paras is None else [p for p, k in zip(paras, keep) if k]
        self.df = df.reset_index(drop=True)
        self.cache = CohortCache(cache_dir)
        missing = [s for s in self.df["study_id"].astype(str) if s not in self.cache]
        if missing:
            raise CohortError(f"{len(missing)} studies not in the cache (first: {missing[0]}); "
                              "run `medalign preprocess` on this manifest", path=str(cache_dir))
        self.augment = augment
        self.sequences: tuple[str, ...] = self.cache.config.sequences
        self.study_ids = self.df["study_id"].astype(str).tolist()
        self.labels = [_label_int(v) for v in (self.df["label"] if "label" in self.df.columns else [None] * len(self.df))]
        self.texts = [str(v) if isinstance(v, str) else "" for v in
                      (self.df["report"] if "report" in self.df.columns else [""] * len(self.df))]
        self.patient_ids = self.df["patient_id"].astype(str).tolist()
        self.paraphrases = paras

    def __len__(self) -> int:
        return len(self.df)

    @property
    def protocols(self) -> list[tuple[str, ...]]:
        """Each study's acquired sequences (of the cache's), without loading images: the manifest's
        filled ``image_<seq>`` columns, else the cached sequence mask (what ``train.protocol_balance`` reads)."""
        from medalign.data.manifest import empty_cell

        if any(IMAGE_PREFIX + q in self.df.columns for q in self.sequences):
            return [tuple(q for q in self.sequences if not empty_cell(row.get(IMAGE_PREFIX + q)))
                    for row in self.df.to_dict("records")]
        masks = (self.cache.entry(sid)["sequence_mask"] for sid in self.study_ids)  # the index alone, no arrays
        return [tuple(q for q, m in zip(self.sequences, mask) if m) for mask in masks]

    def __getitem__(self, i: int) -> dict[str, Any]:
        sid = self.study_ids[i]
        arr = self.cache.load(sid)
        sample: dict[str, Any] = {
            "image": torch.from_numpy(np.array(arr["image"], dtype=np.float32)),  # copy out of the memmap
            "sequence_mask": torch.from_numpy(arr["sequence_mask"].copy()),
            "text": self.texts[i],
            "label": self.labels[i],
            "study_id": sid,
            "patient_id": self.patient_ids[i],
        }
        if self.paraphrases is not None:
            sample["paraphrases"] = list(self.paraphrases[i])
        if arr["mask"] is not None:
            sample["mask"] = torch.from_numpy(np.array(arr["mask"], dtype=np.uint8))
        if self.augment is not None:
            sample = self.augment(sample)
        return sample


def collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors, keep strings as lists, ints -> long tensor.

    ``mask`` is stacked when any sample has one (zeros for the others) and ``has_mask`` (B,)
    says which are real. Keys absent from some samples are dropped, except ``mask``.
    """
    if not samples:
        raise ValueError("collate: empty batch")
    batch: dict[str, Any] = {}
    keys = set(samples[0])
    for s in samples[1:]:
        keys &= set(s)
    for k in samples[0]:
        if k not in keys or k == "mask":
            continue
        vals = [s[k] for s in samples]
        v0 = vals[0]
        if isinstance(v0, torch.Tensor):
            batch[k] = torch.stack(vals)  # (B, ...)
        elif isinstance(v0, np.ndarray):
            batch[k] = torch.from_numpy(np.stack(vals))
        elif isinstance(v0, (bool, np.bool_)):
            batch[k] = torch.tensor(vals, dtype=torch.bool)
        elif isinstance(v0, (int, np.integer)):
            batch[k] = torch.tensor(vals, dtype=torch.long)
        elif isinstance(v0, (float, np.floating)):
            batch[k] = torch.tensor(vals, dtype=torch.float32)
        else:
            batch[k] = list(vals)
    if any(s.get("mask") is not None for s in samples):
        ref = next(s["mask"] for s in samples if s.get("mask") is not None)
        batch["mask"] = torch.stack([s["mask"] if s.get("mask") is not None else torch.zeros_like(ref)
                                     for s in samples])  # (B, D, H, W)
        batch["has_mask"] = torch.tensor([s.get("mask") is not None for s in samples])
    return batch


class SyntheticPairs(Dataset):
    """Tiny in-memory image-report pairs for tests and benchmarks (``data.kind: synthetic``).

    Study i has class ``i % n_classes``; its image carries a bright cube whose position and
    channel depend on the class (plus noise), and its report names the class. Samples match the
    CohortDataset dict exactly.
    """

    REPORTS = (
        "Acute infarct with restricted diffusion in the left hemisphere.",
        "Enhancing tumor with surrounding oedema in the right frontal lobe.",
        "Intraparenchymal hemorrhage with blooming on T2 star.",
        "Normal study. No acute intracranial abnormality.",
        "Small vessel disease and nonspecific white matter changes.",
    )

    def __init__(self, split: str = "all", n: int = 10, channels: int = 2, shape: tuple[int, ...] = (8, 32, 32),
                 n_classes: int = 5, seed: int = 0, missing_every: int = 0) -> None:
        self.split, self.n, self.channels, self.shape = split, n, channels, tuple(shape)
        self.n_classes, self.seed, self.missing_every = n_classes, seed, missing_every
        # Different splits get different noise (and study ids), same class layout.
        self.offset = {"train": 0, "val": 1000, "test": 2000}.get(split, 0)

    def __len__(self) -> int:
        return self.n

    @property
    def labels(self) -> list[int]:
        """Class of every item without building it (what ``train.class_balance`` reads)."""
        return [i % self.n_classes for i in range(self.n)]

    @property
    def protocols(self) -> list[tuple[int, ...]]:
        """Channels each item has (``missing_every`` drops channel 0), as ``CohortDataset.protocols``."""
        every = self.missing_every
        full = tuple(range(self.channels))
        return [full[1:] if every and i % every == every - 1 else full for i in range(self.n)]

    def __getitem__(self, i: int) -> dict[str, Any]:
        g = torch.Generator().manual_seed(self.seed * 100003 + self.offset + i)
        c = i % self.n_classes
        img = 0.1 * torch.randn(self.channels, *self.shape, generator=g)  # (C, D, H, W)
        d, h, w = self.shape
        s = max(2, h // 4)
        y0 = (c * (h - s)) // max(1, self.n_classes - 1)
        img[c % self.channels, d // 4 : d // 4 + max(1, d // 2), y0 : y0 + s, w // 4 : w // 4 + s] += 1.0
        seq_mask = torch.ones(self.channels, dtype=torch.bool)
        if self.missing_every and i % self.missing_every == self.missing_every - 1:
            seq_mask[0] = False
            img[0] = 0
        sid = f"{self.split}-{self.offset + i:04d}"
        return {"image": img, "sequence_mask": seq_mask, "text": self.REPORTS[c % len(self.REPORTS)],
                "label": c, "study_id": sid, "patient_id": f"p{sid}"}
