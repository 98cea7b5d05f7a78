"""On-demand attention overlays for the service: where a text query points in one indexed study.

``POST /attention/{study_id}`` (routes.py) asks :meth:`AttentionOverlays.get` for a PNG: the query's
map (eval.query_attention: GLoRIA word attention averaged over the query's content words, or CLIP
Grad-CAM) over the study's most attended axial slice(s), in the one display convention with L/R
markers. The query travels in the request body, never in the URL, so no access log can hold it.

Where the study's image comes from: the index stores embeddings and mid-axial thumbnails only, not
volumes, so maps are drawn on the preprocessed cohort cache the index was built from: ``volumes``
(``create_app(volumes=...)``), else the model's run config ``data.cache_dir``. A cache made with
other preprocessing settings than the model's is refused at start (a map on other inputs would be
wrong); with no usable cache, or a study not in it, the route answers 404 and says why.

Caching: an LRU in memory keyed by sha256(model id, study, slices, query) holds the PNG bytes, so
a repeated request is a dictionary lookup; ``overlay_dir`` adds a disk tier (one ``<key>.png`` per
map, written atomically) that survives restarts. It is off by default: a file per query, even under
a hashed name, is a trace of what was searched.

Threads: a map runs the image and the text encoder, which are not guaranteed thread-safe; it holds
the image lock (as uploads do) and the text lock (which the query batcher holds around each batch).
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from medalign.errors import MedAlignError
from medalign.eval.query_attention import map_method, overlay_png, query_map
from medalign.serve.batching import LRUCache
from medalign.utils import atomic_write_bytes, sha256_text

log = logging.getLogger("medalign.serve")

MAX_OVERLAY_SLICES = 3


class OverlayUnavailable(MedAlignError):
    """No overlay for this request; ``status`` is the HTTP status the route answers (404 or 501)."""

    def __init__(self, message: str, status: int = 404) -> None:
        super().__init__(message)
        self.status = status


def render_overlay(model: Any, image: np.ndarray, sequence_mask: np.ndarray, text: str, *, orientation: str,
                   n_slices: int, prior: Any = None) -> tuple[bytes, dict]:
    """Compute one overlay (the slow part: a forward pass, or a forward and backward for Grad-CAM, and a
    matplotlib figure). Returns (PNG bytes, {method, slices})."""
    m = query_map(model.recipe, image, sequence_mask, text, prior=prior)
    title = ("attention of the query" if not m["method"].startswith("grad-cam") else "Grad-CAM of the query") + \
        (" x normative prior" if prior is not None else "")
    png, slices = overlay_png(image, m["map"], sequences=list(model.sequences), orientation=orientation,
                              n_slices=n_slices, title=title)
    return png, {"method": m["method"], "slices": slices}


class AttentionOverlays:
    """Overlay PNGs for (study, query) pairs of one model: computed on demand, cached (see module doc)."""

    def __init__(self, model: Any, *, volumes: str | Path | None = None, overlay_dir: str | Path | None = None,
                 cache_size: int = 256, image_lock: Any = None, text_lock: Any = None) -> None:
        self.model = model
        self.method = map_method(getattr(model, "recipe", None))
        self.memory = LRUCache(cache_size)  # key -> (PNG bytes, info)
        self.overlay_dir = Path(overlay_dir) if overlay_dir else None
        self.image_lock = image_lock if image_lock is not None else threading.Lock()
        self.text_lock = text_lock if text_lock is not None else threading.Lock()
        self.computed = 0  # overlays drawn (tests and the benchmark read it)
        root = volumes if volumes is not None else getattr(model, "cache_dir", None)
        self.volumes_dir = Path(root) if root else None
        self._cache: Any = None
        self._cache_mtime = 0.0
        self.unavailable = self._why_unavailable()
        self.prior = self._load_prior()

    def _load_prior(self) -> Any:
        """The run's normative prior (RUN/normative.npz, written by ``medalign localise``/``attend``), if any:
        maps are then the word attention x the study's anomaly (:mod:`medalign.eval.normative`)."""
        from medalign.eval.normative import FILE_NAME, NormativePrior

        path = Path(getattr(self.model, "run_dir", "") or "") / FILE_NAME
        if self.unavailable or not path.is_file():
            return None
        prior = NormativePrior.load(path)
        if tuple(prior.sequences) != tuple(self.model.sequences):
            log.warning("normative prior ignored: fitted on other sequences than the model's")
            return None
        return prior

    def _why_unavailable(self) -> str | None:
        """None when maps can be drawn, else the one-line reason (said in every 404/501)."""
        if self.method is None:
            return "this model gives no attention maps (needs GLoRIA word attention or a CLIP-style text side)"
        if self.volumes_dir is None:
            return ("no preprocessed volumes: the index holds embeddings and thumbnails only; start the server "
                    "with the cohort cache the index was built from")
        try:
            self._open_cache()
        except MedAlignError as e:  # the reason names server paths: the log gets it, clients do not
            log.error("attention overlays off: %s", e)
            return "no usable preprocessed volumes on this server (its log says why)"
        return None

    def _open_cache(self) -> Any:
        """The cohort cache, reopened when its index file changed (a cache grown by ``preprocess``)."""
        from medalign.data.cache import INDEX, CohortCache, check_cache_matches

        idx = self.volumes_dir / INDEX
        try:
            mtime = idx.stat().st_mtime
        except OSError:
            raise MedAlignError(f"no cohort cache at {self.volumes_dir}") from None
        if self._cache is None or mtime != self._cache_mtime:
            cache = CohortCache(self.volumes_dir)
            check_cache_matches(cache.config, getattr(self.model, "preprocess_config", None),
                                cache_dir=self.volumes_dir)
            self._cache, self._cache_mtime = cache, mtime
        return self._cache

    @property
    def available(self) -> bool:
        return self.unavailable is None

    def key(self, study_id: str, text: str, n_slices: int) -> str:
        prior = "prior" if self.prior is not None else "attention"  # a map with the prior is another map
        return sha256_text("\0".join((str(self.model.model_id), prior, study_id, str(int(n_slices)), text)))

    def _volume(self, study_id: str) -> tuple[np.ndarray, np.ndarray, str]:
        cache = self._open_cache()
        if study_id not in cache:
            raise OverlayUnavailable("study not in the preprocessed cohort cache: no volume to draw the map on")
        arr = cache.load(study_id)
        image = np.array(arr["image"], dtype=np.float32)  # (C, D, H, W), copied out of the memory map
        return image, np.asarray(arr["sequence_mask"], dtype=bool), str(cache.config.canonical)

    def get(self, study_id: str, text: str, n_slices: int = 1) -> tuple[bytes, dict]:
        """(PNG bytes, {method, slices, cache: "memory" | "disk" | "computed"}) of ``text`` over ``study_id``.

        Raises OverlayUnavailable (404: no volume; 501: the model draws no maps)."""
        if self.unavailable:
            raise OverlayUnavailable(self.unavailable, 501 if self.method is None else 404)
        n_slices = max(1, min(int(n_slices), MAX_OVERLAY_SLICES))
        key = self.key(study_id, text, n_slices)
        hit = self._cached(key)
        if hit is not None:
            return hit
        try:
            image, seq, orientation = self._volume(study_id)
        except OverlayUnavailable:
            raise
        except MedAlignError as e:  # cache gone or unreadable since start: say so without server paths
            log.error("attention overlay: a preprocessed volume under %s is unreadable (%s)", self.volumes_dir,
                      type(e).__name__)  # not the message: it names the study
            raise OverlayUnavailable("the preprocessed volume of this study could not be read") from None
        with self.image_lock, self.text_lock:  # order: image then text (uploads take only the first)
            hit = self._cached(key)  # a concurrent request for the same map may have drawn it meanwhile
            if hit is not None:
                return hit
            t0 = time.perf_counter()
            png, info = render_overlay(self.model, image, seq, text, orientation=orientation, n_slices=n_slices,
                                       prior=self.prior)
            self.computed += 1
            log.info("attention overlay drawn in %.0f ms", 1000 * (time.perf_counter() - t0))  # no id, no text
            self.memory.put(key, (png, info))  # inside the lock: a waiting twin request finds it
        if self.overlay_dir is not None:
            atomic_write_bytes(self.overlay_dir / f"{key}.png", png)
        return png, {**info, "cache": "computed"}

    def _cached(self, key: str) -> tuple[bytes, dict] | None:
        hit = self.memory.get(key)
        if hit is not None:
            return hit[0], {**hit[1], "cache": "memory"}
        if self.overlay_dir is not None:
            p = self.overlay_dir / f"{key}.png"
            if p.is_file():
                png, info = p.read_bytes(), {"method": self.method}  # the slices shown are not kept on disk
                self.memory.put(key, (png, info))
                return png, {**info, "cache": "disk"}
        return None
