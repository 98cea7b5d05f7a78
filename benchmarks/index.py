"""Case-index benchmark: the default index vs NumPy brute force on clustered embeddings, a 10 M
estimate from the measured scaling, and an HTTP load test of the service. One run, one table.

    python benchmarks/index.py                                 # 100k,300k,1M + HTTP (about 10 min here)
    python benchmarks/index.py --sizes 100k,300k --skip-http   # quicker

Per size N (clustered 256-d vectors, one Gaussian cluster per 100 points with noise as large as
the centre, L2-normalised: ``serve_load.clustered``; seed 0; top-10 inner product; 1 thread):
- the default index ``VectorIndex.build`` picks for N (flat up to 50k, IVF-Flat to 4M, IVF-SQ8
  above), its build time (training + adding + the recall tuning), estimated memory and the
  process's resident-memory growth, the nprobe it chose and the recall@10 it measured on its own
  held-back vectors at build time;
- single-query latency p50/p99 of that index and of NumPy brute force (matmul + argpartition)
  on the same held-out queries (fresh points from the same clusters, never indexed), their ratio,
  and recall@10 of the index on those queries against the exact answer;
- at the largest size also IVF-SQ8 (the default above 4M) for its memory, latency and recall.
10 M: build time and p99 extrapolated with the power law fitted to the two largest sizes,
memory from the size formula (``faiss_index.memory_bytes``); an estimate, not a measurement.
HTTP: benchmarks/serve_load.py (100k-study index, 16 clients, text alone and with 2 uploaders), once
per --http-runs entry: the fake encoder (the service alone), MiniLM on unique texts (encoder-bound),
MiniLM cycling 256 texts (the LRU cache at work).
Timings depend on the machine and its load; nothing here is asserted.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

DIM = 256


def _parse_sizes(s: str) -> list[int]:
    out = []
    for tok in s.split(","):
        tok = tok.strip().lower()
        mult = 1_000_000 if tok.endswith("m") else 1_000 if tok.endswith("k") else 1
        out.append(int(float(tok.rstrip("mk")) * mult))
    return out


def _rss_mib() -> float:
    """Current resident memory of this process (Linux /proc), MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _timed(fn, queries) -> list[float]:
    ms = []
    for q in queries:
        t0 = time.perf_counter()
        fn(q[None])  # (1, E): one query at a time, as the service does
        ms.append(1000 * (time.perf_counter() - t0))
    return ms


def _recall(found, exact, k: int) -> float:
    import numpy as np

    return float(np.mean([len(set(a[:k]) & set(e[:k])) / k for a, e in zip(found, exact)]))


def bench_index(db, queries, k: int, kind: str | None) -> dict:
    """Build one index over ``db`` and time single queries on it; returns a row of figures."""
    import numpy as np

    from medalign.index.faiss_index import VectorIndex, exact_neighbours

    rss0 = _rss_mib()
    t0 = time.perf_counter()
    vi = VectorIndex.build(db, kind=kind)
    build_s = time.perf_counter() - t0
    rss = _rss_mib() - rss0
    ms = _timed(lambda q: vi.search(q, k), queries)
    _, found = vi.search(queries, k)
    exact = exact_neighbours(db, queries, k)
    row = {"kind": vi.kind, "params": dict(vi.params), "build_s": build_s, "mem_mib": vi.memory_bytes / 2**20,
           "rss_mib": rss, "p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)),
           "recall": _recall(found, exact, k)}
    del vi
    return row


def bench_size(n: int, n_queries: int, k: int, compact: bool) -> dict:
    import numpy as np

    from medalign.index.faiss_index import brute_force_search
    from serve_load import clustered

    pts = clustered(n + n_queries, seed=0)  # (N + Q, E): queries come from the same clusters, never indexed
    db, queries = pts[:n], np.ascontiguousarray(pts[n:])
    row = {"n": n, "queries": n_queries, "default": bench_index(db, queries, k, None)}
    np_ms = _timed(lambda q: brute_force_search(db, q, k), queries)
    row.update(numpy_p50=float(np.percentile(np_ms, 50)), numpy_p99=float(np.percentile(np_ms, 99)))
    if compact:
        row["ivfsq"] = bench_index(db, queries, k, "ivfsq")
    return row


