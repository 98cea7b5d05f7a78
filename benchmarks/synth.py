"""Benchmark: synthetic brain cohort generation speed (studies/min).

    python benchmarks/synth.py [--n 20] [--workers 2] [--shape-mode clinical] [--flair-alone]

Prints wall-clock studies/min, CPU seconds per study (parent + workers; independent of how
busy the machine is), the projected time for the default 262-study cohort, and the
report-generation + labelling rate (reports/s). The anatomy disk cache is warmed first.
``--flair-alone`` also draws the same cohort with n more studies acquired as FLAIR alone
(``synth brain --flair-alone``) and prints their CPU cost per study as a ratio to a full study's,
both measured in this run. Last, the trilinear resampling that was two thirds of a study's time:
the compiled kernels (``synth.sampling``) against SciPy's ``affine_transform`` / ``map_coordinates``
on a FLAIR-sized grid, as a ratio measured in this run, and whether their outputs are identical.
"""
from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--shape-mode", default="clinical", choices=["clinical", "small"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--flair-alone", action="store_true", help="also time n studies acquired as FLAIR alone")
    args = ap.parse_args()

    from medalign.data.reports import label_reports
    from medalign.data.synth.anatomy import load_anatomy
    from medalign.data.synth.brain import generate_brain_cohort, plan_cohort

    def timed(flair_alone: int) -> tuple[float, float, int]:
        """(wall s, CPU s of parent + workers, bytes on disk) of one cohort."""
        with tempfile.TemporaryDirectory() as tmp:
            c0 = time.process_time()
            r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            generate_brain_cohort(tmp, n=args.n, seed=args.seed, shape_mode=args.shape_mode, workers=args.workers,
                                  flair_alone=flair_alone)
            wall = time.perf_counter() - t0
            r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (time.process_time() - c0) + (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
            return wall, cpu, sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(tmp) for f in fs)

    load_anatomy(4 if args.shape_mode == "small" else 2)  # warm the cache: not part of the rate
    wall, cpu, size = timed(0)
    per = cpu / args.n
    print(f"synth brain ({args.shape_mode}, n={args.n}, workers={args.workers}): wall {wall:.1f} s -> "
          f"{args.n / wall * 60:.1f} studies/min")
    print(f"CPU {per:.2f} s/study -> ideal {60 / per * args.workers:.0f} studies/min on {args.workers} idle cores; "
          f"262 studies ~ {262 * per / args.workers / 60:.1f} min; {size / args.n / 1e6:.1f} MB/study on disk; "
          f"load average now {os.getloadavg()[0]:.1f}")
    if args.flair_alone:  # the same n studies plus n acquired as FLAIR alone: the difference is theirs
        _, cpu2, size2 = timed(args.n)
        extra = (cpu2 - cpu) / args.n
        print(f"FLAIR alone: CPU {extra:.2f} s/study = {extra / per:.2f} x a full study's; "
              f"{(size2 - size) / args.n / 1e6:.1f} MB/study on disk")
    sampling_ratio()
    t0 = time.perf_counter()
    plans = plan_cohort(1000, seed=args.seed + 1, heldout_phrasing=True, split_counts={"train": 500, "val": 0, "test": 500})
    t1 = time.perf_counter()
    pred = label_reports([p["report"] for p in plans])
    t2 = time.perf_counter()
    acc = sum(p == t["label"] for p, t in zip(pred, plans)) / len(plans)
    print(f"plan+reports: {1000 / (t1 - t0):.0f} studies/s; labeler: {1000 / (t2 - t1):.0f} reports/s, accuracy {acc:.4f}")


def sampling_ratio(reps: int = 10) -> None:
    """Time one acquisition grid's resampling (affine) and one subject warp (coordinates), the
    compiled kernels against SciPy, after one call each (Numba's compile or cache load)."""
    import numpy as np
    import scipy.ndimage as ndi

    from medalign.data.synth.anatomy import load_anatomy
    from medalign.data.synth.sampling import affine_sample, coords_sample

    rng = np.random.default_rng(0)
    vol = ndi.gaussian_filter(load_anatomy(2)["mask"].astype(np.float32), 1.0)  # the template grid, 2 mm
    c, s = np.cos(np.radians(4.0)), np.sin(np.radians(4.0))
    t = np.eye(4)
    t[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([0.57, 0.57, 3.0])  # 1.15 mm in plane, 6 mm slices
    t[:3, 3] = [-10.0, 2.0, -4.0]
    shape = (174, 153, 24)  # a clinical FLAIR grid
    coords = np.indices(vol.shape, dtype=np.float32) + rng.normal(0, 1, (3, *vol.shape)).astype(np.float32)  # (3, X, Y, Z)
    cases = {"affine (acquisition grid)": (lambda: ndi.affine_transform(vol, t[:3, :3], t[:3, 3], output_shape=shape, order=1),
                                           lambda: affine_sample(vol, t, shape)),
             "coordinates (subject warp)": (lambda: ndi.map_coordinates(vol, coords, order=1, mode="constant", cval=0.0),
                                            lambda: coords_sample(vol, coords))}
    for name, (ref, new) in cases.items():
        same = np.array_equal(ref(), new())  # the first call also compiles or loads the kernel
        times = []
        for fn in (ref, new):
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            times.append((time.perf_counter() - t0) / reps)
        print(f"trilinear {name}: SciPy {times[0] * 1e3:.1f} ms, compiled {times[1] * 1e3:.1f} ms "
              f"-> {times[0] / times[1]:.1f}x; identical: {same}")


if __name__ == "__main__":
    main()
