"""What every route of the retrieval service shares: limits, the (hot-reloaded) index, the model,
the batching text encoder, the upload gate and the zero-shot class embeddings. Free of FastAPI,
so it can be imported (and tested) alone."""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medalign.data.schema import CLASSES
from medalign.errors import MedAlignError
from medalign.index.store import STUDY_ID_RE, IndexStore
from medalign.serve.attention import AttentionOverlays
from medalign.serve.batching import BatchingTextEncoder, UploadGate

log = logging.getLogger("medalign.serve")

STATIC_DIR = Path(__file__).with_name("static")
PROMPTS_FILE = Path(__file__).resolve().parents[1] / "eval" / "prompts.yaml"
MAX_FILE_BYTES = 64 << 20      # one uploaded NIfTI
MAX_REQUEST_BYTES = 256 << 20  # a whole upload request body
MAX_JSON_BYTES = 64 << 10      # any other request body (a text query is at most 2000 characters)
MAX_VOXELS = 64_000_000        # decoded volume size guard (gzip bombs)
MAX_K = 100
ID_PATTERN = STUDY_ID_RE.pattern

BUILTIN_PROMPTS: dict[str, list[str]] = {
    "infarct": ["acute infarct", "acute ischemic infarction with restricted diffusion"],
    "tumor": ["brain tumor", "intracranial mass lesion with surrounding edema"],
    "hemorrhage": ["intracranial hemorrhage", "acute intraparenchymal hematoma"],
    "normal": ["no acute intracranial abnormality", "normal MRI of the brain"],
    "others": ["chronic white matter changes", "other intracranial abnormality"],
}


def load_class_prompts(path: str | Path | None = None) -> dict[str, list[str]]:
    """Presence prompts per class from the eval prompts YAML (class: list | {presence: [...]})."""
    import yaml

    path = Path(path) if path else PROMPTS_FILE
    if not path.is_file():
        return dict(BUILTIN_PROMPTS)
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    out = {}
    for c in CLASSES:
        entry = raw.get(c)
        prompts = entry.get("presence") if isinstance(entry, dict) else entry
        out[c] = [str(p) for p in prompts] if prompts else list(BUILTIN_PROMPTS[c])
    return out


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def _unit(x: np.ndarray) -> np.ndarray:
    """L2-normalise along the last axis; the floor keeps an all-zero vector finite."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _logit_scale(model: Any) -> float:
    """The model's learned CLIP scale (``model.logit_scale`` or ``model.recipe.logit_scale``,
    a float, tensor or method returning one), else CLIP's initial 1/0.07; capped at 100."""
    for owner in (model, getattr(model, "recipe", None)):
        s = getattr(owner, "logit_scale", None) if owner is not None else None
        try:
            s = s() if callable(s) else s
            s = float(s.detach().cpu()) if hasattr(s, "detach") else (float(s) if s is not None else None)
        except Exception:
            s = None
        if s is not None and np.isfinite(s) and s > 0:
            return float(min(s, 100.0))
    return 1 / 0.07


def open_index(index: str | Path | IndexStore, model: Any = None) -> tuple[IndexStore, Any]:
    """The index store and its model (``medalign.api.load(meta['run_dir'])`` when not given).

    Raises MedAlignError if the index records no run to load, or the model did not build it.
    """
    store = index if isinstance(index, IndexStore) else IndexStore.open(index)
    if model is None:
        run_dir = store.meta.get("run_dir")
        if not run_dir:
            raise MedAlignError(f"index {store.root} records no run directory; pass --run RUN")
        from medalign.api import load

        model = load(run_dir)
    store.check_model(model)
    return store, model