def _fmt(r: dict, name: str, d: dict) -> str:
    p = d["params"]
    knob = f"nprobe={p['nprobe']}/{p['nlist']}" if "nprobe" in p else "exact"
    built = f"{p['recall10']:.3f}" if "recall10" in p else "1 (exact)"
    return (f"| {r['n']:,} | {name} {d['kind']} {knob} | {d['build_s']:.1f} | {d['mem_mib']:.0f} | {d['rss_mib']:.0f} | "
            f"{built} | {d['recall']:.3f} | {d['p50']:.3f} | {d['p99']:.3f} | {r['numpy_p50']:.1f} | "
            f"{r['numpy_p99']:.1f} | {r['numpy_p50'] / d['p50']:.0f}x / {r['numpy_p99'] / d['p99']:.0f}x |")


def estimate_10m(rows: list[dict]) -> list[str]:
    """Power-law extrapolation of build time and p99 from the two largest sizes; memory by formula."""
    from medalign.index.faiss_index import choose_kind, ivf_params, memory_bytes

    if len(rows) < 2:
        return ["(10M estimate needs two sizes)"]
    a, b = rows[-2], rows[-1]
    target = 10_000_000
    out = []
    for label, key in (("build s", "build_s"), ("p99 ms", "p99")):
        ya, yb = a["default"][key], b["default"][key]
        expo = math.log(yb / ya) / math.log(b["n"] / a["n"])
        out.append(f"{label}: {yb * (target / b['n']) ** expo:.1f} (exponent {expo:.2f} fitted on "
                   f"{a['n']:,}->{b['n']:,}, IVF-Flat)")
    kind = choose_kind(target)
    p = ivf_params(target)
    out.append(f"memory: default at 10M is {kind} (nlist {p['nlist']}): ~{memory_bytes(kind, target, DIM, p) / 2**30:.1f} "
               f"GiB; IVF-Flat would be ~{memory_bytes('ivf', target, DIM, p) / 2**30:.1f} GiB, flat "
               f"{memory_bytes('flat', target, DIM) / 2**30:.1f} GiB (+ the stored embeddings .npy, same as flat)")
    if "ivfsq" in b:
        s = b["ivfsq"]
        ratio = s["p99"] / b["default"]["p99"]
        out.append(f"IVF-SQ8 at {b['n']:,}: p99 {s['p99']:.2f} ms ({ratio:.2f}x IVF-Flat), recall@10 {s['recall']:.3f}, "
                   f"{s['mem_mib']:.0f} MiB; the p99 line above times {ratio:.2f} estimates it at 10M")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100k,300k,1M", help="comma list, k/M suffixes")
    ap.add_argument("--queries", type=int, default=200, help="held-out single queries per size")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="FAISS/BLAS threads (1 = one thread per query)")
    ap.add_argument("--no-compact", action="store_true", help="skip IVF-SQ8 at the largest size")
    ap.add_argument("--skip-http", action="store_true")
    ap.add_argument("--http-index", default="100k")
    ap.add_argument("--http-clients", type=int, default=16)
    ap.add_argument("--http-seconds", type=float, default=15.0)
    ap.add_argument("--http-runs", default="fake:0,minilm:0,minilm:256",
                    help="comma list of ENCODER:REPEAT (fake|minilm; REPEAT distinct query texts cycled, 0 = all unique)")
    a = ap.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(a.threads)
    import faiss

    faiss.omp_set_num_threads(a.threads)
    sizes = _parse_sizes(a.sizes)
    print(f"# medalign index benchmark: clustered {DIM}-d, k={a.k}, threads={a.threads}, faiss {faiss.__version__}, "
          f"{a.queries} held-out queries per size")
    print("| N | index | build s | index MiB (est.) | RSS growth MiB | recall@10 at build | recall@10 held-out | "
          "p50 ms | p99 ms | numpy p50 ms | numpy p99 ms | numpy/index p50 / p99 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for n in sizes:
        r = bench_size(n, a.queries, a.k, compact=not a.no_compact and n == max(sizes))
        rows.append(r)
        print(_fmt(r, "default", r["default"]), flush=True)
        if "ivfsq" in r:
            print(_fmt(r, "forced", r["ivfsq"]), flush=True)
    print("\n# 10M estimate (not measured)")
    for line in estimate_10m(rows):
        print(f"- {line}")
    if not a.skip_http:
        from serve_load import format_load, run_load

        n = _parse_sizes(a.http_index)[0]
        failed = False
        for spec in a.http_runs.split(","):
            encoder, _, repeat = spec.partition(":")
            h = run_load(n, a.http_clients, a.http_seconds, encoder.strip(), repeat=int(repeat or 0))
            print()
            print(format_load(h), flush=True)
            failed |= bool(h["text"]["errors"] or h["mixed"]["errors"])
        if failed:
            return 1
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    raise SystemExit(main())
