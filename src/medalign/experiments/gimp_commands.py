"""CLI for GiMP: ``medalign synth omics`` and the ``medalign gimp ...`` group."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def _shared_tcga() -> Path:
    import os

    root = Path(os.environ.get("MEDALIGN_SHARED_DATA", Path(__file__).resolve().parents[3] / ".." / "shared" / "data"))
    return root / "tcga"


def register(app: typer.Typer, synth: typer.Typer) -> None:
    @synth.command("omics")
    def synth_omics(
        out: Optional[Path] = typer.Option(None, "--out", help="output folder (manifest.csv, bags/, expression.csv)"),
        out_arg: Optional[Path] = typer.Argument(None, hidden=True, help="old spelling of --out"),
        n: int = typer.Option(160, help="patients"),
        n_classes: int = typer.Option(2, help="classes"),
        seed: int = typer.Option(0, help="random seed; same seed -> same cohort"),
        feat_dim: int = typer.Option(128, help="patch feature size (ResNet50 features: 1024)"),
        n_genes: int = typer.Option(512, help="genes in expression.csv"),
        n_gene_groups: int = typer.Option(16, help="gene groups (pathways) the genes fall into"),
        informative_groups: int = typer.Option(2, help="gene groups carrying class signal"),
        img_signal: float = typer.Option(1.0, help="strength of the class-specific patch type"),
        gene_signal: float = typer.Option(1.0, help="strength of the class pattern in informative genes"),
        tumour_fraction: float = typer.Option(0.04, help="mean area fraction of class-specific patches"),
        bag_min: int = typer.Option(200, help="fewest patches in a slide's bag"),
        bag_max: int = typer.Option(20000, help="most patches in a slide's bag"),
        fmt: str = typer.Option("h5", help="bag format: h5 | pt | npy (CLAM layout)"),
    ) -> None:
        """Synthetic image-omic cohort (bags with tissue regions + expression with group signal)."""
        from medalign.data.synth.omics import generate_omics_cohort
        from medalign.errors import MedAlignError

        out = out or out_arg
        if out is None:
            raise MedAlignError("give the output folder with --out DIR")

        path = generate_omics_cohort(out, n=n, n_classes=n_classes, seed=seed, feat_dim=feat_dim, n_genes=n_genes,
                                     n_gene_groups=n_gene_groups, informative_groups=informative_groups,
                                     img_signal=img_signal, gene_signal=gene_signal, tumour_fraction=tumour_fraction,
                                     bag_min=bag_min, bag_max=bag_max, fmt=fmt)
        typer.echo(str(path))

    gimp = typer.Typer(help="GiMP image-omic pretraining: real TCGA gene encoders, synthetic ablation.",
                       no_args_is_help=True)
    app.add_typer(gimp, name="gimp")

    @gimp.command("tcga")
    def gimp_tcga(
        out: Path = typer.Option(..., "--out", help="run folder (results.json, report_extras/)"),
        data: Optional[Path] = typer.Option(None, help="TCGA folder (default ../shared/data/tcga)"),
        cohorts: str = typer.Option("blca,coadread,stad", help="comma-separated Xena cohorts"),
        label: str = typer.Option("cohort", help="'cohort' (cancer type) or a metadata column, e.g. oncotree_code"),
        epochs: int = typer.Option(30, help="training epochs of each neural gene encoder"),
        seed: int = typer.Option(0, help="seed for the split, training and bootstrap"),
        dim: int = typer.Option(64, help="embedding size of the gene encoders"),
        n_fragments: int = typer.Option(64, help="GroupMSA: gene fragments"),
        n_groups: int = typer.Option(8, help="GroupMSA: fragment groups"),
        signatures: bool = typer.Option(True, help="order genes by xena_signatures.csv groups"),
        n_boot: int = typer.Option(1000, help="bootstrap resamples for the 95% CIs"),
    ) -> None:
        """GroupMSA vs SNN vs logistic regression vs majority class on real TCGA expression, with bootstrap CIs."""
        from medalign.errors import CohortError
        from medalign.eval.bootstrap import format_ci
        from medalign.experiments.gimp import run_tcga

        root = data or _shared_tcga()
        if not root.exists():
            raise CohortError("TCGA data folder not found (pass --data)", path=str(root))
        res = run_tcga(root, out, cohorts=tuple(c.strip() for c in cohorts.split(",") if c.strip()), label=label,
                       use_signatures=signatures, epochs=epochs, seed=seed, dim=dim, n_fragments=n_fragments,
                       n_groups=n_groups, n_boot=n_boot)
        for name, r in res["results"].items():
            typer.echo(f"{name:22s} acc {format_ci(r['accuracy'])}  macro-F1 {format_ci(r['macro_f1'])}")

    @gimp.command("ablation")
    def gimp_ablation(
        out: Path = typer.Option(..., "--out", help="run folder (results.json, report_extras/)"),
        config: Optional[Path] = typer.Option(None, help="YAML (default configs/gimp_cpu.yaml settings)"),
        manifest: Optional[Path] = typer.Option(None, help="image-omic manifest; default: generate from config"),
        rows: Optional[str] = typer.Option(None, help="comma-separated row names (default: all)"),
        seeds: str = typer.Option("0", help="comma-separated seeds"),
        overrides: Optional[list[str]] = typer.Argument(None, help="dotted key=value overrides, e.g. train.n_boot=200"),
        override: Optional[list[str]] = typer.Option(None, "--set", hidden=True, help="old spelling of the overrides"),
    ) -> None:
        """Paper Table 2-style ablation + t-SNE of CLS_pat on a synthetic image-omic cohort."""
        from medalign.config import load_config
        from medalign.experiments.gimp import DEFAULT_ABLATION, run_ablation

        cfg = load_config(config, list(overrides or []) + list(override or []))
        synth_cfg = {**DEFAULT_ABLATION["synth"], **(cfg.get("synth") or {})}
        train_cfg = {**DEFAULT_ABLATION["train"], **(cfg.get("train") or {})}
        if manifest is None:
            from medalign.data.synth.omics import generate_omics_cohort

            manifest = generate_omics_cohort(out / "cohort", **synth_cfg)
        res = run_ablation(manifest, out, rows=[r.strip() for r in rows.split(",")] if rows else None,
                           seeds=tuple(int(s) for s in seeds.split(",")), log=typer.echo, **train_cfg)
        for row in res["table"]:
            typer.echo(f"{row[0]:34s} acc {row[5]}  F1 {row[6]}  {row[7]} s")