@dataclass
class ServeState:
    """Shared by every route (held at ``app.state.serve``); build it with :meth:`build`.

    ``class_embed`` (K, E): per class, the unit mean of its unit prompt embeddings.
    ``sequences``: the model's input sequences; empty = unknown, any upload field is accepted.
    ``store``: the live index version. :meth:`current_store` notices (at most every
    ``reload_s`` seconds) that ``CURRENT`` names a newer version, loads it on a background thread
    and then swaps it in with one assignment: a request takes its store once, at its start, so
    in-flight requests finish on the version they began with.
    """

    store: IndexStore
    model: Any
    class_embed: np.ndarray
    scale: float
    sequences: list[str]
    text: BatchingTextEncoder
    uploads: UploadGate
    token: str | None = None
    max_file_bytes: int = MAX_FILE_BYTES
    reload_s: float = 1.0
    # encoders are not guaranteed thread-safe: text runs on the batcher's one thread only, images
    # under this lock (uploads.max_running > 1 only for models whose image encoder allows it)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # held by the text batcher around each batch, and by an attention overlay (which runs the text encoder too)
    text_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    overlays: Any = field(default=None, repr=False)  # attention.AttentionOverlays
    _checked: float = field(default=0.0, repr=False)
    _loading: threading.Thread | None = field(default=None, repr=False)
    reload_error: str | None = None

    @classmethod
    def build(cls, store: IndexStore, model: Any, *, token: str | None = None,
              max_file_bytes: int = MAX_FILE_BYTES, prompts_path: str | Path | None = None,
              batch_window_s: float = 0.002, cache_size: int = 4096, max_uploads: int = 1,
              max_waiting_uploads: int = 4, reload_s: float = 1.0, volumes: str | Path | None = None,
              overlay_dir: str | Path | None = None, overlay_cache_size: int = 256) -> ServeState:
        """Embed the zero-shot class prompts once; set up the text batcher, the upload gate and the
        attention overlays (``volumes``: the preprocessed cohort cache; default the run's ``data.cache_dir``)."""
        prompts = load_class_prompts(prompts_path)
        # (K, E): each class's (P, E) prompt embeddings, normalised, averaged, normalised again
        class_embed = np.stack([_unit(_unit(np.asarray(model.encode_text(prompts[c]), dtype=np.float32)).mean(0))
                                for c in CLASSES])
        sequences = list(getattr(model, "sequences", None) or store.meta.get("sequences") or [])
        text_lock = threading.Lock()

        def encode_batch(texts: list[str]) -> np.ndarray:
            with text_lock:
                return model.encode_text(texts)

        text = BatchingTextEncoder(encode_batch, window_s=batch_window_s, cache_size=cache_size)
        lock = threading.Lock() if max_uploads == 1 else _NoLock()
        # overlays take a real lock even when uploads run in parallel, so two maps are never drawn at once (a
        # Grad-CAM hook sees every forward pass of the encoder; an upload's may still interleave: that map is 503)
        overlays = AttentionOverlays(model, volumes=volumes, overlay_dir=overlay_dir, cache_size=overlay_cache_size,
                                     image_lock=lock if max_uploads == 1 else threading.Lock(), text_lock=text_lock)
        return cls(store, model, class_embed, _logit_scale(model), sequences, text,
                   UploadGate(max_uploads, max_waiting_uploads), token, max_file_bytes, reload_s, lock,
                   text_lock=text_lock, overlays=overlays)

    def encode_text(self, text: str) -> np.ndarray:
        """(E,) embedding of one query text (cached; batched with concurrent queries)."""
        return self.text.encode(text)

    async def encode_text_async(self, text: str) -> np.ndarray:
        """(E,) embedding of one query text, awaited on the event loop (no worker thread held)."""
        return await self.text.encode_async(text)

    def encode_image(self, paths: dict[str, str]) -> np.ndarray:
        """(E,) embedding of one study given as {sequence: NIfTI path}."""
        with self.lock:
            return np.asarray(self.model.encode_image(paths), dtype=np.float32).reshape(-1)  # (E,)

    def class_probs(self, vec: np.ndarray) -> np.ndarray:
        """(K,) zero-shot class probabilities of an image embedding: softmax of scaled cosines."""
        v = _unit(np.asarray(vec, dtype=np.float32).reshape(-1))  # (E,)
        return _softmax(self.scale * (self.class_embed @ v))  # (K,)

    # ---- hot reload ----------------------------------------------------------------------
    def current_store(self) -> IndexStore:
        """The live store; starts a background load when ``CURRENT`` has moved on (never blocks)."""
        now = time.monotonic()
        if self.reload_s >= 0 and now - self._checked >= self.reload_s:
            self._checked = now
            if self._loading is None or not self._loading.is_alive():
                if self._current_name() not in (None, self.store.version):
                    self._loading = threading.Thread(target=self.reload, name="medalign-index-reload", daemon=True)
                    self._loading.start()
        return self.store

    def _current_name(self) -> str | None:
        try:
            return (Path(self.store.root) / "CURRENT").read_text(encoding="utf-8").strip()
        except OSError:
            return None

    def reload(self) -> bool:
        """Load the version ``CURRENT`` names and swap it in if it is newer; True when swapped.

        A version built by another model, or one that fails to load, is logged and skipped: the
        server keeps answering from the version it has.
        """
        old = self.store
        try:
            new = IndexStore.open(old.root)
            if new.version == old.version:
                return False
            new.check_model(self.model)
        except (MedAlignError, OSError, RuntimeError, ValueError) as e:
            self.reload_error = str(e)
            log.error("index reload skipped, still serving %s: %s", old.version, e)
            return False
        self.store = new  # one reference assignment: requests that hold ``old`` finish on it
        self.reload_error = None
        log.info("index reloaded: %s -> %s (%d studies)", old.version, new.version, len(new))
        return True


class _NoLock:
    """Stands in for the image lock when several uploads may encode at once."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None
