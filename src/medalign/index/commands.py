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


def register(app: typer.Typer, synth: typer.Typer | None = None) -> None:
    index_app = typer.Typer(help="Build and extend a case-retrieval index (FAISS + metadata + thumbnails).",
                            no_args_is_help=True)
    app.add_typer(index_app, name="index")

    @index_app.command("build")
    def build(run: Path = typer.Argument(..., help="training run directory (its model embeds the cohort)"),
              manifest: Path = typer.Option(..., "--manifest", help="manifest CSV/Parquet of the studies"),
              out: Path = typer.Option(..., "--out", help="index directory to write"),
              cache: Optional[Path] = typer.Option(None, "--cache", help="preprocessed cohort cache (faster)"),
              exact_max: int = typer.Option(50_000, help="largest cohort searched exactly (IndexFlatIP)"),
              kind: Optional[str] = typer.Option(None, help="force flat|ivf|hnsw")) -> None:
        """Embed a manifest's images and reports with RUN's model into a new index at OUT."""
        from medalign.index.build import build_index

        model = _load_model(run)
        s = build_index(model, manifest, out, cache=cache, run_dir=str(run), exact_max=exact_max, kind=kind)
        typer.echo(f"index {s['index']} ({s['version']}): {s['n_studies']} studies, {s['n_reports']} reports "
                   f"in {s['seconds']:.1f}s")
        typer.echo(f"serve it with: medalign serve {out}")

    @index_app.command("add")
    def add(index_dir: Path = typer.Argument(..., help="existing index directory"),
            run: Path = typer.Option(..., "--run", help="the run that built the index"),
            manifest: Path = typer.Option(..., "--manifest", help="manifest of the studies to add"),
            cache: Optional[Path] = typer.Option(None, "--cache")) -> None:
        """Append studies to an index (same model required; written as a new version, atomically)."""
        from medalign.index.build import add_to_index

        s = add_to_index(index_dir, _load_model(run), manifest, cache=cache)
        typer.echo(f"index {s['index']} ({s['version']}): added {s['added']}, now {s['n_studies']} studies")

    @app.command("serve")
    def serve_cmd(index_dir: Path = typer.Argument(..., help="index directory"),
                  host: str = typer.Option("127.0.0.1", help="bind address; non-loopback needs --token"),
                  port: int = typer.Option(8000),
                  token: Optional[str] = typer.Option(None, help="bearer token (or env MEDALIGN_TOKEN)"),
                  run: Optional[Path] = typer.Option(None, "--run", help="model run (default: the one the index records)"),
                  allowed_host: Optional[List[str]] = typer.Option(
                      None, "--allowed-host", help="extra Host header to answer (repeatable; loopback names and the "
                                                   "bind address always are)")) -> None:
        """Serve the case-retrieval API and web page for INDEX_DIR."""
        from medalign.serve.app import serve
        from medalign.serve.security import check_bind

        tok = token or os.environ.get("MEDALIGN_TOKEN") or None
        check_bind(host, tok)  # before loading anything heavy
        typer.echo(f"serving {index_dir} on http://{host}:{port}/ (Ctrl-C to stop)")
        serve(index_dir, host=host, port=port, token=tok, run_dir=str(run) if run else None,
              extra_hosts=tuple(allowed_host or ()))
