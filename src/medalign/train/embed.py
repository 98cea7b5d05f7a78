"""Embed every study of a manifest (images from the preprocessed cache, reports as text)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medalign.errors import CohortError


def embed_manifest(model, manifest, cache_dir: str | Path | None = None, *, split: str | None = None,
                   batch_size: int = 8, progress: bool = False,
                   shard: tuple[int, int] | None = None) -> dict[str, Any]:
    """Image and report embeddings of the studies of ``manifest`` (optionally one split, and with
    ``shard=(K, N)`` only the studies of shard K of N: see :mod:`medalign.data.shards`).

    ``model`` is a :class:`medalign.api.MedAlignModel`; ``cache_dir`` defaults to the run's cache.
    Returns dict(study_id (N,) str, patient_id (N,) str, label (N,) str ('' = none),
    label_index (N,) int (-1 = none), report (N,) str, split (N,) str, image_embed (N, E) float32,
    text_embed (N, E) float32 (zeros where there is no report), has_report (N,) bool).
    """
    import pandas as pd

    from medalign.data.cache import CohortCache, check_cache_matches
    from medalign.data.manifest import load_manifest
    from medalign.data.schema import CLASSES

    df = manifest if isinstance(manifest, pd.DataFrame) else load_manifest(manifest, check_files=False)
    if split is not None:
        if "split" not in df.columns:
            raise CohortError(f"manifest has no 'split' column, cannot select split '{split}'", column="split")
        df = df[df["split"].astype(str) == split]
        if len(df) == 0:
            raise CohortError(f"no studies in split '{split}'", column="split")
    if shard is not None:
        from medalign.data.shards import select_shard

        df = select_shard(df, shard)
    cache = CohortCache(cache_dir or model.cache_dir)
    # a cache made with another normalisation / shape / sequences gives wrong embeddings silently
    check_cache_matches(cache.config, getattr(model, "preprocess_config", None), cache_dir=cache.root)

    def col(name: str) -> list[str]:
        if name not in df.columns:
            return [""] * len(df)
        return ["" if (v is None or (isinstance(v, float) and np.isnan(v))) else str(v) for v in df[name].tolist()]

    ids = [str(s) for s in df["study_id"].tolist()]
    reports, labels = col("report"), col("label")
    images: list[np.ndarray] = []
    it = range(0, len(ids), batch_size)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="embed", unit="batch", dynamic_ncols=True)
    for i in it:
        chunk = ids[i : i + batch_size]
        arrs, masks = [], []
        for sid in chunk:
            s = cache.load(sid)
            arrs.append(np.asarray(s["image"], dtype=np.float32))
            masks.append(np.asarray(s["sequence_mask"], dtype=bool))
        images.append(model.encode_image(np.stack(arrs), np.stack(masks)))  # (b, E)
    image_embed = np.concatenate(images) if images else np.zeros((0, 0), np.float32)
    has_report = np.array([bool(r.strip()) for r in reports], dtype=bool)
    text_embed = np.zeros_like(image_embed)
    if has_report.any():
        idx = np.flatnonzero(has_report)
        for j in range(0, len(idx), 64):
            sel = idx[j : j + 64]
            # reports as the recipe saw them in training (e.g. the impression); plain encode_text otherwise
            encode = getattr(model, "encode_report", model.encode_text)
            text_embed[sel] = encode([reports[k] for k in sel])
    label_index = np.array([CLASSES.index(l) if l in CLASSES else -1 for l in labels], dtype=np.int64)
    return {
        "study_id": np.array(ids, dtype=str), "patient_id": np.array(col("patient_id"), dtype=str),
        "label": np.array(labels, dtype=str), "label_index": label_index, "report": np.array(reports, dtype=str),
        "split": np.array(col("split"), dtype=str), "image_embed": image_embed.astype(np.float32),
        "text_embed": text_embed.astype(np.float32), "has_report": has_report,
    }


def save_embeddings(emb: dict[str, Any], path: str | Path, *, model_id: str = "") -> Path:
    """Write an ``embed_manifest`` result as .npz (atomically); strings stay unicode arrays (no pickle)."""
    from medalign.utils import atomic_path

    path = Path(path)
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, model_id=np.array(model_id), **emb)
    return path


def load_embeddings(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
