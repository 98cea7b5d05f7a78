"""Throughput helpers for the retrieval service: a micro-batching, caching text encoder and a
bounded admission gate for image uploads. Free of FastAPI (plain threads), so tested alone.

Why: a text query spends most of its time in the text encoder, and one encoder call on 16
queries costs little more than on one. Concurrent requests therefore hand their text to one
worker thread, which waits ``window_s`` for company and encodes the batch at once. A query seen
before is answered from an LRU cache without touching the model. Uploads preprocess a whole
volume (seconds); they run in at most ``max_running`` threads, at most ``max_waiting`` more
queue, and the rest get a "busy" error at once, so they never hold every worker thread while
text queries wait behind them.
"""
from __future__ import annotations

import queue
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np

from medalign.errors import MedAlignError


class LRUCache:
    """A thread-safe least-recently-used map (at most ``size`` entries; ``size`` <= 0 keeps nothing).

    Used for query text -> embedding (values are numpy arrays, made read-only: they are shared
    between requests) and for overlay key -> (PNG bytes, info)."""

    def __init__(self, size: int) -> None:
        self.size = int(size)
        self._d: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: str) -> Any:
        with self._lock:
            v = self._d.get(key)
            if v is None:
                self.misses += 1
                return None
            self._d.move_to_end(key)
            self.hits += 1
            return v

    def put(self, key: str, value: Any) -> None:
        if self.size <= 0:
            return
        if isinstance(value, np.ndarray):
            value.setflags(write=False)  # shared between requests: nobody may change it
        with self._lock:
            self._d[key] = value
            self._d.move_to_end(key)
            while len(self._d) > self.size:
                self._d.popitem(last=False)

    def __len__(self) -> int:
        return len(self._d)


class BatchingTextEncoder:
    """``encode(text) -> (E,)``: cache first, else batched with concurrent callers into one
    ``encode_batch(list[str]) -> (B, E)`` call on a single worker thread (so the text encoder is
    only ever run by that thread)."""

    def __init__(self, encode_batch: Callable[[list[str]], np.ndarray], *, window_s: float = 0.002,
                 max_batch: int = 64, cache_size: int = 4096) -> None:
        self.encode_batch, self.window_s, self.max_batch = encode_batch, float(window_s), int(max_batch)
        self.cache = LRUCache(cache_size)
        self._q: queue.Queue[tuple[str, Future]] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.batches = 0  # encoder calls made (tests and the benchmark read it)

    def _submit(self, text: str) -> np.ndarray | Future:
        """The cached embedding, or a Future the batching worker will fill."""
        hit = self.cache.get(text)
        if hit is not None:
            return hit
        fut: Future = Future()
        self._ensure_worker()
        self._q.put((text, fut))
        return fut

    def encode(self, text: str, timeout: float = 60.0) -> np.ndarray:
        got = self._submit(text)
        return got.result(timeout=timeout) if isinstance(got, Future) else got

    async def encode_async(self, text: str, timeout: float = 60.0) -> np.ndarray:
        """:meth:`encode` for ``async`` routes: awaits the batch without holding a worker thread."""
        import asyncio

        got = self._submit(text)
        return await asyncio.wait_for(asyncio.wrap_future(got), timeout) if isinstance(got, Future) else got

    def _ensure_worker(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            with self._start_lock:
                if self._worker is None or not self._worker.is_alive():
                    self._worker = threading.Thread(target=self._run, name="medalign-text-batcher", daemon=True)
                    self._worker.start()

    def _collect(self) -> list[tuple[str, Future]]:
        """One queued request (blocking), then whatever else arrives within the window."""
        batch = [self._q.get()]
        deadline = time.monotonic() + self.window_s
        while len(batch) < self.max_batch:
            left = deadline - time.monotonic()
            try:
                batch.append(self._q.get(timeout=left) if left > 0 else self._q.get_nowait())
            except queue.Empty:
                break
        return batch

    def _run(self) -> None:
        while True:
            batch = self._collect()
            texts = list(dict.fromkeys(t for t, _ in batch))  # unique, in arrival order
            try:
                vecs = np.asarray(self.encode_batch(texts), dtype=np.float32).reshape(len(texts), -1)  # (B, E)
                self.batches += 1
            except BaseException as e:  # hand the failure to every waiting request, keep serving
                for _, fut in batch:
                    fut.set_exception(e)
                continue
            by_text = {t: vecs[i].copy() for i, t in enumerate(texts)}
            for t, v in by_text.items():
                self.cache.put(t, v)
            for t, fut in batch:
                fut.set_result(by_text[t])


class UploadGate:
    """At most ``max_running`` uploads preprocess at once and ``max_waiting`` wait; more are refused."""

    def __init__(self, max_running: int = 1, max_waiting: int = 4) -> None:
        if max_running < 1 or max_waiting < 0:
            raise MedAlignError("upload limits: max_running >= 1 and max_waiting >= 0")
        self._slots = threading.BoundedSemaphore(max_running)
        self._lock = threading.Lock()
        self.limit = max_running + max_waiting
        self.admitted = 0

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Run the body in an upload slot; raises :class:`ServerBusy` when the queue is full."""
        with self._lock:
            if self.admitted >= self.limit:
                raise ServerBusy(f"{self.admitted} uploads are already being processed or waiting; retry shortly")
            self.admitted += 1
        try:
            with self._slots:
                yield
        finally:
            with self._lock:
                self.admitted -= 1


class ServerBusy(MedAlignError):
    """Too many uploads in flight (the route answers 503 with Retry-After)."""
