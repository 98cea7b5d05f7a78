"""Latency of the service's attention overlay (``POST /attention/{study_id}``): the first request for a
(study, query) map, which draws it, and the repeats, which the in-memory cache answers.

    python benchmarks/attention_overlay.py                          # synthetic cohort, preset-sized models
    python benchmarks/attention_overlay.py --run runs/gloria_cpu --index index_gloria --studies 5

Without ``--run``: ``--n`` synthetic studies (3 sequences, a bright blob each) preprocessed to the CPU
presets' grid (16x112x112, no registration) and two models with the presets' architecture and random
weights (configs/gloria_cpu.yaml: word attention at local level 2; configs/brain_clip_cpu.yaml:
Grad-CAM), each with an index built from the cache. Latency does not depend on the weights' values.
The app is the real one (``create_app``), called in process (FastAPI TestClient: no network).
One CPU thread (torch and BLAS), as a small server would give a request. Nothing is asserted:
figures depend on the machine and its load. The first request of a process also loads the text
encoder; it is reported separately ("warm-up") and left out of the "first" figures.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
QUERIES = ["acute infarct in the left MCA territory with restricted diffusion",
           "large enhancing tumour with surrounding oedema", "acute haemorrhage in the right basal ganglia"]


def _synthetic_cohort(root: Path, n: int) -> tuple[Path, Path]:
    """n studies of 3 sequences (96x112x20 NIfTI, a bright blob) -> manifest, and its cache at 16x112x112."""
    import nibabel as nib
    import numpy as np
    import pandas as pd

    from medalign.data.cache import preprocess_cohort

    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        sid = f"B{i:03d}"
        head = np.zeros((96, 112, 20), np.float32)
        head[10:86, 10:102, 2:18] = 1.0
        x, y = rng.integers(20, 70), rng.integers(20, 80)
        row = {"study_id": sid, "patient_id": f"P{i}", "split": "test", "label": "infarct",
               "report": "Acute infarct with restricted diffusion."}
        for s in ("dwi", "t2s", "flair"):
            v = head + 0.05 * rng.standard_normal(head.shape).astype(np.float32)
            v[x:x + 12, y:y + 12, 6:12] += 2.0
            p = root / sid / f"{s}.nii.gz"
            p.parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(v, np.diag([2.0, 2.0, 6.0, 1.0])), str(p))
            row[f"image_{s}"] = str(p)
        rows.append(row)
    man = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(man, index=False)
    preprocess_cohort(man, {"sequences": ["dwi", "t2s", "flair"], "shape": [16, 112, 112], "register": False},
                      root / "cache", workers=1, progress=False)
    return man, root / "cache"


def _preset_model(preset: str, run_dir: Path, man: Path, cache: Path):
    """A run directory holding ``preset`` (data pointed at the synthetic cohort) and its untrained model."""
    from medalign.api import build_untrained
    from medalign.config import dump_config, load_config
    from medalign.data.cache import CohortCache

    cfg = load_config(REPO / "configs" / preset, [f"data.manifest={man}", f"data.cache_dir={cache}"])
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, run_dir / "config.yaml")
    (run_dir / "preprocess.json").write_text(json.dumps(CohortCache(cache).index["config"]))
    return build_untrained(run_dir)


def _time(client, study: str, text: str) -> tuple[float, str, int]:
    t0 = time.perf_counter()
    r = client.post(f"/attention/{study}", json={"text": text})
    dt = time.perf_counter() - t0
    if r.status_code != 200:
        raise SystemExit(f"POST /attention/{study}: HTTP {r.status_code} {r.text[:200]}")
    return dt, r.headers.get("x-overlay-cache", ""), len(r.content)


def bench(name: str, client, studies: list[str], repeats: int) -> dict:
    """First and repeated request latency over studies x queries (the first pair is the warm-up)."""
    warm = _time(client, studies[0], "warm-up query")[0]
    first, again, sizes = [], [], []
    for sid in studies:
        for q in QUERIES:
            dt, how, size = _time(client, sid, q)
            assert how == "computed", how
            first.append(dt)
            sizes.append(size)
            for _ in range(repeats):
                dt, how, _ = _time(client, sid, q)
                assert how == "memory", how
                again.append(dt)
    ms = lambda xs: {"median_ms": round(1000 * statistics.median(xs), 1), "max_ms": round(1000 * max(xs), 1),  # noqa: E731
                     "n": len(xs)}
    res = {"model": name, "warm_up_ms": round(1000 * warm, 1), "first": ms(first), "repeat": ms(again),
           "png_kib": round(statistics.median(sizes) / 1024, 1)}
    print(f"{name:34s} warm-up {res['warm_up_ms']:8.1f} ms | first: median {res['first']['median_ms']:7.1f} ms, "
          f"max {res['first']['max_ms']:7.1f} ms (n={len(first)}) | repeat: median {res['repeat']['median_ms']:6.2f} ms, "
          f"max {res['repeat']['max_ms']:6.2f} ms (n={len(again)}) | PNG {res['png_kib']} KiB")
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", help="a trained run (default: preset-sized untrained GLoRIA and CLIP models)")
    ap.add_argument("--index", help="the run's index (with --run)")
    ap.add_argument("--volumes", help="its preprocessed cohort cache (default: the run's data.cache_dir)")
    ap.add_argument("--n", type=int, default=4, help="synthetic studies (without --run)")
    ap.add_argument("--studies", type=int, default=4, help="studies measured")
    ap.add_argument("--repeats", type=int, default=5, help="repeats of each (study, query) after the first")
    ap.add_argument("--json", help="also write the figures here")
    a = ap.parse_args(argv)

    import torch
    from fastapi.testclient import TestClient

    from medalign.index.build import build_index
    from medalign.serve.app import create_app

    torch.set_num_threads(1)
    results = []
    with tempfile.TemporaryDirectory(prefix="medalign-bench-overlay-") as td:
        root = Path(td)
        os.environ.setdefault("MEDALIGN_CACHE", str(root / "text_cache"))
        if a.run:
            import medalign
            from medalign.index.store import IndexStore

            if not a.index:
                raise SystemExit("--run needs --index")
            model = medalign.load(a.run)
            ids = IndexStore.open(a.index).study_ids[: a.studies]
            client = TestClient(create_app(a.index, model, volumes=a.volumes))
            results.append(bench(f"{Path(a.run).name} ({a.run})", client, ids, a.repeats))
        else:
            t0 = time.perf_counter()
            man, cache = _synthetic_cohort(root / "cohort", a.n)
            print(f"synthetic cohort: {a.n} studies, 3 x 16x112x112 ({time.perf_counter() - t0:.1f}s)")
            for preset in ("gloria_cpu.yaml", "brain_clip_cpu.yaml"):
                model = _preset_model(preset, root / preset.split(".")[0], man, cache)
                build_index(model, man, root / f"index_{preset}", cache=cache)
                client = TestClient(create_app(root / f"index_{preset}", model, volumes=cache))
                ids = [f"B{i:03d}" for i in range(min(a.studies, a.n))]
                results.append(bench(f"{preset} ({client.get('/health').json()['model_id'][:12]})", client, ids,
                                     a.repeats))
    if a.json:
        Path(a.json).write_text(json.dumps({"cpu_threads": 1, "python": sys.version.split()[0],
                                            "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
