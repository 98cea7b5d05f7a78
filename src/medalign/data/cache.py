"""Preprocessed-volume cache: one memory-mappable ``.npy`` per study, content-hashed, atomic.

Layout of ``cache_dir``::

    index.json               {"version", "config": PreprocessConfig, "entries": {study_id: entry}}
    .lock                    held while index.json / hashes.json are re-read, merged and replaced
    hashes.json              memo path -> [size, mtime_ns, sha256] (the cheap pre-key)
    studies/<key>.npy        float32 (C, D, H, W)
    studies/<key>.mask.npy   uint8 (D, H, W) lesion labels (only when the manifest has a mask)
    studies/<key>.json       the entry; written last, so its presence means "complete"

``key`` = sha256 of (cache version, the full ``PreprocessConfig``, the sha256 of the bytes of
every input file — each sequence, the mask; for a DICOM folder every file in it). File hashes
are memoised by (path, size, mtime_ns): an unchanged file is not read again, a touched one is
re-hashed, so the key always reflects content. Keys are computed in the calling process
before any worker starts, so a rerun over a complete cache starts no process pool. Every file is written to a temporary name and
renamed (``utils.atomic_path``), so an interrupted run leaves no half-written array; a rerun
skips studies whose ``<key>.json`` exists (resumable), recomputes the rest.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from medalign.data.imaging import PreprocessConfig, _present
from medalign.errors import CohortError, MedAlignError

CACHE_VERSION = 2
INDEX = "index.json"
HASHES = "hashes.json"
LOCK = ".lock"


# ------------------------------------------------------------------------------------ hashing
def _file_hash(path: str, memo: dict[str, list]) -> str:
    from medalign.utils import sha256_file

    st = os.stat(path)
    hit = memo.get(path)
    if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
        return hit[2]
    h = sha256_file(path)
    memo[path] = [st.st_size, st.st_mtime_ns, h]
    return h


def input_hash(path: str, memo: dict[str, list]) -> str:
    """sha256 of a file's bytes, or of (name, hash) of every file in a DICOM folder."""
    from medalign.utils import sha256_text

    p = Path(path)
    if p.is_dir():
        parts = [f"{f.relative_to(p)}:{_file_hash(str(f), memo)}" for f in sorted(p.rglob("*")) if f.is_file()]
        return sha256_text("\n".join(parts))
    return _file_hash(str(p), memo)


def study_key(inputs: Mapping[str, str | None], mask: str | None, cfg: PreprocessConfig,
              memo: dict[str, list]) -> str:
    from medalign.utils import sha256_text

    doc = {
        "version": CACHE_VERSION,
        "config": cfg.to_dict(),
        "inputs": {s: (input_hash(p, memo) if _present(p) else None) for s, p in sorted(inputs.items())},
        "mask": input_hash(mask, memo) if _present(mask) else None,
    }
    return sha256_text(json.dumps(doc, sort_keys=True))


# ------------------------------------------------------------------------------------- worker
def _job_key(job: dict[str, Any], cfg: PreprocessConfig, memo: dict[str, list]) -> str:
    sid = job["study_id"]
    for p in list(job["paths"].values()) + [job["mask"]]:
        if _present(p) and not Path(p).exists():
            raise CohortError("file not found", study_id=sid, path=str(p))
    try:
        return study_key(job["paths"], job["mask"], cfg, memo)
    except OSError as e:
        raise CohortError(f"cannot read file ({e.strerror})", study_id=sid, path=e.filename) from None


