"""CLI: ``medalign train``, ``medalign embed``, ``medalign search``."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def register(app: typer.Typer, synth: typer.Typer | None = None) -> None:
    app.command("train")(train)
    app.command("embed")(embed)
    app.command("search")(search)


def train(
    config: Path = typer.Argument(..., help="YAML config (e.g. configs/brain_clip_cpu.yaml)"),
    overrides: Optional[List[str]] = typer.Argument(None, help="dotted key=value overrides, e.g. train.lr=0.001"),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="output folder (default: runs/<config name>)"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --run-dir from its last resume state"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace the run already in --run-dir (its outputs are deleted)"),
) -> None:
    """Train a recipe; writes config, metrics, checkpoints into the run directory."""
    from medalign.config import ConfigError, load_config
    from medalign.errors import MedAlignError
    from medalign.train.loop import fit

    try:
        cfg = load_config(config, overrides or [])
    except ConfigError as e:
        raise MedAlignError(str(e)) from None
    rd = run_dir or Path(cfg.get("run_dir") or Path("runs") / Path(config).stem)
    summary = fit(cfg, rd, resume=resume, overwrite=overwrite)
    if summary.get("stopped"):
        typer.echo(f"stopped after {summary['steps']} steps; continue with --resume --run-dir {rd}")
    else:
        typer.echo(f"done: {summary['steps']} steps, {summary['epochs']} epochs, best epoch {summary['best_epoch']} -> {rd}")


def _manifest_and_cache(model, manifest: Optional[Path], cache: Optional[Path]):
    from medalign.errors import MedAlignError

    data = model.config.get("data") or {}
    m = manifest or (Path(data["manifest"]) if data.get("manifest") else None)
    c = cache or model.cache_dir
    if m is None:
        raise MedAlignError("no manifest: pass --manifest (the run's config has none)")
    if c is None:
        raise MedAlignError("no preprocessed cache: pass --cache (the run's config has none)")
    return m, c


def embed(
    run: Path = typer.Argument(..., help="run directory"),
    manifest: Optional[Path] = typer.Option(None, "--manifest", "-m", help="cohort manifest (default: the run's)"),
    split: Optional[str] = typer.Option(None, "--split", help="only this split"),
    cache: Optional[Path] = typer.Option(None, "--cache", help="preprocessed cache (default: the run's)"),
    checkpoint: str = typer.Option("best", "--checkpoint"),
) -> None:
    """Write image + report embeddings to RUN/embeddings/<split|all>.npz."""
    from medalign.api import load
    from medalign.train.embed import embed_manifest, save_embeddings

    model = load(run, checkpoint=checkpoint)
    m, c = _manifest_and_cache(model, manifest, cache)
    emb = embed_manifest(model, m, c, split=split, progress=True)
    out = save_embeddings(emb, Path(run) / "embeddings" / f"{split or 'all'}.npz", model_id=model.model_id)
    typer.echo(f"{len(emb['study_id'])} studies -> {out}")


def search(
    run: Path = typer.Argument(..., help="run directory"),
    text: Optional[str] = typer.Option(None, "--text", help="free-text query (report -> images)"),
    study: Optional[str] = typer.Option(None, "--study", help="a study id (case -> cases)"),
    images: Optional[List[str]] = typer.Option(None, "--images", help="seq=path of a raw study, repeatable (e.g. --images flair=a.nii.gz)"),
    k: int = typer.Option(5, "--k", help="how many studies to list"),
    manifest: Optional[Path] = typer.Option(None, "--manifest", "-m", help="candidate studies (default: the run's)"),
    split: Optional[str] = typer.Option(None, "--split", help="only candidates of this split"),
    cache: Optional[Path] = typer.Option(None, "--cache"),
    checkpoint: str = typer.Option("best", "--checkpoint"),
) -> None:
    """Rank the cohort's studies against a text, a study or raw images; print a table."""
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from medalign.api import load
    from medalign.errors import MedAlignError
    from medalign.train.embed import embed_manifest, load_embeddings

    if sum(x is not None and x != [] for x in (text, study, images)) != 1:
        raise MedAlignError("give exactly one of --text, --study, --images")
    model = load(run, checkpoint=checkpoint)
    stored = Path(run) / "embeddings" / f"{split or 'all'}.npz"
    emb = None
    if manifest is None and cache is None and stored.is_file():
        emb = load_embeddings(stored)
        if str(emb.get("model_id", "")) != model.model_id:
            emb = None  # stale: written by another checkpoint
    if emb is None:
        m, c = _manifest_and_cache(model, manifest, cache)
        emb = embed_manifest(model, m, c, split=split)
    if text is not None:
        q = model.encode_text([text])
        what = f"text: {text!r}"
    elif study is not None:
        ids = list(emb["study_id"])
        q = emb["image_embed"][[ids.index(study)]] if study in ids else model.encode_image(study)
        what = f"study {study}"
    else:
        paths = {}
        for item in images or []:
            if "=" not in item:
                raise MedAlignError(f"--images expects seq=path, got '{item}'")
            seq, p = item.split("=", 1)
            paths[seq.strip()] = p.strip()
        q = model.encode_image(paths)
        what = "images " + ", ".join(f"{s}={Path(p).name}" for s, p in paths.items())
    scores = model.similarity(q, emb["image_embed"])[0]  # (N,)
    order = [i for i in np.argsort(-scores) if study is None or emb["study_id"][i] != study][:k]
    table = Table(title=f"top {len(order)} studies for {what}")
    for c in ("rank", "study", "label", "score", "report"):
        table.add_column(c, justify="right" if c in ("rank", "score") else "left")
    for r, i in enumerate(order, 1):
        rep = str(emb["report"][i])
        table.add_row(str(r), str(emb["study_id"][i]), str(emb["label"][i]), f"{scores[i]:.3f}",
                      rep[:80] + ("..." if len(rep) > 80 else ""))
    Console(width=160).print(table)
