"""How well each frozen text encoder separates the five classes on independently written reports.

    python benchmarks/text_encoders.py [--encoder NAME=PATH ...] [--out results.json]

No training: every impression of the hand-written corpus (tests/data/corpus/reports.csv) is
encoded by each encoder (through :class:`medalign.models.text.TextEncoder`, the code training
uses) and L2-normalised; then, on the corpus's TEST half,

- ``dev_centroid``: nearest class centroid (cosine), centroids = mean embedding of each class
  over the DEV half;
- ``prompt_ensemble``: nearest class by the mean embedding of the prompts written for the
  issue-16 test (benchmarks/text_generalisation_prompts.yaml, presence prompts), i.e. the
  text-only analogue of ensemble zero-shot.

Default: the bundled MiniLM only (``minilm``), so it runs offline with nothing extra. Add any
local model folder, e.g. ``--encoder mpnet=/path/to/all-mpnet-base-v2`` or a biomedical BERT
you have on disk (no registry package ships biomedical weights). CIs: percentile bootstrap
over test reports (medalign.eval.bootstrap); each encoder after the first also gets the paired
difference to the first one (same resamples of reports). Prints the encoders' size and the wall
time of loading and of encoding the corpus (one thread unless OMP_NUM_THREADS says otherwise).
"""
from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CORPUS = HERE.parent / "tests" / "data" / "corpus" / "reports.csv"
PROMPTS = HERE / "text_generalisation_prompts.yaml"


def _folder_mb(path: str) -> float:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2**20


def _nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Row-wise argmax cosine between unit rows of ``x`` (N, D) and ``centroids`` (C, D)."""
    c = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)
    return (x @ c.T).argmax(1)


def measure(name: str, path: str | None, rows: list[dict], prompts: dict, pooling: str, max_length: int) -> dict:
    """Encode the corpus (and prompts) with one encoder; per-report correctness on the test half."""
    import torch
    import transformers  # noqa: F401  (imported before the clock starts: load_s is the model's own)

    from medalign.data.schema import CLASSES
    from medalign.models.text import TextEncoder

    enc = TextEncoder(path, pooling=pooling, max_length=max_length, cache_dir=False)
    t0 = time.perf_counter()
    enc._load()  # load once outside the timed encoding
    t_load = time.perf_counter() - t0
    texts = [r["text"] for r in rows]
    t0 = time.perf_counter()
    x = enc.sentence(texts).numpy()  # (N, Dt)
    t_enc = time.perf_counter() - t0
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    y = np.array([CLASSES.index(r["label"]) for r in rows])
    dev = np.array([r["split"] == "dev" for r in rows])
    cent = np.stack([x[dev & (y == k)].mean(0) for k in range(len(CLASSES))])  # (C, Dt)
    pe = enc.sentence([p for c in CLASSES for p in prompts[c]["presence"]]).numpy()
    pe = pe / np.linalg.norm(pe, axis=1, keepdims=True)
    owner = np.array([k for k, c in enumerate(CLASSES) for _ in prompts[c]["presence"]])
    pcent = np.stack([pe[owner == k].mean(0) for k in range(len(CLASSES))])  # (C, Dt)
    test = ~dev
    n_params = sum(p.numel() for p in enc._model.parameters())
    return {
        "name": name, "path": enc.name_or_path, "dim": enc.dim, "params_M": n_params / 1e6,
        "folder_MB": _folder_mb(enc.name_or_path), "threads": torch.get_num_threads(),
        "load_s": t_load, "encode_s": t_enc, "n_texts": len(texts),
        "ok": {"dev_centroid": (_nearest(x[test], cent) == y[test]).astype(float),
               "prompt_ensemble": (_nearest(x[test], pcent) == y[test]).astype(float)},
        "y_test": y[test],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--encoder", action="append", default=None, metavar="NAME=PATH",
                    help="an encoder to measure (repeatable); PATH 'default' = bundled MiniLM")
    ap.add_argument("--pooling", default="mean")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from medalign.data.schema import CLASSES
    from medalign.eval.bootstrap import bootstrap_ci, format_ci
    from medalign.eval.zeroshot import load_prompts

    rows = list(csv.DictReader(CORPUS.open(encoding="utf-8")))
    prompts = load_prompts(PROMPTS)
    specs = [e.split("=", 1) if "=" in e else (e, e) for e in (args.encoder or ["minilm=default"])]
    results = [measure(n, None if p == "default" else p, rows, prompts, args.pooling, args.max_length)
                for n, p in specs]
    out: dict = {"corpus": str(CORPUS.relative_to(HERE.parent)), "n_test": int(len(results[0]["y_test"])),
                 "n_dev": sum(r["split"] == "dev" for r in rows), "pooling": args.pooling,
                 "max_length": args.max_length, "encoders": {}}
    base = results[0]
    for r in results:
        o = {k: r[k] for k in ("path", "dim", "params_M", "folder_MB", "threads", "load_s", "encode_s", "n_texts")}
        print(f"{r['name']}: {r['dim']}-d, {r['params_M']:.1f} M parameters, {r['folder_MB']:.0f} MB on disk; "
              f"load {r['load_s']:.1f} s, encode {r['n_texts']} texts {r['encode_s']:.1f} s ({r['threads']} threads)")
        for metric, ok in r["ok"].items():
            ci = bootstrap_ci(np.mean, ok, n=args.n_boot, seed=0)
            o[metric] = ci
            o[f"{metric}_by_class"] = {c: float(ok[r["y_test"] == k].mean()) for k, c in enumerate(CLASSES)}
            line = f"  {metric:16s} test accuracy {format_ci(ci)} (n={len(ok)})"
            if r is not base:
                d = bootstrap_ci(np.mean, ok - base["ok"][metric], n=args.n_boot, seed=0)
                o[f"{metric}_minus_{base['name']}"] = d
                line += f"; minus {base['name']} {format_ci(d)} (paired)"
            print(line)
        out["encoders"][r["name"]] = o
    if args.out:
        from medalign.utils import atomic_write_json
        atomic_write_json(args.out, json.loads(json.dumps(out, default=float)))


if __name__ == "__main__":
    main()