def _process_one(job: dict[str, Any]) -> dict[str, Any]:
    """Hash, skip-or-preprocess and write one study. Never raises: returns a status dict."""
    from medalign.data.imaging import preprocess_study
    from medalign.utils import atomic_path, atomic_write_json

    if job.get("single_thread"):
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    sid = job["study_id"]
    memo: dict[str, list] = dict(job["memo"])
    t0 = time.perf_counter()
    try:
        cfg = PreprocessConfig.from_dict(job["cfg"])
        key = job.get("key") or _job_key(job, cfg, memo)
        root = Path(job["cache_dir"])
        side = root / "studies" / f"{key}.json"
        if side.is_file():
            entry = json.loads(side.read_text(encoding="utf-8"))
            return {"study_id": sid, "status": "cached", "entry": entry, "memo": memo}
        res = preprocess_study(job["paths"], cfg, study_id=sid, mask_path=job["mask"])
        img_rel, mask_rel = f"studies/{key}.npy", None
        with atomic_path(root / img_rel, suffix=".npy") as tmp:
            np.save(tmp, np.ascontiguousarray(res.image, dtype=np.float32))
        if res.mask is not None:
            mask_rel = f"studies/{key}.mask.npy"
            with atomic_path(root / mask_rel, suffix=".npy") as tmp:
                np.save(tmp, np.ascontiguousarray(res.mask, dtype=np.uint8))
        entry = {
            "key": key,
            "study_id": sid,
            "image": img_rel,
            "mask": mask_rel,
            "sequences": list(cfg.sequences),
            "sequence_mask": [bool(b) for b in res.sequence_mask],
            "shape": list(res.image.shape),
            "inputs": {s: (str(p) if _present(p) else None) for s, p in job["paths"].items()},
            "info": res.info,
        }
        atomic_write_json(side, entry)  # last: marks the study complete
        return {"study_id": sid, "status": "done", "entry": entry, "memo": memo,
                "seconds": time.perf_counter() - t0}
    except MedAlignError as e:
        return {"study_id": sid, "status": "error", "error": str(e), "memo": memo}
    except Exception as e:  # unexpected: still one line naming the study
        return {"study_id": sid, "status": "error", "error": f"study {sid}: {type(e).__name__}: {e}", "memo": memo}


# ------------------------------------------------------------------------------------ workers
def _watch_parent(parent: int) -> None:
    """Worker initialiser: die with the parent, even when it was SIGKILLed (no cleanup ran)."""
    import signal
    import sys
    import threading

    if sys.platform.startswith("linux"):
        try:  # PR_SET_PDEATHSIG = 1: the kernel sends SIGTERM when the parent exits
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))
        except Exception:  # no libc / no prctl: the polling thread below still covers it
            pass

    def poll() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=poll, daemon=True, name="parent-watch").start()
    if os.getppid() != parent:  # the parent died before the prctl took effect
        os._exit(1)


