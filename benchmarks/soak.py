"""Soak test: concurrent index adds, queries and uploads against a live server, for a bounded time.

    python benchmarks/soak.py                          # 30 s, 2 adder processes, 4 query + 1 upload threads
    python benchmarks/soak.py --seconds 120 --adders 4 --query-threads 8

Everything runs on loopback (127.0.0.1) from one machine:
- a real uvicorn server (subprocess, ``medalign.serve.app.create_app``) over an index of
  ``--base`` studies, with the deterministic random-projection model of ``tests/serve_fakes.py``
  (no trained model needed) and a bearer token;
- ``--adders`` processes, each calling ``medalign.index.build.add_to_index`` on the same index in
  a loop (3 new studies per add) until the time is up: the writers the index lock serialises;
- ``--query-threads`` threads cycling ``POST /search/text``, ``GET /search/study/{id}``,
  ``GET /study/{id}``, ``GET /health``; ``--upload-threads`` threads posting a NIfTI upload;
  every 10th query carries a wrong token (a 401 is the expected answer, not an error).

Printed: requests (by route), errors (unexpected status or exception), index adds, studies
expected vs found in the final index (lost = expected - found, must be 0), and the server's peak
resident memory (VmHWM from /proc). Timings depend on the machine and its load; the exit code is
1 when a study was lost or any error occurred.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
TOKEN = "soak-token-" + "x" * 16


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_only(index_dir: str, port: int) -> None:
    """Server process: the real app + uvicorn on loopback."""
    sys.path.insert(0, str(TESTS))
    import uvicorn
    from serve_fakes import FakeModel

    from medalign.serve.app import create_app
    from medalign.serve.security import allowed_hosts

    app = create_app(index_dir, FakeModel(), token=TOKEN, hosts=allowed_hosts("127.0.0.1"))
    uvicorn.run(app, host="127.0.0.1", port=port, access_log=False, log_level="warning")


def _adder(k: int, index_dir: str, work: str, deadline: float, out: "mp.Queue") -> None:
    """One writer process: add 3 fresh studies at a time until ``deadline``; report the ids added."""
    sys.path.insert(0, str(TESTS))
    from serve_fakes import FakeModel, make_cohort

    from medalign.index.build import add_to_index

    model, added, errors, i = FakeModel(), [], [], 0
    while time.time() < deadline:
        start = 1000 * (k + 1) + 3 * i  # ids S1000.. for adder 0, S2000.. for adder 1, ...
        manifest = make_cohort(Path(work) / f"a{k}_{i}", n=3, start=start)
        try:
            add_to_index(index_dir, model, manifest)
            added += [f"S{j:03d}" for j in range(start, start + 3)]
        except Exception as e:  # counted, never hidden
            errors.append(f"{type(e).__name__}: {e}")
        i += 1
    out.put((k, added, errors))


def _client_loop(base: str, kind: str, deadline: float, counts: Counter, errors: list, lock: threading.Lock,
                 upload: bytes) -> None:
    import httpx

    good = {"authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=base, timeout=30) as c:
        n = 0
        while time.time() < deadline:
            n += 1
            bad_token = kind == "query" and n % 10 == 0
            hdrs = {"authorization": "Bearer wrong-token-wrong-token"} if bad_token else good
            try:
                if kind == "upload":
                    route, r = "upload", c.post("/search/upload?k=5", headers=hdrs,
                                                files={"dwi": ("a.nii.gz", upload, "application/gzip")})
                else:
                    route = ("text", "study", "detail", "health")[n % 4]
                    if route == "text":
                        r = c.post("/search/text", headers=hdrs, json={"text": "acute infarct left MCA", "k": 10})
                    elif route == "study":
                        r = c.get("/search/study/S001?k=10", headers=hdrs)
                    elif route == "detail":
                        r = c.get("/study/S002", headers=hdrs)
                    else:
                        r = c.get("/health")
                want = 401 if bad_token and route != "health" else 200
                ok = r.status_code == want
            except Exception as e:  # connection refused / reset: an error
                route, ok = kind, False
                r = e
            with lock:
                counts[route] += 1
                if not ok:
                    errors.append(f"{route}: {getattr(r, 'status_code', r)}")


def _peak_rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="how long the load runs (bounded)")
    ap.add_argument("--base", type=int, default=12, help="studies in the index at the start")
    ap.add_argument("--adders", type=int, default=2, help="concurrent index-add processes")
    ap.add_argument("--query-threads", type=int, default=4)
    ap.add_argument("--upload-threads", type=int, default=1)
    ap.add_argument("--serve-only", nargs=2, metavar=("INDEX", "PORT"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.serve_only:
        _serve_only(a.serve_only[0], int(a.serve_only[1]))
        return 0
    sys.path.insert(0, str(TESTS))
    import httpx
    from serve_fakes import FakeModel, make_cohort

    from medalign.index.build import build_index
    from medalign.index.store import IndexStore

    with tempfile.TemporaryDirectory(prefix="medalign-soak-") as td:
        index = Path(td) / "index"
        base_manifest = make_cohort(Path(td) / "base", n=a.base)
        build_index(FakeModel(), base_manifest, index)
        upload = (Path(td) / "base" / "S000" / "dwi.nii.gz").read_bytes()
        port = _free_port()
        server = subprocess.Popen([sys.executable, __file__, "--serve-only", str(index), str(port)],
                                  env={**os.environ, "OMP_NUM_THREADS": "1"})
        base = f"http://127.0.0.1:{port}"
        try:
            t_up = time.time() + 60
            while time.time() < t_up:
                try:
                    if httpx.get(base + "/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            else:
                print("server did not start", file=sys.stderr)
                return 1
            t0 = time.time()
            deadline = t0 + a.seconds
            q: mp.Queue = mp.get_context("spawn").Queue()
            adders = [mp.get_context("spawn").Process(target=_adder, args=(k, str(index), td, deadline, q))
                      for k in range(a.adders)]
            for p in adders:
                p.start()
            counts: Counter = Counter()
            errors: list[str] = []
            lock = threading.Lock()
            threads = [threading.Thread(target=_client_loop, args=(base, kind, deadline, counts, errors, lock, upload))
                       for kind in ["query"] * a.query_threads + ["upload"] * a.upload_threads]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            results = [q.get(timeout=a.seconds + 300) for _ in adders]
            for p in adders:
                p.join(30)
            elapsed = time.time() - t0
            peak = _peak_rss_mib(server.pid)
        finally:
            server.terminate()
            server.wait(10)
        expected = {f"S{i:03d}" for i in range(a.base)}
        add_errors = []
        for _, ids, errs in results:
            expected |= set(ids)
            add_errors += errs
        found = set(IndexStore.open(index).study_ids)
        lost = sorted(expected - found)
        n_req = sum(counts.values())
        print(f"soak: {elapsed:.1f}s on loopback, {a.adders} adder processes, {a.query_threads} query + "
              f"{a.upload_threads} upload threads")
        print(f"requests: {n_req} ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}), "
              f"{n_req / max(elapsed, 1e-9):.1f}/s")
        print(f"errors: {len(errors)} http, {len(add_errors)} index add" +
              (f" (first: {(errors + add_errors)[0]})" if errors or add_errors else ""))
        print(f"index adds: {sum(len(ids) for _, ids, _ in results) // 3}")
        print(f"studies expected: {len(expected)}, found: {len(found)}, lost: {len(lost)}"
              + (f" ({lost[:5]})" if lost else ""))
        print(f"server peak memory (VmHWM): {peak:.0f} MiB" if peak is not None else "server peak memory: n/a")
        return 1 if lost or errors or add_errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
