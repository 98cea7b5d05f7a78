"""CLI commands of the data layer: split, preprocess, inspect (heavy imports inside)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def _ints(text: str, n: int, what: str) -> tuple[int, ...]:
    from medalign.errors import MedAlignError

    try:
        vals = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise MedAlignError(f"{what} must be {n} comma-separated integers, got '{text}'") from None
    if len(vals) != n:
        raise MedAlignError(f"{what} must be {n} comma-separated integers, got '{text}'")
    return vals


def register(app: typer.Typer, synth: typer.Typer) -> None:  # noqa: ARG001 - synth belongs to helper B
    @app.command("split")
    def split_cmd(
        manifest: Path = typer.Argument(..., help="Manifest (CSV or Parquet)."),
        out: Optional[Path] = typer.Option(None, "--out", help="Output manifest (default: overwrite MANIFEST)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the patient-grouped random split."),
        fractions: str = typer.Option("0.8,0.1,0.1", "--fractions", help="train,val,test fractions."),
        counts: Optional[str] = typer.Option(None, "--counts", help="train,val,test study counts, e.g. 211,24,27."),
        stratify: str = typer.Option("label", "--stratify", help="Column to stratify by ('' = none)."),
    ) -> None:
        """Assign patient-grouped, stratified, seeded train/val/test splits."""
        from medalign.data.manifest import load_manifest, make_splits, save_manifest, split_summary
        from medalign.errors import MedAlignError

        df = load_manifest(manifest, check_files=False, absolute_paths=False)
        if "split" in df.columns:
            df = df.drop(columns=["split"])
        try:
            fr = tuple(float(v) for v in fractions.split(","))
        except ValueError:
            raise MedAlignError(f"--fractions must be 3 comma-separated numbers, got '{fractions}'") from None
        cnt = _ints(counts, 3, "--counts") if counts else None
        new = make_splits(df, counts=cnt, fractions=fr, seed=seed, stratify=stratify or None)
        dest = save_manifest(new, out or manifest)
        typer.echo(split_summary(new).to_string())
        typer.echo(f"wrote {dest}")

    @app.command("preprocess")
    def preprocess_cmd(
        manifest: Path = typer.Argument(..., help="Manifest (CSV or Parquet)."),
        cache: Path = typer.Option(..., "--cache", help="Cache directory."),
        config: Optional[Path] = typer.Option(None, "--config", help="YAML; keys of PreprocessConfig "
                                              "(top level, under 'preprocess:' or 'data.preprocess:')."),
        workers: int = typer.Option(2, "--workers", help="Worker processes."),
        keep_going: bool = typer.Option(False, "--keep-going", help="Process the other studies when one fails."),
        shape: Optional[str] = typer.Option(None, "--shape", help="D,H,W e.g. 16,112,112."),
        sequences: Optional[str] = typer.Option(None, "--sequences", help="e.g. dwi,t2s,flair."),
        no_register: bool = typer.Option(False, "--no-register", help="Skip co-registration."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar with an ETA."),
        shard: Optional[str] = typer.Option(None, "--shard", help="K/N: only shard K (0-based) of N, by study id "
                                            "hash (one job of a SLURM array / Kubernetes indexed job)"),
    ) -> None:
        """Orient, co-register, resample, crop/pad and normalise every study into the cache."""
        from medalign.config import load_config
        from medalign.data.cache import preprocess_cohort
        from medalign.data.imaging import PreprocessConfig
        from medalign.data.shards import parse_shard, select_shard

        raw = load_config(config) if config else {}
        if isinstance(raw.get("preprocess"), dict):
            d = dict(raw["preprocess"])
        elif isinstance(raw.get("data"), dict) and isinstance(raw["data"].get("preprocess"), dict):
            d = dict(raw["data"]["preprocess"])
        else:
            d = dict(raw)
        if shape:
            d["shape"] = _ints(shape, 3, "--shape")
        if sequences:
            d["sequences"] = tuple(s.strip() for s in sequences.split(",") if s.strip())
        if no_register:
            d["register"] = False
        cfg = PreprocessConfig.from_dict(d)
        part = parse_shard(shard)
        if part is not None:  # all shards write into one cache (its lock lets them commit side by side)
            from medalign.data.manifest import load_manifest

            manifest = select_shard(load_manifest(manifest), part)
        summary = preprocess_cohort(manifest, cfg, cache, workers=workers, keep_going=keep_going, progress=progress)
        typer.echo(f"{summary['studies']} studies: {summary['processed']} processed, {summary['cached']} already "
                   f"cached, {summary['failed']} failed in {summary['seconds']} s -> {summary['cache_dir']}")
        for e in summary["errors"]:
            typer.echo(f"  failed: {e['error']}", err=True)
        if summary["failed"]:
            # SystemExit, not typer.Exit: with standalone_mode=False click returns Exit codes
            # instead of raising them, and cli.main would report 0.
            raise SystemExit(1)

    @app.command("inspect")
    def inspect_cmd(
        manifest: Path = typer.Argument(..., help="Manifest (CSV or Parquet)."),
        out: Path = typer.Option(..., "--out", help="PNG to write; with --compare a .png (JSON beside it) or a "
                                 "folder (realism.png + realism.json; `medalign report RUN` shows RUN/realism "
                                 "or CACHE/realism)."),
        cache: Optional[Path] = typer.Option(None, "--cache", help="Show preprocessed arrays from this cache."),
        max_studies: int = typer.Option(12, "--max-studies", help="Studies shown (picked evenly across classes)."),
        seed: int = typer.Option(0, "--seed", help="Seed for picking the studies shown."),
        compare: Optional[Path] = typer.Option(None, "--compare", help="Real-cases manifest: write the realism "
                                               "report (histograms, lesion metrics also per 'label' and per "
                                               "'finding' column, SNR) instead of the sheet."),
        compare_cache: Optional[Path] = typer.Option(None, "--compare-cache", help="Cache of the --compare "
                                                     "manifest (default: preprocess it with --cache's config into "
                                                     "real_cache_<hash> beside --out)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier realism report at --out."),
    ) -> None:
        """Write a PNG sheet: mid-axial slices per sequence with report and label, plus cohort stats.

        With --compare: the realism report of the cohort (in --cache) against real cases instead.
        """
        from medalign.data.manifest import load_manifest

        if compare is not None:
            from medalign.data.realism_compare import realism_report, verdict_summary, verdict_table
            from medalign.errors import MedAlignError

            if cache is None:
                raise MedAlignError("--compare needs --cache (the cohort's preprocessed cache: the comparison "
                                    "is on what the model sees)")
            png, js, res = realism_report(manifest, cache, compare, out, real_cache=compare_cache, overwrite=overwrite)
            for e in res["real"].get("failed") or []:
                typer.echo(f"  real case not preprocessed: {e['error']}", err=True)
            typer.echo(verdict_table(res).to_string(index=False))
            typer.echo(f"{verdict_summary(res)}\nwrote {png}\nwrote {js}")
            return
        from medalign.data.inspect import inspect_summary, inspection_sheet

        df = load_manifest(manifest, check_files=cache is None)
        path = inspection_sheet(df, out, cache_dir=cache, max_studies=max_studies, seed=seed)
        s = inspect_summary(df)
        typer.echo(f"{s['studies']} studies, {s['patients']} patients, images per sequence {s['sequences']}")
        typer.echo(f"wrote {path}")