def worker_pool(n: int):
    """A spawn-context process pool whose workers exit when this process dies."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(max_workers=n, mp_context=mp.get_context("spawn"),
                               initializer=_watch_parent, initargs=(os.getpid(),))


def stop_pool(ex: Any) -> None:
    """Cancel queued jobs and terminate running workers now (``shutdown`` alone waits for them)."""
    procs = list((getattr(ex, "_processes", None) or {}).values())  # no public handle on the workers
    ex.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=5)


# ------------------------------------------------------------------------------------ cohort
def _read_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default
    except json.JSONDecodeError as e:
        raise CohortError(f"corrupt cache file ({e})", path=str(path)) from None


def _check_version(index: Mapping[str, Any], path: Path) -> None:
    """Refuse a cache written by another preprocessing version (its arrays differ from what
    this version computes, e.g. version 1 blended skull-stripped edges into a dark rim)."""
    version = index.get("version", 1)
    if version != CACHE_VERSION:
        raise CohortError(f"cache was built by preprocessing version {version}, this medalign writes version "
                          f"{CACHE_VERSION} (README, 'Skull-stripped edges'); preprocess again into a new --cache "
                          "directory", path=str(path))


def _merge_into_disk(root: Path, cfg: PreprocessConfig, mine: dict[str, dict], memo: dict[str, list]) -> dict:
    """Merge this run's entries into index.json (and its hashes into hashes.json) under the lock.

    Another preprocess into the same cache may have written index.json since this run read it;
    replacing the file would drop that run's studies. Returns the merged entries.
    """
    from medalign.utils import atomic_write_json, file_lock

    with file_lock(root / LOCK, what=f"cache {root}"):
        disk = _read_json(root / INDEX, None) or {"version": CACHE_VERSION, "config": cfg.to_dict(), "entries": {}}
        if disk.get("config") != cfg.to_dict():
            raise CohortError("cache config changed under this run; use another --cache directory",
                              path=str(root / INDEX))
        disk.setdefault("entries", {}).update(mine)
        disk["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        atomic_write_json(root / INDEX, disk)
        atomic_write_json(root / HASHES, {**_read_json(root / HASHES, {}), **memo})
    return disk["entries"]


def preprocess_cohort(manifest: pd.DataFrame | str | Path, cfg: PreprocessConfig | Mapping | None,
                      cache_dir: str | Path, *, workers: int = 2, keep_going: bool = False,
                      progress: bool = True) -> dict[str, Any]:
    """Preprocess every study of ``manifest`` into ``cache_dir`` (skipping cached ones).

    ``workers`` > 1 uses a process pool. Without ``keep_going`` the first failing study stops
    the run with its :class:`CohortError` (studies finished so far stay cached); with it, all
    studies are tried and the summary lists the failures. Returns a summary dict.
    """
    from medalign.data.manifest import load_manifest, manifest_sequences
    from medalign.data.schema import image_column
    if cfg is None:
        cfg = PreprocessConfig()
    elif not isinstance(cfg, PreprocessConfig):
        cfg = PreprocessConfig.from_dict(cfg)
    df = load_manifest(manifest, check_files=not keep_going) if not isinstance(manifest, pd.DataFrame) else manifest
    root = Path(cache_dir)
    (root / "studies").mkdir(parents=True, exist_ok=True)
    index = _read_json(root / INDEX, None)
    if index is not None:
        _check_version(index, root / INDEX)
    if index is not None and index.get("config") != cfg.to_dict():
        diff = sorted(k for k in set(index.get("config", {})) | set(cfg.to_dict())
                      if index.get("config", {}).get(k) != cfg.to_dict().get(k))
        raise CohortError(f"cache was built with a different preprocess config (differs in {diff}); "
                          "use another --cache directory", path=str(root / INDEX))
    index = index or {"version": CACHE_VERSION, "config": cfg.to_dict(), "entries": {}}
    memo: dict[str, list] = _read_json(root / HASHES, {})

    seqs = manifest_sequences(df)
    jobs = []
    for _, row in df.iterrows():
        paths = {s: (str(row[image_column(s)]) if s in seqs and _present(row[image_column(s)]) else None)
                 for s in cfg.sequences}
        mask = str(row["mask"]) if "mask" in df.columns and _present(row["mask"]) else None
        files = [p for p in list(paths.values()) + [mask] if p]
        jobs.append({"study_id": str(row["study_id"]), "paths": paths, "mask": mask, "cfg": cfg.to_dict(),
                     "cache_dir": str(root), "memo": {p: memo[p] for p in files if p in memo},
                     "single_thread": workers > 1})

    t0 = time.perf_counter()
    counts = {"done": 0, "cached": 0, "error": 0}
    errors: list[dict[str, str]] = []
    last_write = [time.perf_counter()]

    mine: dict[str, dict] = {}  # entries this run produced or confirmed

    def flush() -> None:
        index["entries"] = _merge_into_disk(root, cfg, mine, memo)
        last_write[0] = time.perf_counter()

    def handle(res: dict[str, Any]) -> None:
        memo.update(res.get("memo", {}))
        counts[res["status"]] += 1
        if res["status"] == "error":
            errors.append({"study_id": res["study_id"], "error": res["error"]})
            if not keep_going:
                flush()
                raise CohortError(res["error"])
            return
        mine[res["study_id"]] = index["entries"][res["study_id"]] = {k: v for k, v in res["entry"].items()
                                                                    if k != "study_id"}
        if time.perf_counter() - last_write[0] > 5.0:
            flush()

    bar = _progress(len(jobs), progress)
    try:
        # Cheap pass in this process: hash inputs (memoised), take cached studies from disk,
        # so a rerun never starts a worker pool.
        todo = []
        for job in jobs:
            try:
                job["key"] = _job_key(job, cfg, memo)
            except CohortError as e:
                handle({"study_id": job["study_id"], "status": "error", "error": str(e)})
                bar.update(1)
                continue
            side = root / "studies" / f"{job['key']}.json"
            if side.is_file():
                handle({"study_id": job["study_id"], "status": "cached", "entry": json.loads(side.read_text(encoding="utf-8"))})
                bar.update(1)
            else:
                todo.append(job)
        jobs_run = todo
        if workers <= 1 or len(jobs_run) <= 1:
            for job in jobs_run:
                handle(_process_one(job))
                bar.update(1)
        else:
            from concurrent.futures import as_completed

            ex = worker_pool(min(workers, len(jobs_run)))
            try:
                futs = [ex.submit(_process_one, job) for job in jobs_run]
                for f in as_completed(futs):
                    handle(f.result())
                    bar.update(1)
            except BaseException:
                stop_pool(ex)  # Ctrl-C / error: do not wait for the running studies
                raise
            ex.shutdown(wait=True)
    finally:
        bar.close()
        flush()
    secs = time.perf_counter() - t0
    summary = {
        "cache_dir": str(root),
        "studies": len(jobs),
        "processed": counts["done"],
        "cached": counts["cached"],
        "failed": counts["error"],
        "errors": errors,
        "seconds": round(secs, 2),
        "studies_per_s": round(counts["done"] / secs, 3) if secs > 0 and counts["done"] else None,
    }
    return summary


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, on: bool):
    if not on:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc="preprocess", unit="study", dynamic_ncols=True)


# ------------------------------------------------------------------------------------- reading
# Settings that change what the network sees; a cache that differs in any of them feeds a model
# the wrong inputs without any error (e.g. z-scores to a model trained on [0, 1]-scaled volumes).
MODEL_INPUT_KEYS = ("sequences", "shape", "normalise")


def check_cache_matches(cache_config: Any, expected: Any, *, cache_dir: str | Path = "") -> None:
    """Raise :class:`MedAlignError` if a cache was built with other input settings than ``expected``.

    Both arguments: PreprocessConfig, dict or None (None or a missing key = unknown, not checked).
    """
    def as_dict(c: Any) -> dict:
        return {} if c is None else c.to_dict() if hasattr(c, "to_dict") else dict(c)

    def plain(v: Any) -> Any:
        return v if v is None or isinstance(v, str) else list(v)

    got, want = as_dict(cache_config), as_dict(expected)
    for key in MODEL_INPUT_KEYS:
        g, w = plain(got.get(key)), plain(want.get(key))
        if g is not None and w is not None and g != w:
            raise MedAlignError(f"cache {cache_dir} has {key}={g} but the model expects {w}; "
                                f"preprocess the cohort with the run's settings")


def recorded_preprocess(data_cfg: dict) -> dict | None:
    """The PreprocessConfig a training config's cohort cache was built with (or ``data.preprocess``)."""
    if data_cfg.get("preprocess"):
        return dict(data_cfg["preprocess"])
    cache_dir = data_cfg.get("cache_dir")
    if cache_dir:
        for name in ("config.json", "preprocess.json", "index.json"):
            p = Path(cache_dir) / name
            if p.is_file():
                try:
                    d = json.loads(p.read_text())
                except Exception:
                    continue
                for key in ("preprocess", "preprocess_config", "config"):
                    if isinstance(d.get(key), dict) and "sequences" in d[key]:
                        return d[key]
                if "sequences" in d and "shape" in d:
                    return d
    if data_cfg.get("kind", "cohort") == "cohort":
        return {"sequences": list(data_cfg["sequences"]), "shape": list(data_cfg["shape"])}
    return None


