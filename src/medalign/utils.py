"""Small shared helpers: atomic writes, inter-process locks, hashing, seeding, JSON."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``.

    On any exception the temporary file is removed, so a reader never sees half a file.
    ``suffix`` keeps the extension for writers that insist on one (np.save, safetensors).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, *, timeout: float = 600.0, what: str = "") -> Iterator[None]:
    """Hold an exclusive inter-process lock on ``path`` (a ``.lock`` file, via ``filelock``).

    Writers that read-modify-write a shared file (an index's ``CURRENT`` version, a cache's
    ``index.json``) hold it around the whole cycle, so two processes never both read the old
    state and the later writer silently drops the earlier one's work.
    """
    from filelock import FileLock, Timeout

    from medalign.errors import MedAlignError

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), timeout=timeout)
    try:
        lock.acquire()
    except Timeout:
        raise MedAlignError(f"{what or path.parent}: still locked by another process after {timeout:.0f}s "
                            f"(lock file {path})") from None
    try:
        yield
    finally:
        lock.release()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (torch only if already importable)."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover - torch is a hard dependency in practice
        pass


def display_window(image: Any, percentiles: tuple[float, float] = (1.0, 99.0)) -> Any:
    """An image (any shape) -> float32 in [0, 1] for display.

    The window is the percentiles of the non-zero voxels, and exact zeros stay 0. Why: after
    preprocessing, the background is exactly 0 while a z-scored head spans negative and positive
    values; a window over all voxels would paint the background mid-grey.
    """
    import numpy as np

    a = np.nan_to_num(np.asarray(image, dtype=np.float32))
    fg = a != 0
    vals = a[fg] if fg.any() else a.ravel()
    lo, hi = np.percentile(vals, percentiles) if vals.size else (0.0, 1.0)
    out = np.clip((a - float(lo)) / max(float(hi - lo), 1e-6), 0.0, 1.0).astype(np.float32)
    out[~fg] = 0.0
    return out
