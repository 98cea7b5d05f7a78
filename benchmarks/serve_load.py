"""HTTP load test of ``medalign serve``: text-search throughput and latency with N keep-alive
clients on loopback, alone and mixed with concurrent uploads. Used by benchmarks/index.py.

    python benchmarks/serve_load.py --index-size 100k --clients 16 --seconds 15 --encoder minilm

The server is the real app (``create_app`` + uvicorn, one worker, a subprocess) over a synthetic
index (clustered random 256-d image and report vectors, reports made of random words: retrieval
quality is not measured here, only the service). Text encoders:

- ``minilm``: the bundled all-MiniLM-L6-v2 (``medalign.models.text.TextEncoder``, the frozen
  encoder of the CPU preset) + a fixed random 384->256 projection: a real transformer forward
  per encoder call, so batching and caching matter as they would with a trained run.
- ``fake``: hashed bag of words -> random projection (~0.1 ms): measures the service alone.

Uploads (mixed phase): a 64^3 NIfTI; the bench model's ``encode_image`` reads it and runs a few
3-D convolutions (~0.2-0.5 s of CPU, as a stand-in for preprocessing + the image encoder).
Every query text is unique (the LRU cache gets no hits) unless ``--repeat-queries`` is given.
The client is a minimal asyncio HTTP/1.1 keep-alive client, so it costs the server little CPU.
Nothing is asserted; figures depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DIM = 256
WORDS = ("acute chronic infarct hemorrhage tumor mass edema normal left right frontal parietal temporal "
         "occipital lesion enhancing restricted diffusion white matter small large cortical subcortical").split()


class BenchModel:
    """Stand-in model: a real (``minilm``) or hashed (``fake``) text encoder, a conv stand-in image encoder."""

    sequences = ["dwi"]
    preprocess_config = {"note": "benchmark"}

    def __init__(self, encoder: str = "fake") -> None:
        import numpy as np

        self.encoder = encoder
        self.model_id = f"bench-{encoder}"
        rng = np.random.default_rng(0)
        if encoder == "minilm":
            from medalign.models.text import TextEncoder

            self.text = TextEncoder(cache_dir=False, max_length=64)
            self.w = rng.standard_normal((self.text.dim, DIM)).astype(np.float32)
        else:
            self.w = rng.standard_normal((512, DIM)).astype(np.float32)

    def encode_text(self, texts):
        import hashlib

        import numpy as np

        if self.encoder == "minilm":
            return self.text.sentence(list(texts)).numpy() @ self.w  # (N, 384) -> (N, E)
        f = np.zeros((len(texts), 512), np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                f[i, int(hashlib.md5(w.encode()).hexdigest(), 16) % 512] += 1
        return f @ self.w  # (N, E)

    def encode_image(self, x, sequence_mask=None):
        import nibabel as nib
        import numpy as np
        import torch

        vol = torch.from_numpy(np.asarray(nib.load(x["dwi"]).dataobj, dtype=np.float32))[None, None]  # (1, 1, X, Y, Z)
        w = torch.ones(8, 1, 3, 3, 3) / 27
        with torch.no_grad():
            for _ in range(6):
                h = torch.nn.functional.conv3d(vol, w, padding=1)  # (1, 8, X, Y, Z)
        return h.mean(dim=(2, 3, 4)).repeat(1, DIM // 8).numpy()  # (1, E)


def clustered(n: int, seed: int, dim: int = DIM, per_cluster: int = 100, chunk: int = 100_000):
    """(n, dim) unit vectors drawn around n/per_cluster Gaussian centres (noise as large as a centre)."""
    import numpy as np

    from medalign.index.faiss_index import l2_normalise

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(n // per_cluster, 1), dim), dtype=np.float32)  # (M, E)
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        out[s: s + m] = l2_normalise(centres[rng.integers(0, len(centres), m)]
                                     + rng.standard_normal((m, dim), dtype=np.float32))
    return out


def make_index(root: Path, n: int, model_id: str) -> dict:
    """A synthetic n-study index; returns the image index's kind/params."""
    import numpy as np

    from medalign.data.schema import CLASSES
    from medalign.index.store import IndexStore, write_version

    rng = np.random.default_rng(1)
    records = [{"study_id": f"B{i:07d}", "label": CLASSES[i % 5], "split": "test", "thumbs": {},
                "report": " ".join(rng.choice(WORDS, 8))} for i in range(n)]
    meta = {"model_id": model_id, "preprocess_config": BenchModel.preprocess_config, "sequences": ["dwi"],
            "dim": DIM, "run_dir": None}
    write_version(root, meta=meta, records=records, image_embed=clustered(n, 2), image_rows=np.arange(n),
                  text_embed=clustered(n, 3), text_rows=np.arange(n))
    return IndexStore.open(root).meta["image_index"]


