"""CLI: ``medalign train``, ``medalign embed``, ``medalign search``."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from medalign.data.schema import DEFAULT_TOP_K


def register(app: typer.Typer, synth: typer.Typer | None = None) -> None:
    app.command("train")(train)
    app.command("embed")(embed)
    app.command("search")(search)


def train(
    config: Optional[str] = typer.Argument(None, help="YAML config (e.g. configs/brain_clip_cpu.yaml); "
                                           "with --resume it may be left out (the run's own config is used)"),
    overrides: Optional[List[str]] = typer.Argument(None, help="dotted key=value overrides, e.g. train.lr=0.001"),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="output folder (default: runs/<config name>)"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --run-dir from its last resume state"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace the run already in --run-dir (its outputs are deleted)"),
) -> None:
    """Train a recipe; writes config, metrics, checkpoints into the run directory."""
    from medalign.errors import MedAlignError
    from medalign.train.loop import fit

    overrides = list(overrides or [])
    if config is not None and "=" in config and not Path(config).is_file():
        overrides, config = [config] + overrides, None  # `train --resume --run-dir RUN key=value`
    if config is None:
        if not (resume and run_dir is not None):
            raise MedAlignError("give a config file (e.g. configs/brain_clip_cpu.yaml), or --resume --run-dir RUN")
        config = str(Path(run_dir) / "config.yaml")
        if not Path(config).is_file():
            raise MedAlignError(f"{run_dir} holds no run to resume (no config.yaml); start it with a config file")
    cfg = _load(config, overrides)
    rd = run_dir or Path(cfg.get("run_dir") or Path("runs") / Path(config).stem)
    if resume:
        _check_resume_overrides(cfg, overrides, rd)
    _check_cache_shape(cfg)
    try:
        summary = fit(cfg, rd, resume=resume, overwrite=overwrite)
    except ValueError as e:  # a recipe or sampler refusing its settings: one line naming the config
        hint = (" (this recipe needs patients with several studies: e.g. `medalign synth brain "
                "--studies-per-patient 2-4`)" if "patients with >=" in str(e) else "")
        raise MedAlignError(f"{config}: {e}{hint}") from None
    if summary.get("stopped"):
        typer.echo(f"stopped after {summary['steps']} steps; continue with --resume --run-dir {rd}")
    else:
        typer.echo(f"done: {summary['steps']} steps, {summary['epochs']} epochs, best epoch {summary['best_epoch']}"
                   + (", keeping the last (train.select)" if summary.get("select") == "last" else "") + f" -> {rd}")


def _load(config: str, overrides: list[str]) -> dict:
    from medalign.config import ConfigError, load_config
    from medalign.errors import MedAlignError

    try:
        return load_config(config, overrides)
    except ConfigError as e:
        raise MedAlignError(str(e)) from None


def _check_cache_shape(cfg: dict) -> None:
    """data.shape must be the cache's grid: the loop reads the cache as it is, so a different
    data.shape would otherwise be ignored without a word."""
    from medalign.data.cache import INDEX, CohortCache
    from medalign.errors import MedAlignError

    data = cfg.get("data") or {}
    cache_dir, shape = data.get("cache_dir"), data.get("shape")
    if data.get("kind", "cohort") != "cohort" or not cache_dir or not shape or not (Path(cache_dir) / INDEX).is_file():
        return
    have = list(CohortCache(cache_dir).config.shape)
    if [int(v) for v in shape] != [int(v) for v in have]:
        raise MedAlignError(f"data.shape={list(shape)} but the cache {cache_dir} holds {have} volumes: set "
                            f"data.shape={','.join(map(str, have))} (as [D,H,W]) or preprocess with --shape "
                            f"{','.join(map(str, shape))}")


def _check_resume_overrides(cfg: dict, overrides: list[str], run_dir: Path) -> None:
    """A resumed run keeps its own config: an override that would change it is refused by name, not
    silently dropped (only the stop hooks, e.g. train.stop_after_steps, may differ)."""
    import yaml

    from medalign.errors import MedAlignError
    from medalign.train.loop import STOP_HOOKS

    saved_p = Path(run_dir) / "config.yaml"
    if not saved_p.is_file():
        return
    saved = yaml.safe_load(saved_p.read_text(encoding="utf-8")) or {}
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key in {f"train.{k}" for k in STOP_HOOKS}:
            continue
        new, old = cfg, saved
        for part in key.split("."):
            new = new.get(part) if isinstance(new, dict) else None
            old = old.get(part) if isinstance(old, dict) else None
        if new != old:
            raise MedAlignError(f"--resume keeps the run's config, but {key}={new!r} differs from the run's {old!r} "
                                f"({saved_p}); drop the override, or start a new run (--overwrite or another --run-dir)")


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
    checkpoint: str = typer.Option("best", "--checkpoint", help="best or last"),
    shard: Optional[str] = typer.Option(None, "--shard", help="K/N: only shard K (0-based) of N, by study id hash; "
                                        "writes <split|all>.shard-K-of-N.npz (merge: index build --from-embeddings)"),
) -> None:
    """Write image + report embeddings to RUN/embeddings/<split|all>[.shard-K-of-N].npz."""
    from medalign.api import load
    from medalign.data.shards import parse_shard
    from medalign.train.embed import embed_manifest, save_embeddings

    part = parse_shard(shard)  # before loading the model: a bad spec fails at once
    model = load(run, checkpoint=checkpoint)
    m, c = _manifest_and_cache(model, manifest, cache)
    emb = embed_manifest(model, m, c, split=split, progress=True, shard=part)
    name = f"{split or 'all'}" + (f".shard-{part[0]}-of-{part[1]}" if part else "")
    out = save_embeddings(emb, Path(run) / "embeddings" / f"{name}.npz", model_id=model.model_id)
    typer.echo(f"{len(emb['study_id'])} studies -> {out}")


def search(
    run: Path = typer.Argument(..., help="run directory"),
    text: Optional[str] = typer.Option(None, "--text", help="free-text query (report -> images)"),
    study: Optional[str] = typer.Option(None, "--study", help="a study id (case -> cases)"),
    images: Optional[List[str]] = typer.Option(None, "--images", help="seq=path of a raw study, repeatable (e.g. --images flair=a.nii.gz)"),
    k: int = typer.Option(DEFAULT_TOP_K, "--k", help="how many studies to list"),
    manifest: Optional[Path] = typer.Option(None, "--manifest", "-m", help="candidate studies (default: the run's)"),
    split: Optional[str] = typer.Option(None, "--split", help="only candidates of this split"),
    cache: Optional[Path] = typer.Option(None, "--cache", help="preprocessed cache (default: the run's)"),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best or last"),
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
