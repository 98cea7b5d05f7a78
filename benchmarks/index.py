"""Case-index benchmark: FAISS vs brute-force NumPy, and an HTTP load test of the service.

    python benchmarks/index.py                       # sizes 10k,100k,1M (1M with few queries)
    python benchmarks/index.py --sizes 10k,100k --queries 200 --threads 1
    python benchmarks/index.py --skip-http            # index figures only

Per size N (random 256-d Gaussian vectors, L2-normalised; top-10 inner product):
- build time of IndexFlatIP (exact) and of the approximate index medalign uses above its size
  threshold (IVF-Flat, parameters from medalign.index.faiss_index.ivf_params),
- single-query latency p50/p99 for FAISS flat, IVF and NumPy brute force (matmul + argpartition),
  the NumPy/FAISS latency ratio and IVF recall@10 against the exact answer. Uniform random
  vectors are IVF's worst case (no cluster structure); real embeddings cluster, so recall is
  also measured on clustered vectors (one Gaussian cluster per 100 points; sizes below 1M).
Queries at 1M are bounded (--queries-large, default 20) so the run stays short.

HTTP: the real app (uvicorn, one worker, subprocess) over a 10k-study index with a random
projection text model, hammered from this process over loopback (bounded by --http-requests
and --http-seconds) with --http-concurrency clients: requests/s, p50/p99 latency, errors.
Timings depend on the machine and its load; nothing here is asserted.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
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


def _pct(ms, q):
    import numpy as np

    return float(np.percentile(np.asarray(ms), q))


def _timed_queries(fn, queries) -> list[float]:
    ms = []
    for q in queries:
        t0 = time.perf_counter()
        fn(q[None])  # (1, E): one query at a time, as the service does
        ms.append(1000 * (time.perf_counter() - t0))
    return ms


def bench_size(n: int, n_queries: int, k: int, ann: bool, seed: int = 0) -> dict:
    import numpy as np

    from medalign.index.faiss_index import VectorIndex, brute_force_search, l2_normalise

    rng = np.random.default_rng(seed)
    db = l2_normalise(rng.standard_normal((n, DIM), dtype=np.float32))  # (N, E)
    queries = l2_normalise(rng.standard_normal((n_queries, DIM), dtype=np.float32))  # (Q, E)
    row = {"n": n, "queries": n_queries}

    t0 = time.perf_counter()
    flat = VectorIndex.build(db, kind="flat")
    row["flat_build_s"] = time.perf_counter() - t0
    flat_ms = _timed_queries(lambda q: flat.search(q, k), queries)
    np_ms = _timed_queries(lambda q: brute_force_search(db, q, k), queries)
    row.update(flat_p50=_pct(flat_ms, 50), flat_p99=_pct(flat_ms, 99), numpy_p50=_pct(np_ms, 50),
               numpy_p99=_pct(np_ms, 99))
    row["numpy_over_flat"] = row["numpy_p50"] / max(row["flat_p50"], 1e-9)
    _, exact = flat.search(queries, k)
    _, ref = brute_force_search(db, queries, k)
    row["flat_equals_numpy"] = bool((exact == ref).all())
    if ann:
        t0 = time.perf_counter()
        ivf = VectorIndex.build(db, kind="ivf")
        row["ivf_build_s"] = time.perf_counter() - t0
        row["ivf_params"] = ivf.params
        ivf_ms = _timed_queries(lambda q: ivf.search(q, k), queries)
        row.update(ivf_p50=_pct(ivf_ms, 50), ivf_p99=_pct(ivf_ms, 99))
        row["numpy_over_ivf"] = row["numpy_p50"] / max(row["ivf_p50"], 1e-9)
        _, approx = ivf.search(queries, k)
        row["ivf_recall10"] = float(np.mean([len(set(a) & set(e)) / k for a, e in zip(approx, exact)]))
        del ivf
        if n < 1_000_000:  # recall on clustered vectors, closer to real embeddings (one cluster per 100)
            centres = rng.standard_normal((max(n // 100, 1), DIM), dtype=np.float32)  # (M, E)
            lab = rng.integers(0, len(centres), n + n_queries)
            pts = l2_normalise(centres[lab] + 1.0 * rng.standard_normal((n + n_queries, DIM), dtype=np.float32))
            cdb, cq = pts[:n], pts[n:]
            _, cex = brute_force_search(cdb, cq, k)
            _, cap = VectorIndex.build(cdb, kind="ivf").search(cq, k)
            row["ivf_recall10_clustered"] = float(np.mean([len(set(a) & set(e)) / k for a, e in zip(cap, cex)]))
    del flat, db
    return row


# ---- HTTP load test -----------------------------------------------------------------------------
class BenchModel:
    """Random-projection stand-in model (hashed bag of words -> 256-d); no weights needed."""

    model_id = "bench-random-projection"
    sequences = ["dwi", "t2s", "flair"]
    preprocess_config = {"note": "benchmark"}

    def __init__(self) -> None:
        import numpy as np

        self.w = np.random.default_rng(0).standard_normal((512, DIM)).astype(np.float32)

    def encode_text(self, texts):
        import hashlib

        import numpy as np

        f = np.zeros((len(texts), 512), np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                f[i, int(hashlib.md5(w.encode()).hexdigest(), 16) % 512] += 1
        return f @ self.w  # (N, E)

    def encode_image(self, x, sequence_mask=None):
        raise NotImplementedError("the load test queries text and stored studies only")


def make_bench_index(root: Path, n: int) -> None:
    import numpy as np

    from medalign.data.schema import CLASSES
    from medalign.index.store import write_version

    rng = np.random.default_rng(1)
    words = "acute infarct hemorrhage tumor mass edema normal chronic left right frontal parietal".split()
    records = [{"study_id": f"B{i:06d}", "label": CLASSES[i % 5], "split": "test", "thumbs": {},
                "report": " ".join(rng.choice(words, 8))} for i in range(n)]
    model = BenchModel()
    text = np.concatenate([model.encode_text([r["report"] for r in records[s:s + 4096]])
                           for s in range(0, n, 4096)])  # (N, E)
    image = rng.standard_normal((n, DIM), dtype=np.float32)  # (N, E)
    meta = {"model_id": model.model_id, "preprocess_config": model.preprocess_config,
            "sequences": model.sequences, "dim": DIM, "run_dir": None}
    write_version(root, meta=meta, records=records, image_embed=image, image_rows=np.arange(n),
                  text_embed=text, text_rows=np.arange(n))


def _serve_only(index_dir: str, port: int) -> None:
    import uvicorn

    from medalign.serve.app import create_app

    app = create_app(index_dir, BenchModel())
    uvicorn.run(app, host="127.0.0.1", port=port, access_log=False, log_level="warning")


def http_load(n_index: int, n_requests: int, seconds: float, concurrency: int) -> dict:
    import asyncio

    import httpx
    import numpy as np

    with tempfile.TemporaryDirectory(prefix="medalign-bench-") as td:
        t0 = time.perf_counter()
        make_bench_index(Path(td) / "idx", n_index)
        build_s = time.perf_counter() - t0
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen([sys.executable, __file__, "--serve-only", str(Path(td) / "idx"), "--port", str(port)],
                                env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")})
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(base + "/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("server did not start")
                time.sleep(0.2)

            lat: list[float] = []
            errors = 0
            rng = np.random.default_rng(2)

            async def worker(client, stop_at, counter):
                nonlocal errors
                while counter[0] < n_requests and time.monotonic() < stop_at:
                    counter[0] += 1
                    i = counter[0]
                    t = time.perf_counter()
                    try:
                        if i % 2:
                            r = await client.post("/search/text", json={"text": "acute infarct left frontal", "k": 10})
                        else:
                            r = await client.get(f"/search/study/B{int(rng.integers(n_index)):06d}", params={"k": 10})
                        if r.status_code != 200:
                            errors += 1
                    except httpx.HTTPError:
                        errors += 1
                    lat.append(1000 * (time.perf_counter() - t))

            async def main():
                counter = [0]
                limits = httpx.Limits(max_connections=concurrency)
                async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
                    for _ in range(20):  # warm-up
                        await client.get("/health")
                    t = time.perf_counter()
                    await asyncio.gather(*(worker(client, time.monotonic() + seconds, counter) for _ in range(concurrency)))
                    return time.perf_counter() - t

            wall = asyncio.run(main())
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    return {"index_studies": n_index, "index_build_s": build_s, "requests": len(lat), "errors": errors,
            "concurrency": concurrency, "seconds": wall, "rps": len(lat) / wall,
            "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10k,100k,1M", help="comma list, k/M suffixes (default 10k,100k,1M)")
    ap.add_argument("--queries", type=int, default=200, help="single queries per size below 1M")
    ap.add_argument("--queries-large", type=int, default=20, help="single queries per size >= 1M")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="FAISS/BLAS threads (1 = fair on a shared machine)")
    ap.add_argument("--no-ann", action="store_true", help="skip the IVF index")
    ap.add_argument("--skip-http", action="store_true")
    ap.add_argument("--http-index", type=int, default=10_000)
    ap.add_argument("--http-requests", type=int, default=2000)
    ap.add_argument("--http-seconds", type=float, default=20.0)
    ap.add_argument("--http-concurrency", type=int, default=8)
    ap.add_argument("--serve-only", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(a.threads)
    if a.serve_only:
        _serve_only(a.serve_only, a.port)
        return 0
    import faiss

    faiss.omp_set_num_threads(a.threads)
    print(f"# medalign index benchmark: dim={DIM}, k={a.k}, threads={a.threads}, faiss {faiss.__version__}")
    print("| N | queries | flat build s | flat p50 ms | flat p99 ms | numpy p50 ms | numpy p99 ms | numpy/flat | "
          "IVF build s | IVF p50 ms | IVF p99 ms | numpy/IVF | IVF recall@10 random | IVF recall@10 clustered |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n in _parse_sizes(a.sizes):
        r = bench_size(n, a.queries_large if n >= 1_000_000 else a.queries, a.k, ann=not a.no_ann)
        assert r["flat_equals_numpy"], "FAISS flat and NumPy disagree"
        ivf = (f"{r['ivf_build_s']:.2f} | {r['ivf_p50']:.3f} | {r['ivf_p99']:.3f} | {r['numpy_over_ivf']:.1f}x | "
               f"{r['ivf_recall10']:.3f} | {r.get('ivf_recall10_clustered', float('nan')):.3f}"
               if "ivf_p50" in r else "- | - | - | - | - | -")
        print(f"| {n:,} | {r['queries']} | {r['flat_build_s']:.2f} | {r['flat_p50']:.3f} | {r['flat_p99']:.3f} | "
              f"{r['numpy_p50']:.3f} | {r['numpy_p99']:.3f} | {r['numpy_over_flat']:.1f}x | {ivf} |", flush=True)
        if "ivf_params" in r:
            print(f"|   IVF params at {n:,}: {r['ivf_params']} |")
    if not a.skip_http:
        h = http_load(a.http_index, a.http_requests, a.http_seconds, a.http_concurrency)
        print(f"\n# HTTP load test (loopback, 1 uvicorn worker, {h['index_studies']:,}-study index built in "
              f"{h['index_build_s']:.1f}s; half POST /search/text, half GET /search/study/{{id}}, k=10)")
        print(f"requests={h['requests']} concurrency={h['concurrency']} seconds={h['seconds']:.1f} "
              f"rps={h['rps']:.0f} p50={h['p50_ms']:.1f}ms p99={h['p99_ms']:.1f}ms errors={h['errors']}")
        if h["errors"]:
            return 1
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    raise SystemExit(main())
