"""On-disk case index: embeddings, FAISS indices, metadata and thumbnails.

Layout of an index directory::

    INDEX_DIR/
      CURRENT                 name of the live version folder, e.g. "v0002" (replaced atomically)
      .lock                   held by writers from reading the live version to replacing CURRENT
      thumbs/<h>/<seq>-<c>.png  mid-axial thumbnails; <h> = sha256(study_id)[:16] (never a user
                              path), <c> = hash of the PNG bytes: never rewritten in place
      v0002/
        meta.json             model_id, preprocess_config, sequences, dim, counts, index kinds
        records.parquet       study_id, report, label, split, thumbs (JSON {seq: relative path})
        records.json          the same rows as JSON (human-readable)
        image_embed.npy       (N_img, E) float32, L2-normalised
        image_rows.npy        (N_img,) int64: row in records of each image vector
        text_embed.npy        (N_txt, E) float32 (studies with a report only)
        text_rows.npy         (N_txt,) int64
        image.faiss text.faiss

A writer builds a new version folder completely and then replaces ``CURRENT`` with
``os.replace``, so a reader never sees a half-written index; old versions are then removed.
Patient ids are deliberately not stored: the service never needs them.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from medalign.errors import MedAlignError
from medalign.index.faiss_index import EXACT_MAX, VectorIndex, choose_kind, l2_normalise

FORMAT_VERSION = 1
LOCK = ".lock"  # writers' lock file (medalign.utils.file_lock)
STUDY_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


@runtime_checkable
class EmbeddingModel(Protocol):
    """What the index and the server need from a model (``medalign.api.MedAlignModel`` fits)."""

    model_id: str
    sequences: Sequence[str]

    def encode_text(self, texts: list[str]) -> np.ndarray: ...

    def encode_image(self, x: Any, sequence_mask: Any = None) -> np.ndarray: ...


def valid_study_id(study_id: str) -> bool:
    """Strict id check: letters, digits, ``_ . -``; no slashes, no ``..``."""
    return bool(STUDY_ID_RE.match(study_id)) and ".." not in study_id


def thumb_relpath(study_id: str, sequence: str, content: str = "") -> str:
    """Index-relative thumbnail path; ``content`` (a hash of the PNG) makes it content-addressed."""
    from medalign.utils import sha256_text

    return f"thumbs/{sha256_text(study_id)[:16]}/{sequence}{'-' + content if content else ''}.png"


@dataclass
class IndexStore:
    """A loaded, read-only version of an index directory."""

    root: Path
    version: str
    meta: dict
    records: list[dict]
    image_embed: np.ndarray
    image_rows: np.ndarray
    text_embed: np.ndarray
    text_rows: np.ndarray
    image_index: VectorIndex
    text_index: VectorIndex

    # ---- loading -------------------------------------------------------------------------
    @classmethod
    def open(cls, root: str | Path) -> "IndexStore":
        """Load the live version. A writer removes old versions right after replacing ``CURRENT``,
        so a read that loses that race is retried on the new version (readers take no lock)."""
        root = Path(root)
        current = root / "CURRENT"
        if not current.is_file():
            raise MedAlignError(f"{root}: not a medalign index (no CURRENT file); run 'medalign index build'")
        for _ in range(10):
            version = current.read_text(encoding="utf-8").strip()
            try:
                return cls._open_version(root, version)
            except (OSError, RuntimeError, MedAlignError):
                if current.read_text(encoding="utf-8").strip() == version:
                    raise  # not a race: the version itself is broken
        return cls._open_version(root, current.read_text(encoding="utf-8").strip())

    @classmethod
    def _open_version(cls, root: Path, version: str) -> "IndexStore":
        current = root / "CURRENT"
        vdir = root / version
        if not re.fullmatch(r"v\d{4,}", version) or not vdir.is_dir():
            raise MedAlignError(f"{current}: names missing version folder '{version}'")
        meta = json.loads((vdir / "meta.json").read_text(encoding="utf-8"))
        if meta.get("format_version") != FORMAT_VERSION:
            raise MedAlignError(f"{vdir / 'meta.json'}: unsupported index format {meta.get('format_version')}")
        import pandas as pd

        df = pd.read_parquet(vdir / "records.parquet")
        records = []
        for r in df.to_dict(orient="records"):
            r["thumbs"] = json.loads(r.get("thumbs") or "{}")
            records.append(r)
        # the embeddings are memory-mapped read-only: the FAISS index holds its own copy for search,
        # so these pages are read only for study->study queries and appends, and server processes
        # opening the same version share them through the page cache (Linux keeps a mapped file
        # readable after a writer removes the old version folder)
        arrays = {n: np.load(vdir / f"{n}.npy", mmap_mode="r" if n.endswith("embed") else None)
                  for n in ("image_embed", "image_rows", "text_embed", "text_rows")}
        image_index = VectorIndex.load(vdir / "image.faiss", kind=meta["image_index"]["kind"],
                                       params=meta["image_index"]["params"])
        text_index = VectorIndex.load(vdir / "text.faiss", kind=meta["text_index"]["kind"],
                                      params=meta["text_index"]["params"])
        return cls(root=root, version=version, meta=meta, records=records, image_index=image_index,
                   text_index=text_index, **arrays)

    # ---- lookups -------------------------------------------------------------------------
    @property
    def model_id(self) -> str:
        return str(self.meta["model_id"])

    @property
    def study_ids(self) -> list[str]:
        return [r["study_id"] for r in self.records]

    def __post_init__(self) -> None:
        self._row_of = {r["study_id"]: i for i, r in enumerate(self.records)}
        self._img_pos = {int(row): i for i, row in enumerate(self.image_rows)}

    def __len__(self) -> int:
        return len(self.records)

    def row(self, study_id: str) -> int | None:
        """Row of ``study_id`` or None (ids not matching the strict pattern are never found)."""
        if not isinstance(study_id, str) or not valid_study_id(study_id):
            return None
        return self._row_of.get(study_id)

    def record(self, row: int) -> dict:
        return self.records[row]

    def image_vector(self, row: int) -> np.ndarray | None:
        pos = self._img_pos.get(row)
        return None if pos is None else self.image_embed[pos]

    def thumb_file(self, study_id: str, sequence: str) -> Path | None:
        """Absolute thumbnail path for a known study and sequence, else None."""
        row = self.row(study_id)
        if row is None:
            return None
        rel = self.records[row]["thumbs"].get(sequence)
        if not rel:
            return None
        path = (self.root / rel).resolve()
        if self.root.resolve() not in path.parents or not path.is_file():
            return None
        return path

    def check_model(self, model: Any) -> None:
        """Refuse a model other than the one that built the index."""
        mid = getattr(model, "model_id", None)
        if mid != self.model_id:
            raise MedAlignError(
                f"index {self.root} was built by model {self.model_id[:16]} but the query model is "
                f"{str(mid)[:16]}; rebuild the index with this model or serve it with the run that built it")

    # ---- search --------------------------------------------------------------------------
    def search(self, query: np.ndarray, k: int, *, target: str = "image",
               exclude_row: int | None = None) -> list[tuple[int, float]]:
        """Top-``k`` (row, cosine) over image or report embeddings, best first."""
        index, rows = (self.image_index, self.image_rows) if target == "image" else (self.text_index, self.text_rows)
        if index.ntotal == 0:
            return []
        extra = 1 if exclude_row is not None else 0
        scores, ids = index.search(np.asarray(query, dtype=np.float32).reshape(1, -1), k + extra)
        out: list[tuple[int, float]] = []
        for s, i in zip(scores[0], ids[0]):
            if i < 0:
                continue
            row = int(rows[i])
            if row == exclude_row:
                continue
            out.append((row, float(s)))
        return out[:k]


# ---- writing ------------------------------------------------------------------------------
def write_version(root: str | Path, *, meta: dict, records: list[dict], image_embed: np.ndarray,
                  image_rows: np.ndarray, text_embed: np.ndarray, text_rows: np.ndarray,
                  exact_max: int = EXACT_MAX, kind: str | None = None,
                  prev: IndexStore | None = None) -> Path:
    """Write a complete new version under ``root`` and make it current atomically.

    With ``prev`` given and the same index kind still right for the new size, the previous
    FAISS indices are extended in place of a rebuild (see :func:`_next_index`).
    """
    import pandas as pd

    from medalign.utils import atomic_write_json, atomic_write_text

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    existing = sorted(int(p.name[1:]) for p in root.glob("v[0-9]*") if p.name[1:].isdigit())
    version = f"v{(existing[-1] + 1) if existing else 1:04d}"
    tmp = root / f".{version}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        image_embed = l2_normalise(image_embed) if len(image_embed) else np.zeros((0, meta["dim"]), np.float32)
        text_embed = l2_normalise(text_embed) if len(text_embed) else np.zeros((0, meta["dim"]), np.float32)
        indices = {name: _next_index(getattr(prev, f"{name}_index", None) if prev is not None else None, emb,
                                     kind=kind, exact_max=exact_max, dim=meta["dim"])
                   for name, emb in (("image", image_embed), ("text", text_embed))}
        for name, vi in indices.items():
            vi.save(tmp / f"{name}.faiss")
        for n, a in (("image_embed", image_embed), ("image_rows", np.asarray(image_rows, np.int64)),
                     ("text_embed", text_embed), ("text_rows", np.asarray(text_rows, np.int64))):
            np.save(tmp / f"{n}.npy", a)
        rows = [{**r, "thumbs": json.dumps(r.get("thumbs") or {}, sort_keys=True)} for r in records]
        df = pd.DataFrame(rows, columns=["study_id", "report", "label", "split", "thumbs"])
        df.to_parquet(tmp / "records.parquet", index=False)
        atomic_write_json(tmp / "records.json", records)
        meta = {**meta, "format_version": FORMAT_VERSION, "n_studies": len(records),
                "n_image": int(len(image_embed)), "n_text": int(len(text_embed)),
                "image_index": {"kind": indices["image"].kind, "params": indices["image"].params},
                "text_index": {"kind": indices["text"].kind, "params": indices["text"].params}}
        atomic_write_json(tmp / "meta.json", meta)
        os.replace(tmp, root / version)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(root / "CURRENT", version + "\n")
    for old in existing:  # readers that opened an old version keep their loaded copy in memory
        shutil.rmtree(root / f"v{old:04d}", ignore_errors=True)
    return root / version


def _next_index(old: VectorIndex | None, emb: np.ndarray, *, kind: str | None, exact_max: int,
                dim: int) -> VectorIndex:
    """The FAISS index of a new version holding ``emb`` (N, E), normalised.

    Extends ``old`` (a copy; the live one keeps serving) when its kind is still the right one for
    N and an approximate index has not outgrown twice the size its cells were trained on; the
    recall is then measured again and ``nprobe``/``efSearch`` raised if it fell. Else a full build.
    """
    import faiss

    want = kind or ("hnsw" if old is not None and old.kind == "hnsw" else  # only ever on request: keep it
                    choose_kind(len(emb), exact_max=exact_max))
    n_old = old.ntotal if old is not None else 0
    grown = old is not None and len(emb) > 2 * int(old.params.get("n_trained", len(emb)))
    if old is not None and old.kind == want and n_old <= len(emb) and not grown:
        vi = VectorIndex(index=faiss.clone_index(old.index), kind=old.kind, dim=old.dim, params=dict(old.params))
        vi.apply_params()
        if len(emb) > n_old:
            vi.add(emb[n_old:])
            if vi.kind != "flat":
                vi.tune_recall(emb)
        return vi
    return VectorIndex.build(emb if len(emb) else np.zeros((0, dim), np.float32), kind=want, exact_max=exact_max)
