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
def atomic_path(path: str | os.PathLike, suffix: str | None = None, *, private: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``.

    On any exception the temporary file is removed, so a reader never sees half a file.
    ``suffix`` keeps the extension for writers that insist on one (np.save, safetensors).
    The file gets the user's umask (as ``open`` would), or stays 0600 with ``private=True``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes the file 0600; give it the mode a plain open() would (0666 minus the
        # umask) so a report or an index can be shared. Secrets are written with private=True.
        if not private and tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process umask (read by setting and restoring it: there is no getter before Python 3.13's os)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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


def atomic_write_text(path: str | os.PathLike, text: str, *, private: bool = False) -> None:
    with atomic_path(path, private=private) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: str | os.PathLike, obj: Any, *, private: bool = False) -> None:
    """``private=True`` keeps the file 0600 (secrets: a pseudonym key and mapping)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n", private=private)


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


# ---- display convention ------------------------------------------------------------------------
DISPLAY_CONVENTIONS = ("radiological", "neurological")
DISPLAY_ENV = "MEDALIGN_DISPLAY"


def display_convention(convention: str | None = None) -> str:
    """The display convention: ``convention``, else ``$MEDALIGN_DISPLAY``, else radiological.

    Radiological (PACS default): the patient's right on the viewer's left; neurological: the
    patient's right on the viewer's right. Anterior is always up.
    """
    from medalign.errors import MedAlignError

    c = (convention or os.environ.get(DISPLAY_ENV) or "radiological").strip().lower()
    if c not in DISPLAY_CONVENTIONS:
        raise MedAlignError(f"display convention '{c}' ({DISPLAY_ENV}): use radiological or neurological")
    return c


def axial_for_display(slice2d: Any, orientation: str, convention: str | None = None) -> Any:
    """An axial slice (H, W) -> the array to show, row 0 at the top: anterior up, and the patient's
    right on the viewer's left (radiological) or right (neurological).

    ``orientation`` is the volume's 3-letter code in the DICOM "points towards" sense used by
    ``data.imaging.canonical_direction`` and nibabel's ``aff2axcodes``: letter 0 says where the
    column axis W runs (L/R), letter 1 where the row axis H runs (A/P). The same call must be used
    for every overlay (mask, heat map) of the slice, so that they stay registered.
    """
    import numpy as np

    from medalign.errors import MedAlignError

    code = str(orientation).upper()
    if len(code) < 2 or code[0] not in "LR" or code[1] not in "AP":
        raise MedAlignError(f"orientation '{orientation}': an axial display needs a code like RAS, LPS or LAS")
    a = np.asarray(slice2d)
    if code[1] == "A":  # rows run posterior -> anterior: flip so anterior is row 0
        a = a[::-1, :]
    # Columns must run towards the patient's left (radiological) or right (neurological).
    want = "L" if display_convention(convention) == "radiological" else "R"
    if code[0] != want:
        a = a[:, ::-1]
    return np.ascontiguousarray(a)


def side_labels(convention: str | None = None) -> tuple[str, str]:
    """(marker at the viewer's left, marker at the viewer's right): ("R", "L") when radiological."""
    return ("R", "L") if display_convention(convention) == "radiological" else ("L", "R")


def mark_axes(ax: Any, sequence: str | None = None, convention: str | None = None, *, fontsize: float = 7) -> None:
    """Put the L/R markers at the mid-height edges and the sequence name at the top of a matplotlib panel."""
    left, right = side_labels(convention)
    box = {"facecolor": "black", "edgecolor": "none", "pad": 0.6, "alpha": 0.6}
    for x, s, ha in ((0.02, left, "left"), (0.98, right, "right")):
        ax.text(x, 0.5, s, transform=ax.transAxes, ha=ha, va="center", color="yellow", fontsize=fontsize,
                fontweight="bold", bbox=box)
    if sequence:
        ax.text(0.5, 0.98, str(sequence), transform=ax.transAxes, ha="center", va="top", color="white",
                fontsize=fontsize, bbox=box)


def mark_image(image: Any, sequence: str | None = None, convention: str | None = None) -> Any:
    """PIL image (already oriented by :func:`axial_for_display`) -> an RGB copy with the L/R markers
    at the mid-height edges and the sequence name at the top-left corner."""
    from PIL import ImageDraw, ImageFont

    img = image.convert("RGB")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    left, right = side_labels(convention)
    w, h = img.size
    for s, x in ((left, 1), (right, None)):
        box = draw.textbbox((0, 0), s, font=font)
        tw, th = box[2] - box[0], box[3] - box[1]
        xx = w - tw - 2 if x is None else x
        yy = (h - th) // 2
        draw.rectangle((xx - 1, yy - 1, xx + tw + 1, yy + th + 3), fill=(0, 0, 0))
        draw.text((xx, yy - box[1]), s, fill=(255, 255, 0), font=font)
    if sequence:
        box = draw.textbbox((0, 0), str(sequence), font=font)
        draw.rectangle((0, 0, box[2] - box[0] + 3, box[3] - box[1] + 3), fill=(0, 0, 0))
        draw.text((1, 1 - box[1]), str(sequence), fill=(255, 255, 255), font=font)
    return img
