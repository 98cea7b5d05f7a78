"""CLI: ``medalign index build|add`` and ``medalign serve``."""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer


def _load_model(run: Path):
    from medalign.errors import MedAlignError

    try:
        from medalign.api import load
    except ImportError as e:  # pragma: no cover - api arrives with the training area
        raise MedAlignError(f"cannot load a model: {e}") from None
    if not Path(run).is_dir():
        raise MedAlignError(f"run directory not found: {run}")
    return load(run)


def _echo_index_summary(index_dir: Path) -> None:
    """Print each FAISS index's kind, search setting, measured recall@10 and estimated memory."""
    from medalign.index.faiss_index import memory_bytes
    from medalign.index.store import IndexStore

    store = IndexStore.open(index_dir)
    for name in ("image", "text"):
        vi = getattr(store, f"{name}_index")
        p = vi.params
        knob = next((f"{k}={p[k]}" for k in ("nprobe", "efSearch") if k in p), "exact")
        low = f" (95% lower bound {p['recall10_lower']:.3f})" if "recall10_lower" in p else ""
        rec = f"recall@10 {p['recall10']:.3f}{low} on {p['recall_queries']} held-back vectors" if "recall10" in p else \
            "recall@10 1.000 (exact)"
        mib = memory_bytes(vi.kind, vi.ntotal, vi.dim, p) / 2**20
        typer.echo(f"  {name}: {vi.kind} {knob}, {vi.ntotal} vectors, {rec}, ~{mib:.1f} MiB in memory")


def register(app: typer.Typer, synth: typer.Typer | None = None) -> None:
    index_app = typer.Typer(help="Build and extend a case-retrieval index (FAISS + metadata + thumbnails).",
                            no_args_is_help=True)
    app.add_typer(index_app, name="index")

    @index_app.command("build")
    def build(run: Path = typer.Argument(..., help="training run directory (its model embeds the cohort)"),
              manifest: Optional[Path] = typer.Option(None, "--manifest", help="manifest CSV/Parquet of the studies"),
              out: Path = typer.Option(..., "--out", help="index directory to write"),
              cache: Optional[Path] = typer.Option(None, "--cache", help="preprocessed cohort cache (faster)"),
              from_embeddings: Optional[List[Path]] = typer.Option(
                  None, "--from-embeddings", help="merge 'medalign embed [--shard K/N]' .npz files instead of "
                                                  "embedding a manifest (repeatable; no thumbnails)"),
              exact_max: int = typer.Option(50_000, help="largest cohort searched exactly (IndexFlatIP)"),
              kind: Optional[str] = typer.Option(None, help="force flat|ivf|ivfsq|hnsw")) -> None:
        """Embed a manifest's images and reports with RUN's model (or merge embedding shards) into OUT."""
        from medalign.errors import MedAlignError
        from medalign.index.build import build_from_embeddings, build_index

        if (manifest is None) == (not from_embeddings):
            raise MedAlignError("give exactly one of --manifest and --from-embeddings")
        model = _load_model(run)
        if from_embeddings:
            s = build_from_embeddings(model, from_embeddings, out, run_dir=str(run), exact_max=exact_max, kind=kind)
        else:
            s = build_index(model, manifest, out, cache=cache, run_dir=str(run), exact_max=exact_max, kind=kind)
        typer.echo(f"index {s['index']} ({s['version']}): {s['n_studies']} studies, {s['n_reports']} reports "
                   f"in {s['seconds']:.1f}s")
        _echo_index_summary(out)
        typer.echo(f"serve it with: medalign serve {out}")

    @index_app.command("add")
    def add(index_dir: Path = typer.Argument(..., help="existing index directory"),
            run: Path = typer.Option(..., "--run", help="the run that built the index"),
            manifest: Path = typer.Option(..., "--manifest", help="manifest of the studies to add"),
            cache: Optional[Path] = typer.Option(None, "--cache", help="preprocessed cohort cache (faster)")) -> None:
        """Append studies to an index (same model required; written as a new version, atomically)."""
        from medalign.index.build import add_to_index

        s = add_to_index(index_dir, _load_model(run), manifest, cache=cache)
        typer.echo(f"index {s['index']} ({s['version']}): added {s['added']}, now {s['n_studies']} studies")
        _echo_index_summary(index_dir)

    @app.command("serve")
    def serve_cmd(index_dir: Path = typer.Argument(..., help="index directory"),
                  host: str = typer.Option("127.0.0.1", help="bind address; non-loopback needs --token"),
                  port: int = typer.Option(8000, help="TCP port"),
                  token: Optional[str] = typer.Option(None, help="bearer token (or env MEDALIGN_TOKEN)"),
                  run: Optional[Path] = typer.Option(None, "--run", help="model run (default: the one the index records)"),
                  allowed_host: Optional[List[str]] = typer.Option(
                      None, "--allowed-host", help="extra Host header to answer (repeatable; loopback names and the "
                                                   "bind address always are)"),
                  batch_window_ms: float = typer.Option(2.0, help="wait this long to batch concurrent text queries"),
                  cache_size: int = typer.Option(4096, help="query embeddings kept (LRU; 0 = off)"),
                  max_uploads: int = typer.Option(1, help="uploads preprocessed at once (more queue, then 503)"),
                  reload_s: float = typer.Option(1.0, help="check the index for a new version this often "
                                                           "(negative = never)"),
                  volumes: Optional[Path] = typer.Option(None, "--volumes", help="preprocessed cohort cache for the "
                                                         "attention overlays (default: the run's data.cache_dir)"),
                  overlay_dir: Optional[Path] = typer.Option(None, "--overlay-dir", help="also keep drawn overlays "
                                                             "on disk here (off by default: a file per query is "
                                                             "a trace of what was searched)")) -> None:
        """Serve the case-retrieval API and web page for INDEX_DIR (new index versions are picked up live)."""
        from medalign.serve.app import serve
        from medalign.serve.security import check_bind

        tok = token or os.environ.get("MEDALIGN_TOKEN") or None
        check_bind(host, tok)  # before loading anything heavy
        typer.echo(f"serving {index_dir} on http://{host}:{port}/ (Ctrl-C to stop)")
        serve(index_dir, host=host, port=port, token=tok, run_dir=str(run) if run else None,
              extra_hosts=tuple(allowed_host or ()), batch_window_s=batch_window_ms / 1000, cache_size=cache_size,
              max_uploads=max_uploads, reload_s=reload_s, volumes=volumes, overlay_dir=overlay_dir)
