"""Image-omic cohorts in memory: whole-slide patch bags + gene expression + labels + splits.

``ImageOmicCohort.from_manifest`` reads a manifest of bags and expression tables (e.g. from
``medalign synth omics``); genes are standardised with train-split statistics only.
``BagOmicDataset`` is a map-style view of one split for the training loop; ``TensorDictDataset``
is the generic one for plain in-memory tensors (e.g. expression + label for a gene classifier).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import Tensor

from medalign.errors import CohortError


@dataclass
class ImageOmicCohort:
    """Bags (list of (N_i, D) float tensors), standardised expression (P, G), labels, splits."""

    study_ids: list[str]
    patient_ids: list[str]
    bags: list[Tensor]
    expression: Tensor
    labels: Tensor
    splits: np.ndarray
    classes: list[str]
    genes: list[str]
    gene_groups: dict[str, list[str]]

    @classmethod
    def from_manifest(cls, manifest: str | Path, *, max_patients: int | None = None) -> "ImageOmicCohort":
        """Read manifest.csv (study_id, patient_id, split, label, bag, omics) and everything it points to."""
        import pandas as pd

        from medalign.data.bags import load_bag
        from medalign.data.omics import ExpressionScaler

        manifest = Path(manifest)
        if not manifest.exists():
            raise CohortError("manifest not found", path=str(manifest))
        df = pd.read_csv(manifest, dtype={"study_id": str, "patient_id": str})
        for col in ("study_id", "patient_id", "split", "label", "bag", "omics"):
            if col not in df.columns:
                raise CohortError(f"missing column '{col}'", path=str(manifest))
        if max_patients:
            df = df.iloc[:max_patients]
        root = manifest.parent
        genes, x = _expression_rows(df, root)
        splits = df["split"].astype(str).to_numpy()
        if not (splits == "train").any():
            raise CohortError("no train rows (split column)", path=str(manifest))
        scaler = ExpressionScaler(log="auto").fit(x[splits == "train"])  # train statistics only
        classes = sorted(df["label"].astype(str).unique())
        labels = torch.tensor([classes.index(v) for v in df["label"].astype(str)])
        bags = [torch.from_numpy(np.array(load_bag(root / b, study_id=s))) for s, b in zip(df["study_id"], df["bag"])]
        groups_path = root / "gene_groups.json"
        groups = json.loads(groups_path.read_text()) if groups_path.exists() else {}
        return cls(df["study_id"].tolist(), df["patient_id"].tolist(), bags, torch.from_numpy(scaler.transform(x)),
                   labels, splits, classes, genes, groups)

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.splits == split)

    @property
    def in_dim(self) -> int:
        return int(self.bags[0].shape[1])


def _expression_rows(df: Any, root: Path) -> tuple[list[str], np.ndarray]:
    """(gene names, (P, G) float32 expression) for the manifest rows; each table is read once."""
    import pandas as pd

    expr_cache: dict[str, Any] = {}
    rows = []
    for _, r in df.iterrows():
        p = root / r["omics"]
        if str(p) not in expr_cache:
            expr_cache[str(p)] = pd.read_csv(p, index_col=0, dtype={0: str}) if p.exists() else None
        table = expr_cache[str(p)]
        if table is None:
            raise CohortError("expression file not found", study_id=r["study_id"], path=str(p))
        if r["patient_id"] not in table.index:
            raise CohortError(f"patient {r['patient_id']} not in expression table", study_id=r["study_id"],
                              path=str(p))
        rows.append(table.loc[r["patient_id"]].to_numpy(np.float32))
    return list(next(iter(expr_cache.values())).columns), np.stack(rows)


def iterate_minibatches(idx: np.ndarray, batch_size: int, *, rng: np.random.Generator | None) -> Iterator[np.ndarray]:
    """Shuffled (rng given) or ordered index batches."""
    idx = np.array(idx)
    if rng is not None:
        rng.shuffle(idx)
    for s in range(0, len(idx), batch_size):
        yield idx[s:s + batch_size]


def cohort_batch(cohort: ImageOmicCohort, idx: np.ndarray) -> dict[str, Any]:
    """The recipe's batch: bags as a list (variable N), expression (B, G), label (B,)."""
    return {"bags": [cohort.bags[i] for i in idx], "expression": cohort.expression[idx],
            "label": cohort.labels[idx], "study_id": [cohort.study_ids[i] for i in idx]}


class BagOmicDataset(torch.utils.data.Dataset):
    """Map-style view of one split of an ImageOmicCohort for the shared training loop."""

    def __init__(self, cohort: ImageOmicCohort, split: str | None) -> None:
        self.cohort = cohort
        self.idx = np.arange(len(cohort.study_ids)) if split is None else cohort.indices(split)

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, i: int) -> dict[str, Any]:
        j = int(self.idx[i])
        c = self.cohort
        return {"bag": c.bags[j], "expression": c.expression[j], "label": int(c.labels[j]), "study_id": c.study_ids[j]}