def _serve_only(index_dir: str, port: int, encoder: str) -> None:
    import torch
    import uvicorn

    from medalign.serve.app import create_app

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    app = create_app(index_dir, BenchModel(encoder), max_uploads=1, max_waiting_uploads=4)
    uvicorn.run(app, host="127.0.0.1", port=port, access_log=False, log_level="warning")


# ---- a minimal keep-alive HTTP/1.1 client ----------------------------------------------------
async def _request(reader, writer, method: str, path: str, body: bytes = b"",
                   ctype: str = "application/json") -> int:
    head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    writer.write(head + body)
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        k, _, v = line.decode("latin-1").partition(":")
        if k.strip().lower() == "content-length":
            length = int(v)
    await reader.readexactly(length)
    return status


def _multipart(field: str, filename: str, data: bytes) -> tuple[bytes, str]:
    b = "medalignbenchboundary"
    body = (f"--{b}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{b}--\r\n".encode()
    return body, f"multipart/form-data; boundary={b}"


async def _phase(port: int, clients: int, uploaders: int, seconds: float, upload: bytes, repeat: int) -> dict:
    import json

    import numpy as np

    rng = np.random.default_rng(7)
    lat: list[float] = []
    up_lat: list[float] = []
    errors = {"text": 0, "upload": 0}
    stop = time.monotonic() + seconds
    counter = [0]

    def next_text() -> bytes:
        counter[0] += 1
        i = counter[0] % repeat if repeat else counter[0]
        words = " ".join(np.random.default_rng(i).choice(WORDS, 6))
        return json.dumps({"text": f"{words} case {i}", "k": 10}).encode()

    async def text_client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.monotonic() < stop:
            t = time.perf_counter()
            try:
                if await _request(reader, writer, "POST", "/search/text", next_text()) != 200:
                    errors["text"] += 1
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
                errors["text"] += 1
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            lat.append(1000 * (time.perf_counter() - t))
        writer.close()

    async def upload_client() -> None:
        body, ctype = _multipart("dwi", "dwi.nii.gz", upload)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.monotonic() < stop:
            t = time.perf_counter()
            try:
                if await _request(reader, writer, "POST", "/search/upload?k=10", body, ctype) != 200:
                    errors["upload"] += 1
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
                errors["upload"] += 1
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            up_lat.append(1000 * (time.perf_counter() - t))
        writer.close()

    del rng
    t0 = time.perf_counter()
    await asyncio.gather(*[text_client() for _ in range(clients)], *[upload_client() for _ in range(uploaders)])
    wall = time.perf_counter() - t0
    pct = (lambda a, q: float(np.percentile(a, q)) if a else float("nan"))
    return {"clients": clients, "uploaders": uploaders, "seconds": wall, "text_requests": len(lat),
            "rps": len(lat) / wall, "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "uploads": len(up_lat),
            "upload_p50_ms": pct(up_lat, 50), "errors": errors["text"] + errors["upload"]}


def _nifti_bytes() -> bytes:
    import gzip

    import nibabel as nib
    import numpy as np

    vol = np.random.default_rng(0).random((64, 64, 64), dtype=np.float32)  # (X, Y, Z)
    img = nib.Nifti1Image(vol, np.eye(4))
    return gzip.compress(img.to_bytes(), compresslevel=1)


def _wait_ready(port: int, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            async def probe() -> int:
                r, w = await asyncio.open_connection("127.0.0.1", port)
                s = await _request(r, w, "GET", "/health")
                w.close()
                return s

            if asyncio.run(probe()) == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError("server did not start")


def _rss_of(pid: int) -> float:
    """Resident memory of process ``pid`` (Linux /proc), MiB; NaN elsewhere."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(x.split()[1]) / 1024 for x in f if x.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return float("nan")


def run_load(index_size: int, clients: int, seconds: float, encoder: str, uploaders: int = 2,
             repeat: int = 0) -> dict:
    """Build the index, start the server, run the text-only and the mixed phase; returns both."""
    with tempfile.TemporaryDirectory(prefix="medalign-load-") as td:
        t0 = time.perf_counter()
        kind = make_index(Path(td) / "idx", index_size, f"bench-{encoder}")
        build_s = time.perf_counter() - t0
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        src = str(Path(__file__).resolve().parents[1] / "src")
        proc = subprocess.Popen([sys.executable, __file__, "--serve-only", str(Path(td) / "idx"), "--port", str(port),
                                 "--encoder", encoder], env={**os.environ, "PYTHONPATH": src})
        try:
            _wait_ready(port, proc)
            rss_ready = _rss_of(proc.pid)
            asyncio.run(_phase(port, clients, 0, 2.0, b"", repeat))  # warm-up (model load, first batches)
            text = asyncio.run(_phase(port, clients, 0, seconds, b"", repeat))
            mixed = asyncio.run(_phase(port, clients, uploaders, seconds, _nifti_bytes(), repeat))
            rss = _rss_of(proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    return {"index_size": index_size, "index_build_s": build_s, "index": kind, "encoder": encoder, "repeat": repeat, "server_rss_mib": rss, "server_rss_ready_mib": rss_ready,
            "text": text, "mixed": mixed}


def format_load(r: dict) -> str:
    p = r["index"]["params"]
    lines = [f"# HTTP load (loopback, 1 uvicorn worker, {r['index_size']:,}-study index built in "
             f"{r['index_build_s']:.1f}s: {r['index']['kind']} nprobe={p.get('nprobe', '-')}; "
             f"text encoder: {r['encoder']}; " + (f"{r['repeat']} query texts cycled)" if r["repeat"]
                                                  else "every query text unique)"),
             f"server resident memory: {r['server_rss_ready_mib']:.0f} MiB when ready, "
             f"{r['server_rss_mib']:.0f} MiB after the run"]
    for name in ("text", "mixed"):
        h = r[name]
        lines.append(f"{name:5s}: {h['clients']} text clients + {h['uploaders']} upload clients, "
                     f"{h['seconds']:.1f}s: text {h['text_requests']} requests, {h['rps']:.0f} req/s, "
                     f"p50 {h['p50_ms']:.1f} ms, p99 {h['p99_ms']:.1f} ms; uploads {h['uploads']} "
                     f"(p50 {h['upload_p50_ms']:.0f} ms); errors {h['errors']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index-size", default="100k")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--uploaders", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--encoder", choices=("minilm", "fake"), default="minilm")
    ap.add_argument("--repeat-queries", type=int, default=0, help="cycle through this many texts (0 = all unique)")
    ap.add_argument("--serve-only", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if a.serve_only:
        _serve_only(a.serve_only, a.port, a.encoder)
        return 0
    tok = a.index_size.lower()
    n = int(float(tok.rstrip("km")) * (1_000_000 if tok.endswith("m") else 1_000 if tok.endswith("k") else 1))
    r = run_load(n, a.clients, a.seconds, a.encoder, a.uploaders, a.repeat_queries)
    print(format_load(r))
    return 1 if r["text"]["errors"] or r["mixed"]["errors"] else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    raise SystemExit(main())
