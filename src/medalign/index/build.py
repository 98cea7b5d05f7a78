"""Build and extend a case index from a model and a manifest.

The model is any object with the :class:`medalign.index.store.EmbeddingModel` protocol
(``medalign.api.load(run)`` in practice, a small fake in tests). Images come from a
preprocessed cache (``cache.load(study_id)['image']``, (C, D, H, W)) when one is given, else the
manifest's NIfTI paths are handed to the model (which preprocesses them on the fly).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medalign.data.cache import check_cache_matches
from medalign.data.schema import IMAGE_PREFIX
from medalign.errors import CohortError, MedAlignError
from medalign.index.faiss_index import EXACT_MAX
from medalign.data.cache import preprocess_record
from medalign.index.store import LOCK, IndexStore, thumb_relpath, valid_study_id, write_version
from medalign.utils import file_lock

log = logging.getLogger(__name__)


# ---- manifest ------------------------------------------------------------------------------
def read_manifest(manifest: Any):
    """DataFrame or path -> DataFrame with absolute image paths (uses medalign.data when present)."""
    import pandas as pd

    if isinstance(manifest, pd.DataFrame):
        return manifest.reset_index(drop=True)
    path = Path(manifest)
    try:
        from medalign.data.manifest import load_manifest
    except ImportError:
        load_manifest = None
    if load_manifest is not None:
        return load_manifest(path).reset_index(drop=True)
    if not path.is_file():
        raise CohortError("manifest not found", path=str(path))
    df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, dtype=str, keep_default_na=False)
    for col in [c for c in df.columns if c.startswith(IMAGE_PREFIX)]:
        df[col] = [str((path.parent / v).resolve()) if isinstance(v, str) and v and not Path(v).is_absolute()
                   else v for v in df[col]]
    return df.reset_index(drop=True)


def _text(v: Any) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return ""
    return str(v)


def _image_paths(row: Any, sequences: Sequence[str]) -> dict[str, str]:
    out = {}
    for s in sequences:
        v = _text(row.get(IMAGE_PREFIX + s, ""))
        if v:
            out[s] = v
    return out


# ---- thumbnails ----------------------------------------------------------------------------
def _to_png(slice2d: np.ndarray, root: Path, study_id: str, sequence: str, size: int = 128, *,
            orientation: str = "RAS") -> str:
    """Write a thumbnail under its content hash; returns its path relative to ``root``.

    The slice is shown in the one display convention (``medalign.utils.axial_for_display``; its
    axes run as ``orientation`` says), with L/R markers and the sequence name.
    Why content-addressed: a rebuild or an add never rewrites a file the live version points
    at, so a served report can never sit next to an image written for another version.
    """
    import hashlib
    import io

    from PIL import Image

    from medalign.utils import atomic_write_bytes, axial_for_display, display_window, mark_image

    a = display_window(axial_for_display(slice2d, orientation))
    img = Image.fromarray((a * 255).astype(np.uint8), mode="L")
    scale = size / max(img.size)
    img = img.resize((max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale))), Image.BILINEAR)
    img = mark_image(img, sequence)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    data = buf.getvalue()
    rel = thumb_relpath(study_id, sequence, hashlib.sha256(data).hexdigest()[:16])
    if not (root / rel).is_file():  # same name = same bytes: an existing file is already right
        atomic_write_bytes(root / rel, data)
    return rel


def _mid_axial_from_nifti(path: str, study_id: str) -> np.ndarray:
    import nibabel as nib

    try:
        img = nib.load(path)
        data = np.asanyarray(img.dataobj)
    except Exception as e:  # nibabel raises many types for broken files
        raise CohortError(f"cannot read image for thumbnail: {e}", study_id=study_id, path=path) from None
    while data.ndim > 3:
        data = data[..., 0]  # first volume of a 4-D series
    if data.ndim != 3:
        raise CohortError(f"expected a 3-D volume, got shape {data.shape}", study_id=study_id, path=path)
    # Reorder the voxel axes to the closest of R, A, S (any stored order: RAS, LPS, LAS, sagittal),
    # so the middle z slice is axial and its axes run as "RAS" says; the display helper flips it.
    ornt = nib.orientations.io_orientation(img.affine)
    data = nib.orientations.apply_orientation(data, ornt)
    return np.ascontiguousarray(data[:, :, data.shape[2] // 2].T)  # (x, y) -> (y, x) = (H, W), code RAS


def make_thumbnails(root: Path, study_id: str, *, cached: dict | None, paths: dict[str, str],
                    sequences: Sequence[str], orientation: str = "RAS") -> dict[str, str]:
    """Write mid-axial PNGs per sequence; returns {sequence: path relative to root}.

    ``orientation``: the cache's canonical code (raw NIfTI files are reoriented to RAS here)."""
    out = {}
    if cached is not None:
        image = np.asarray(cached["image"])  # (C, D, H, W)
        mask = np.asarray(cached.get("sequence_mask", np.ones(image.shape[0], bool)))
        for c, seq in enumerate(sequences[: image.shape[0]]):
            if not bool(mask[c]):
                continue
            out[seq] = _to_png(image[c, image.shape[1] // 2], root, study_id, seq,  # (H, W) middle axial slice
                               orientation=orientation)
        return out
    for seq, p in paths.items():
        out[seq] = _to_png(_mid_axial_from_nifti(p, study_id), root, study_id, seq)
    return out


# ---- encoding ------------------------------------------------------------------------------
def _check_embedding(emb: Any, study_id: str) -> np.ndarray:
    emb = np.asarray(emb, dtype=np.float32).reshape(1, -1)  # (1, E)
    if not np.all(np.isfinite(emb)):
        raise CohortError("image embedding is not finite", study_id=study_id)
    return emb[0]


def _encode_image(model: Any, study_id: str, *, cached: dict | None, paths: dict[str, str]) -> np.ndarray:
    try:
        if cached is not None:
            import torch

            image = torch.from_numpy(np.array(cached["image"], dtype=np.float32))  # (C, D, H, W)
            smask = cached.get("sequence_mask")
            smask = None if smask is None else torch.as_tensor(np.asarray(smask, bool))  # (C,)
            emb = model.encode_image(image, sequence_mask=smask)
        else:
            if not paths:
                raise CohortError("no image paths for the model's sequences "
                                  f"({', '.join(model.sequences)})", study_id=study_id)
            emb = model.encode_image(paths)
    except MedAlignError:
        raise
    except Exception as e:
        raise CohortError(f"encoding the image failed: {type(e).__name__}: {e}", study_id=study_id) from None
    return _check_embedding(emb, study_id)


def _encode_cached(model: Any, batch: list[tuple[str, dict]]) -> list[np.ndarray]:
    """Cached studies of one shape, encoded as one batch (on CPU about 2.5x faster than one by
    one, and the same batches as ``medalign embed``); a failing batch is retried study by study
    so the error names its study."""
    try:
        images = np.stack([np.asarray(c["image"], dtype=np.float32) for _, c in batch])  # (B, C, D, H, W)
        masks = np.stack([np.ones(images.shape[1], bool) if c.get("sequence_mask") is None
                          else np.asarray(c["sequence_mask"], bool) for _, c in batch])  # (B, C)
        emb = np.asarray(model.encode_image(images, masks), dtype=np.float32).reshape(len(batch), -1)  # (B, E)
    except Exception:
        return [_encode_image(model, sid, cached=c, paths={}) for sid, c in batch]
    return [_check_embedding(e, sid) for (sid, _), e in zip(batch, emb)]


def encode_studies(model: Any, df: Any, root: Path, *, cache: Any = None, thumbnails: bool = True,
                   batch_text: int = 64, batch_image: int = 8, skip: set[str] | None = None) -> dict:
    """Encode every manifest row: records, image/text embeddings and thumbnails (cached studies
    ``batch_image`` at a time, those without a cache entry one by one from their files)."""
    if "study_id" not in df.columns:
        raise CohortError("manifest has no 'study_id' column")
    sequences = list(getattr(model, "sequences", None) or
                     [c[len(IMAGE_PREFIX):] for c in df.columns if c.startswith(IMAGE_PREFIX)])
    if cache is not None:  # a cache made for other inputs would silently feed the wrong channels
        check_cache_matches(getattr(cache, "config", None), getattr(model, "preprocess_config", None),
                            cache_dir=getattr(cache, "root", None) or getattr(cache, "cache_dir", "?"))
    seen: set[str] = set(skip or ())
    rows = df.to_dict(orient="records")
    for i, row in enumerate(rows, start=1):  # check every id before any (slow) encoding
        sid = _text(row.get("study_id"))
        if not valid_study_id(sid):
            raise CohortError("study id must match [A-Za-z0-9][A-Za-z0-9_.-]* (max 128, no '..')",
                              study_id=sid, row=i, column="study_id")
        if sid in seen:
            raise CohortError("duplicate study id (already in the index or the manifest)", study_id=sid, row=i)
        seen.add(sid)
    records, texts = [], []
    image_vecs: list[np.ndarray | None] = []
    pending: list[tuple[int, str, dict]] = []  # cached studies waiting for their batch: (row, id, arrays)

    def flush() -> None:
        if not pending:
            return
        for (j, _, _), e in zip(pending, _encode_cached(model, [(sid, c) for _, sid, c in pending])):
            image_vecs[j] = e
        pending.clear()

    for row in rows:
        sid = _text(row.get("study_id"))
        paths = _image_paths(row, sequences)
        cached = None
        if cache is not None:
            try:
                cached = cache.load(sid)
            except (CohortError, KeyError):
                if not paths:  # not cached and no NIfTI to fall back on
                    raise
                log.warning("a study is not in the cache; encoding its NIfTI files instead")
        if cached is None:
            image_vecs.append(_encode_image(model, sid, cached=None, paths=paths))
        else:
            if pending and np.shape(pending[0][2]["image"]) != np.shape(cached["image"]):
                flush()  # a batch holds one shape
            image_vecs.append(None)
            pending.append((len(image_vecs) - 1, sid, cached))
            if len(pending) == batch_image:
                flush()
        thumbs = (make_thumbnails(root, sid, cached=cached, paths=paths, sequences=sequences,
                                  orientation=str(getattr(getattr(cache, "config", None), "canonical", "RAS")))
                  if thumbnails else {})
        records.append({"study_id": sid, "report": _text(row.get("report")), "label": _text(row.get("label")),
                        "split": _text(row.get("split")), "thumbs": thumbs})
        texts.append(_text(row.get("report")))
    flush()
    text_idx = [j for j, t in enumerate(texts) if t.strip()]
    text_vecs = []
    encode = getattr(model, "encode_report", model.encode_text)  # reports as the model was trained on them
    for s in range(0, len(text_idx), batch_text):
        chunk = [texts[j] for j in text_idx[s: s + batch_text]]
        text_vecs.append(np.asarray(encode(chunk), dtype=np.float32).reshape(len(chunk), -1))  # (B, E)
    dim = image_vecs[0].shape[0] if image_vecs else 0
    return {"records": records,
            "image_embed": np.stack(image_vecs) if image_vecs else np.zeros((0, dim), np.float32),  # (N, E)
            "image_rows": np.arange(len(records), dtype=np.int64),
            "text_embed": np.concatenate(text_vecs) if text_vecs else np.zeros((0, dim), np.float32),  # (T, E)
            "text_rows": np.asarray(text_idx, dtype=np.int64)}


def _open_cache(cache: Any) -> Any:
    if cache is None or hasattr(cache, "load"):
        return cache
    from medalign.data.cache import CohortCache

    return CohortCache(cache)


def build_index(model: Any, manifest: Any, out_dir: str | Path, *, cache: Any = None, run_dir: str | None = None,
                thumbnails: bool = True, exact_max: int = EXACT_MAX, kind: str | None = None) -> dict:
    """Embed a manifest's studies and reports and write a new index at ``out_dir``.

    ``cache`` is a cache folder or an object with ``.load(study_id)``; ``run_dir`` is recorded so
    ``medalign serve`` can load the same model. Refuses to overwrite an index built by another model.
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    df = read_manifest(manifest)
    if (out / "CURRENT").is_file():
        old = IndexStore.open(out)
        old.check_model(model)
    enc = encode_studies(model, df, out, cache=_open_cache(cache), thumbnails=thumbnails)
    if not enc["records"]:
        raise CohortError("manifest has no studies", path=str(manifest) if not hasattr(manifest, "columns") else None)
    meta = _meta(model, enc["image_embed"].shape[1], run_dir)
    with file_lock(out / LOCK, what=f"index {out}"):  # encode unlocked (slow), commit under the lock
        if (out / "CURRENT").is_file():
            IndexStore.open(out).check_model(model)  # another writer may have committed meanwhile
        vdir = write_version(out, meta=meta, exact_max=exact_max, kind=kind, **enc)
    summary = {"index": str(out), "version": vdir.name, "n_studies": len(enc["records"]),
               "n_reports": int(len(enc["text_rows"])), "seconds": round(time.perf_counter() - t0, 3)}
    log.info("built index: %d studies, %d reports", summary["n_studies"], summary["n_reports"])
    return summary


def add_to_index(index_dir: str | Path, model: Any, manifest: Any, *, cache: Any = None,
                 thumbnails: bool = True, exact_max: int = EXACT_MAX) -> dict:
    """Append a manifest's studies to an existing index (same model required; new version, atomic)."""
    t0 = time.perf_counter()
    store = IndexStore.open(index_dir)
    store.check_model(model)
    df = read_manifest(manifest)
    enc = encode_studies(model, df, Path(index_dir), cache=_open_cache(cache), thumbnails=thumbnails,
                         skip=set(store.study_ids))
    dim = store.image_embed.shape[1]
    if enc["image_embed"].shape[0] and enc["image_embed"].shape[1] != dim:
        raise MedAlignError(f"embedding dim {enc['image_embed'].shape[1]} != index dim {dim}")
    root = Path(index_dir)
    # Encoding ran unlocked; the commit re-reads the live version under the lock, so a concurrent
    # add that committed meanwhile is extended, not overwritten (no lost studies).
    with file_lock(root / LOCK, what=f"index {root}"):
        live = IndexStore.open(root)
        if live.version != store.version:
            live.check_model(model)
            again = sorted(set(live.study_ids) & {r["study_id"] for r in enc["records"]})
            if again:
                raise CohortError(f"{len(again)} studies were added to the index by another run meanwhile "
                                  "(nothing written)", study_id=again[0])
        n0 = len(live.records)
        vdir = write_version(
            root, meta=live.meta, records=live.records + enc["records"],
            image_embed=np.concatenate([live.image_embed, enc["image_embed"]]),  # (N0+N, E)
            image_rows=np.concatenate([live.image_rows, enc["image_rows"] + n0]),
            text_embed=np.concatenate([live.text_embed, enc["text_embed"]]),  # (T0+T, E)
            text_rows=np.concatenate([live.text_rows, enc["text_rows"] + n0]),
            exact_max=exact_max, prev=live)
    return {"index": str(index_dir), "version": vdir.name, "added": len(enc["records"]),
            "n_studies": n0 + len(enc["records"]), "seconds": round(time.perf_counter() - t0, 3)}


def build_from_embeddings(model: Any, paths: Sequence[str | Path], out_dir: str | Path, *,
                          run_dir: str | None = None, exact_max: int = EXACT_MAX, kind: str | None = None) -> dict:
    """Merge ``medalign embed [--shard K/N]`` outputs (.npz) into a new index at ``out_dir``.

    Every file must come from ``model`` (its recorded model id) and no study may appear twice;
    the merged index has no thumbnails (they need the images; ``index add`` from a manifest makes
    them). Refuses to overwrite an index built by another model.
    """
    from medalign.train.embed import load_embeddings

    t0 = time.perf_counter()
    out = Path(out_dir)
    parts = []
    for p in paths:
        if not Path(p).is_file():
            raise CohortError("embeddings file not found", path=str(p))
        e = load_embeddings(p)
        if str(e.get("model_id", "")) != str(model.model_id):
            raise MedAlignError(f"{p}: embedded by model {str(e.get('model_id', ''))[:16] or '?'}, not "
                                f"{str(model.model_id)[:16]}; embed every shard with the same run")
        if len(e["study_id"]):
            parts.append(e)
    if not parts:
        raise CohortError("the embeddings files hold no studies")
    cat = {k: np.concatenate([e[k] for e in parts]) for k in ("study_id", "report", "label", "split",
                                                                "image_embed", "text_embed", "has_report")}
    ids = [str(x) for x in cat["study_id"]]
    seen: set[str] = set()
    for i, sid in enumerate(ids):
        if not valid_study_id(sid):
            raise CohortError("study id must match [A-Za-z0-9][A-Za-z0-9_.-]* (max 128, no '..')", study_id=sid)
        if sid in seen:
            raise CohortError("study appears in two embeddings files (overlapping shards?)", study_id=sid)
        seen.add(sid)
    records = [{"study_id": sid, "report": str(cat["report"][i]), "label": str(cat["label"][i]),
                "split": str(cat["split"][i]), "thumbs": {}} for i, sid in enumerate(ids)]
    text_rows = np.flatnonzero(cat["has_report"]).astype(np.int64)
    meta = _meta(model, cat["image_embed"].shape[1], run_dir)
    with file_lock(out / LOCK, what=f"index {out}"):
        if (out / "CURRENT").is_file():
            IndexStore.open(out).check_model(model)
        vdir = write_version(out, meta=meta, records=records, image_embed=cat["image_embed"],
                             image_rows=np.arange(len(ids), dtype=np.int64), text_embed=cat["text_embed"][text_rows],
                             text_rows=text_rows, exact_max=exact_max, kind=kind)
    return {"index": str(out), "version": vdir.name, "n_studies": len(ids), "n_reports": int(len(text_rows)),
            "files": len(paths), "seconds": round(time.perf_counter() - t0, 3)}


def _meta(model: Any, dim: int, run_dir: str | None) -> dict:
    import datetime

    return {"model_id": str(model.model_id), "preprocess_config": preprocess_record(getattr(model, "preprocess_config", None)),
            "sequences": list(getattr(model, "sequences", []) or []), "dim": int(dim),
            "run_dir": str(Path(run_dir).resolve()) if run_dir else None,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
