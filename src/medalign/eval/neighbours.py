"""The neighbour readout: a study's class from the training studies nearest to it in the image space.

Zero-shot reads a study through prompts; this reads it through the labelled studies the run was trained
on (a k-nearest-neighbour classifier on frozen embeddings, as DINO and CLIP-probe papers evaluate them).
A study is compared only with training studies that have the same sequences, each embedded with those
sequences alone, so a FLAIR-only clinical study meets the training FLAIRs, not whole studies. The bank
of training embeddings per sequence set is computed once per checkpoint and kept beside the run
(``RUN/neighbours/<model id>/<sequences>.npz``), written atomically under a lock so that concurrent
callers neither lose nor half-read it.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medalign.errors import MedAlignError
from medalign.eval.retrieval import cosine_similarity, top_k
from medalign.utils import atomic_path, file_lock, sha256_file

_LOG = logging.getLogger(__name__)


def neighbour_vote(query: np.ndarray, bank: np.ndarray, bank_labels: Sequence[str], classes: Sequence[str], *,
                   k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each query's ``k`` nearest bank rows by cosine: the class shares among them (N, C), the call (N,)
    (the class most of them hold; a tie goes to the tied class whose nearest member is nearer) and the
    rows (N, k), nearest first."""
    if k < 1:
        raise MedAlignError(f"k must be >= 1, got {k}")
    if len(bank) == 0:
        raise MedAlignError("the neighbour bank is empty")
    index = {c: j for j, c in enumerate(classes)}
    unknown = sorted({str(y) for y in bank_labels} - set(index))
    if unknown:
        raise MedAlignError(f"neighbour bank labels {unknown} are not among the classes {list(classes)}")
    sim = cosine_similarity(np.asarray(query, dtype=np.float64), np.asarray(bank, dtype=np.float64))  # (N, M)
    top = top_k(sim, k)  # (N, k)
    k = top.shape[1]  # at most the bank's size
    lab = np.array([index[y] for y in bank_labels])  # (M,)
    n, c = len(top), len(classes)
    counts = np.zeros((n, c))
    np.add.at(counts, (np.repeat(np.arange(n), k), lab[top].ravel()), 1.0)
    first = np.full((n, c), k)  # each class's first rank among the k (k: absent)
    for r in range(k - 1, -1, -1):
        first[np.arange(n), lab[top[:, r]]] = r
    tied = counts == counts.max(axis=1, keepdims=True)  # (N, C)
    calls = np.where(tied, first, k + 1).argmin(axis=1)  # (N,)
    return counts / k, calls, top


def bank_path(run_dir: Path, model_id: str, sequences: Sequence[str], mirror: bool = False) -> Path:
    """Where the bank of one checkpoint, sequence set and mirroring lives (mirrored banks beside the plain ones, so
    readers of either kind never rebuild each other's)."""
    return Path(run_dir) / "neighbours" / model_id / f"{'+'.join(sequences)}{'.mirror' if mirror else ''}.npz"


def bank_manifest(model: Any, manifest: str | Path | None = None) -> Path:
    """The labelled manifest whose studies vote: ``manifest``, else the run's ``data.manifest``."""
    manifest = manifest or (model.config.get("data") or {}).get("manifest")
    if not manifest:
        raise MedAlignError(f"run {model.run_dir} records no data.manifest: give the training manifest (--bank)")
    if not Path(manifest).is_file():
        raise MedAlignError(f"{manifest}: the training manifest is not there (moved?): give it with --bank")
    return Path(manifest).resolve()


def training_studies(model: Any, manifest: Path, split: str = "train") -> list[dict]:
    """[{study_id, label, files {sequence: path}}] of ``split`` of ``manifest``, the sequences the model
    reads only."""
    from medalign.data.manifest import image_column, load_manifest

    df = load_manifest(manifest, check_files=False)
    if "label" not in df.columns:
        raise MedAlignError(f"{manifest}: no label column, so its studies cannot vote")
    df = df[df["split"] == split] if "split" in df.columns else df
    out = []
    for _, row in df.iterrows():
        files = {s: str(row[image_column(s)]) for s in model.sequences
                 if image_column(s) in df.columns and isinstance(row[image_column(s)], str) and row[image_column(s)]}
        if files and isinstance(row["label"], str) and row["label"]:
            out.append({"study_id": str(row["study_id"]), "label": row["label"], "files": files})
    if not out:
        raise MedAlignError(f"{manifest}: no labelled '{split}' study with any of {list(model.sequences)}")
    return out


def load_bank(model: Any, sequences: Sequence[str], *, manifest: str | Path | None = None,
              split: str = "train", mirror: bool = False) -> dict[str, Any]:
    """{embeddings (M, E), labels, study_ids} of the training studies that have every one of ``sequences``,
    each embedded with those alone (``mirror``: as the mean with its left-right mirror, as the studies read);
    computed once per checkpoint, sequence set, mirroring and manifest content, and kept beside the run (another
    manifest, or an edited one, builds afresh)."""
    sequences = tuple(sequences)
    source = bank_manifest(model, manifest)
    key = {"source": str(source), "source_sha256": sha256_file(source), "split": split, "mirror": bool(mirror)}
    path = bank_path(model.run_dir, model.model_id, sequences, mirror)
    with file_lock(path.with_suffix(".lock"), what="the neighbour bank"):
        if path.is_file():
            got = _read(path)
            if all(got.get(k) == v for k, v in key.items()):
                return got
        studies = [s for s in training_studies(model, source, split) if all(q in s["files"] for q in sequences)]
        if not studies:
            raise MedAlignError(f"no '{split}' study of the training manifest has {'+'.join(sequences)}: "
                                "nothing to compare a study with these sequences to")
        _LOG.info("embedding %d training studies (%s) for the neighbour readout; kept at %s",
                  len(studies), "+".join(sequences), path)
        # in chunks: encode_image preprocesses its whole list before encoding, and a bank may hold thousands
        emb = np.concatenate([model.encode_image([{q: s["files"][q] for q in sequences} for s in studies[i:i + 64]],
                                                 mirror=mirror)
                              for i in range(0, len(studies), 64)])  # (M, E)
        meta = {"labels": [s["label"] for s in studies], "study_ids": [s["study_id"] for s in studies], **key}
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez(tmp, embeddings=emb, meta=np.array(json.dumps(meta)))
        return {"embeddings": emb, **meta}


def _read(path: Path) -> dict[str, Any]:
    with np.load(path) as z:  # banks kept before readout.mirror existed are unmirrored
        return {"embeddings": z["embeddings"], "mirror": False, **json.loads(str(z["meta"]))}