def preprocess_record(cfg: Any) -> dict:
    """PreprocessConfig dataclass / dict / None -> JSON-able dict (tuples as lists)."""
    import dataclasses

    if cfg is None:
        return {}
    if dataclasses.is_dataclass(cfg):
        cfg = dataclasses.asdict(cfg)
    elif not isinstance(cfg, dict):
        cfg = dict(getattr(cfg, "__dict__", {}))
    return json.loads(json.dumps(cfg, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))


class CohortCache:
    """Read side of the cache: ``load(study_id)`` gives memory-mapped arrays."""

    def __init__(self, cache_dir: str | Path) -> None:
        self.root = Path(cache_dir)
        index = _read_json(self.root / INDEX, None)
        if index is None:
            raise CohortError("no cache index here; run `medalign preprocess MANIFEST --cache DIR` first",
                              path=str(self.root / INDEX))
        _check_version(index, self.root / INDEX)
        self.index = index
        self.entries: dict[str, dict[str, Any]] = index.get("entries", {})
        self.config = PreprocessConfig.from_dict(index.get("config"))

    def study_ids(self) -> list[str]:
        return sorted(self.entries)

    def __contains__(self, study_id: object) -> bool:
        return study_id in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def entry(self, study_id: str) -> dict[str, Any]:
        try:
            return self.entries[study_id]
        except KeyError:
            raise CohortError("not in the cache; run `medalign preprocess` on its manifest",
                              study_id=study_id, path=str(self.root)) from None

    def load(self, study_id: str) -> dict[str, Any]:
        """dict(image=memmap float32 (C, D, H, W), sequence_mask=bool (C,), mask=memmap uint8 (D, H, W) | None)."""
        e = self.entry(study_id)
        img_path = self.root / e["image"]
        try:
            image = np.load(img_path, mmap_mode="r")
            mask = np.load(self.root / e["mask"], mmap_mode="r") if e.get("mask") else None
        except (OSError, ValueError) as err:
            raise CohortError(f"cached array unreadable ({err}); delete it and rerun preprocess",
                              study_id=study_id, path=str(img_path)) from None
        return {"image": image, "sequence_mask": np.asarray(e["sequence_mask"], bool), "mask": mask}
