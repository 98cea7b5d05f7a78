"""Preprocessing / cache benchmark.

    python benchmarks/preprocess.py                      # 20 synthetic brain studies, 2 workers
    python benchmarks/preprocess.py --manifest cohort/manifest.csv --json out.json
    python benchmarks/preprocess.py --n 40 --workers 2 --json out.json
    python benchmarks/preprocess.py --ellipsoid          # no helper-B generator: random ellipsoid heads

Figures printed (nothing asserted; timings depend on the machine and its load):
- synth studies/min (when the brain generator is used),
- raw NIfTI -> cache: studies/s with --workers processes (registration on), and the time of a
  second run that finds everything cached,
- one epoch of samples: from the cache (CohortDataset, memory-mapped .npy) vs from raw NIfTI
  (preprocess_study on the fly, what you would pay without a cache) vs raw read only (the
  files decoded, no preprocessing), samples/s and the cache/raw ratio,
- peak RSS of this process and of its worker processes (resource.getrusage),
- the share of the raw preprocessing time spent on the skull-stripped edge correction
  (``imaging._foreground_share``: the foreground share resampled with each constant-background
  image), timed inside the same loop.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path


def ellipsoid_cohort(root: Path, n: int, seed: int = 0) -> Path:
    """Clinical-looking random volumes: an ellipsoid 'head' with noise, 3 sequences, varied affines."""
    import nibabel as nib
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        sid = f"E{i:04d}"
        shape = (int(rng.integers(180, 230)), int(rng.integers(180, 230)), int(rng.integers(24, 40)))
        sp = (float(rng.uniform(0.8, 1.2)),) * 2 + (float(rng.uniform(3, 6)),)
        idx = np.indices(shape, dtype=np.float32)
        c = [(s - 1) / 2 for s in shape]
        r = [70 / sp[0], 85 / sp[1], 60 / sp[2]]
        d = sum(((idx[k] - c[k]) / r[k]) ** 2 for k in range(3))
        row = {"study_id": sid, "patient_id": f"P{i:04d}", "label": "normal", "report": "Normal study."}
        for j, seq in enumerate(("dwi", "t2s", "flair")):
            vol = np.where(d <= 1, 100.0 + 20 * j, 0.0) + rng.normal(0, 5, shape)
            aff = np.diag([sp[0], sp[1], sp[2], 1.0])
            aff[:3, 3] = [-c[0] * sp[0] + rng.normal(0, 2), -c[1] * sp[1], -c[2] * sp[2]]
            p = root / sid / f"{seq}.nii.gz"
            p.parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(vol.astype(np.float32), aff), str(p))
            row[f"image_{seq}"] = f"{sid}/{seq}.nii.gz"
        rows.append(row)
    out = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(out, index=False)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20, help="studies (the brain generator needs >= 20)")
    ap.add_argument("--manifest", type=Path, default=None, help="benchmark an existing cohort instead")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--ellipsoid", action="store_true", help="use random ellipsoid volumes, not the brain generator")
    ap.add_argument("--no-register", action="store_true")
    ap.add_argument("--workdir", type=Path, default=None, help="keep files here (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    args = ap.parse_args(argv)

    from medalign.data.cache import preprocess_cohort
    from medalign.data.datasets import CohortDataset
    from medalign.data.imaging import PreprocessConfig, preprocess_study
    from medalign.data.manifest import load_manifest
    from medalign.data.schema import image_column
    from medalign.data.volume_io import read_volume

    tmp = tempfile.TemporaryDirectory(prefix="medalign_bench_")
    root = args.workdir or Path(tmp.name)
    root.mkdir(parents=True, exist_ok=True)
    fig: dict[str, object] = {"n": args.n, "workers": args.workers}

    t0 = time.perf_counter()
    source = "ellipsoid"
    if args.manifest is not None:
        manifest, source = args.manifest, str(args.manifest)
        args.n = len(load_manifest(manifest, check_files=False))
    elif not args.ellipsoid and args.n >= 20:
        try:
            from medalign.data.synth.brain import generate_brain_cohort
        except ImportError:
            generate_brain_cohort = None
        if generate_brain_cohort is not None:
            manifest = generate_brain_cohort(root / "cohort", n=args.n, seed=0, workers=args.workers)
            source = "synth.brain"
    if source == "ellipsoid" and args.manifest is None:
        manifest = ellipsoid_cohort(root / "cohort", args.n)
    gen_s = time.perf_counter() - t0
    fig["source"] = source
    fig["n"] = args.n  # a --manifest sets it from the file
    if source == "synth.brain":
        fig["synth_studies_per_min"] = round(args.n / gen_s * 60, 2)
    print(f"cohort: {args.n} studies from {source} in {gen_s:.1f} s")

    cfg = PreprocessConfig(register=not args.no_register)
    cache = root / "cache"
    s = preprocess_cohort(manifest, cfg, cache, workers=args.workers, progress=False)
    fig["preprocess_seconds"] = s["seconds"]
    fig["preprocess_studies_per_s"] = round(args.n / s["seconds"], 3)
    t0 = time.perf_counter()
    s2 = preprocess_cohort(manifest, cfg, cache, workers=args.workers, progress=False)
    fig["rerun_all_cached_seconds"] = round(time.perf_counter() - t0, 3)
    assert s2["cached"] == args.n

    ds = CohortDataset(manifest, cache)
    t0 = time.perf_counter()
    for i in range(len(ds)):
        ds[i]
    cache_s = time.perf_counter() - t0

    df = load_manifest(manifest)
    import medalign.data.imaging as imaging

    share_s = [0.0]  # time in the skull-stripped edge correction (_foreground_share), same run
    share_fn = imaging._foreground_share

    def timed_share(*a, **kw):
        t = time.perf_counter()
        out = share_fn(*a, **kw)
        share_s[0] += time.perf_counter() - t
        return out

    imaging._foreground_share = timed_share
    t0 = time.perf_counter()
    try:
        for _, row in df.iterrows():
            preprocess_study({q: row.get(image_column(q)) for q in cfg.sequences}, cfg, study_id=row["study_id"])
    finally:
        imaging._foreground_share = share_fn
    raw_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _, row in df.iterrows():
        for q in cfg.sequences:
            p = row.get(image_column(q))
            if isinstance(p, str) and p:
                read_volume(p)
    read_s = time.perf_counter() - t0
    fig["epoch_cache_samples_per_s"] = round(args.n / cache_s, 1)
    fig["epoch_raw_preprocess_samples_per_s"] = round(args.n / raw_s, 3)
    fig["epoch_raw_read_only_samples_per_s"] = round(args.n / read_s, 2)
    fig["cache_vs_raw_preprocess_ratio"] = round(raw_s / cache_s, 1)
    fig["cache_vs_raw_read_ratio"] = round(read_s / cache_s, 1)
    fig["stripped_edge_share_of_preprocess"] = round(share_s[0] / raw_s, 3)
    kb = 1024.0 if sys.platform != "darwin" else 1024.0 * 1024
    fig["peak_rss_self_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / kb, 1)
    fig["peak_rss_children_mb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / kb, 1)
    fig["cache_mb"] = round(sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) / 2**20, 2)

    width = max(len(k) for k in fig)
    for k, v in fig.items():
        print(f"{k:<{width}}  {v}")
    if args.json:
        args.json.write_text(json.dumps(fig, indent=2) + "\n")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
