"""GiMP patch aggregator: time and peak memory per bag vs bag length, Nystrom vs exact attention.

    python benchmarks/gimp.py                      # 1k..100k patches, CPU, inference
    python benchmarks/gimp.py --train              # forward + backward
    python benchmarks/gimp.py --device cuda        # peak = torch.cuda.max_memory_allocated

CPU peak memory: each (method, length) runs in a forked child; we report the growth of the
child's max RSS over its RSS at fork time (ru_maxrss), i.e. the extra memory that bag needed.
Exact attention is skipped (and reported as stopped) once its predicted attention matrices
(layers x heads x N^2 floats, x3 for scores / softmax / grad) exceed --max-exact-gb, so the
benchmark never swaps the shared machine; Nystrom keeps going to 100k.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import torch

from medalign.models.mil import NystromAggregator


def _measure(method: str, n: int, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    agg = NystromAggregator(in_dim=args.in_dim, dim=args.dim, heads=args.heads, num_layers=2,
                            num_landmarks=args.landmarks, attention=method).to(args.device)
    bag = torch.randn(1, n, args.in_dim, device=args.device)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    def step() -> None:
        if args.train:
            agg(bag)["cls"].sum().backward()
        else:
            with torch.no_grad():
                agg(bag)

    step()  # warm-up (first-call allocations); it counts towards the peak, as it is the same work
    t0 = time.perf_counter()
    for _ in range(args.repeats):
        step()
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"method": method, "n": n, "seconds": (time.perf_counter() - t0) / args.repeats, "peak_mb": peak / 2**20}


def _in_child(method: str, n: int, args: argparse.Namespace) -> dict:
    """Fork so each measurement has its own RSS high-water mark (CPU); plain call on CUDA."""
    if args.device.startswith("cuda"):
        return _measure(method, n, args)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        try:
            out = _measure(method, n, args)
        except Exception as e:  # report, do not crash the table
            out = {"method": method, "n": n, "error": repr(e)}
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.waitpid(pid, 0)
    return json.loads(data or b'{"error": "child died (out of memory?)"}')


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", default="1000,2000,5000,10000,20000,50000,100000")
    p.add_argument("--in-dim", type=int, default=1024)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--landmarks", type=int, default=256)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--train", action="store_true", help="forward + backward instead of inference")
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-exact-gb", type=float, default=2.0)
    p.add_argument("--json", default=None, help="also write the rows here")
    p.add_argument("--extras", default=None, help="RUN_DIR: write report_extras/gimp_benchmark.json + PNG there")
    p.add_argument("--load", default=None, help="re-render a previous --json instead of measuring")
    args = p.parse_args(argv)
    if args.load:
        saved = json.loads(open(args.load).read())
        if args.extras:
            write_extras(args.extras, saved["rows"], saved["exact_stopped"], saved["args"])
        return 0
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    lengths = [int(x) for x in args.lengths.split(",")]
    rows, stopped = [], None
    factor = 3 if args.train else 2
    print(f"# GiMP aggregator, 2 layers, in_dim {args.in_dim}, dim {args.dim}, heads {args.heads}, "
          f"landmarks {args.landmarks}, {'train' if args.train else 'inference'}, device {args.device}")
    print(f"{'N':>8} {'method':>8} {'s/bag':>9} {'peak MB':>9}")
    for n in lengths:
        for method in ("nystrom", "exact"):
            if method == "exact":
                need_gb = factor * 2 * args.heads * (n + 1) ** 2 * 4 / 2**30
                if need_gb > args.max_exact_gb:
                    stopped = stopped or {"n": n, "predicted_gb": round(need_gb, 1)}
                    print(f"{n:>8} {'exact':>8} {'skipped':>9} {'~' + format(need_gb, '.1f') + ' GB':>9}")
                    continue
            res = _in_child(method, n, args)
            rows.append(res)
            if "error" in res:
                print(f"{n:>8} {method:>8} error: {res['error']}")
            else:
                print(f"{n:>8} {method:>8} {res['seconds']:>9.3f} {res['peak_mb']:>9.1f}", flush=True)
    if stopped:
        print(f"# exact attention stops at N = {stopped['n']}: its N x N matrices would need "
              f"~{stopped['predicted_gb']} GB (> --max-exact-gb {args.max_exact_gb}); Nystrom memory grows linearly.")
    if args.json:
        from medalign.utils import atomic_write_json

        atomic_write_json(args.json, {"args": vars(args), "rows": rows, "exact_stopped": stopped})
    if args.extras:
        write_extras(args.extras, rows, stopped, vars(args))
    return 0


def write_extras(run_dir: str, rows: list[dict], stopped: dict | None, args: dict) -> None:
    """report_extras/gimp_benchmark.json (table) + gimp_benchmark.png (time and memory vs N, log-log)."""
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medalign.utils import atomic_path, atomic_write_json

    extras = Path(run_dir) / "report_extras"
    ok = [r for r in rows if "error" not in r]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for method in ("nystrom", "exact"):
        rs = [r for r in ok if r["method"] == method]
        axes[0].loglog([r["n"] for r in rs], [r["seconds"] for r in rs], "o-", label=method)
        axes[1].loglog([r["n"] for r in rs], [r["peak_mb"] for r in rs], "o-", label=method)
    axes[0].set(xlabel="patches per bag", ylabel="seconds per bag")
    axes[1].set(xlabel="patches per bag", ylabel="peak extra memory (MB)")
    axes[0].legend()
    fig.tight_layout()
    with atomic_path(extras / "gimp_benchmark.png", suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    mode = "forward+backward" if args.get("train") else "inference"
    md = (f"2-layer aggregator over [CLS; N patches], in_dim {args['in_dim']}, dim {args['dim']}, heads {args['heads']}, "
          f"{args['landmarks']} landmarks, {mode}, device {args['device']}, one bag at a time; peak = growth of the "
          f"process's max RSS (CPU) or max_memory_allocated (CUDA).")
    if stopped:
        md += (f" Exact attention stops at N = {stopped['n']}: its N x N matrices would need "
               f"~{stopped['predicted_gb']} GB.")
    table = {"caption": "Time and peak memory per bag", "columns": ["N", "method", "s/bag", "peak MB"],
             "rows": [[r["n"], r["method"], round(r["seconds"], 3), round(r["peak_mb"], 1)] for r in ok]}
    atomic_write_json(extras / "gimp_benchmark.json", {"title": "GiMP aggregator: Nystrom vs exact attention",
                                                       "markdown": md, "images": ["report_extras/gimp_benchmark.png"],
                                                       "tables": [table]})


if __name__ == "__main__":
    sys.exit(main())
