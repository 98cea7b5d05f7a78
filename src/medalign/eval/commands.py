"""CLI: ``medalign evaluate RUN`` and ``medalign report RUN [RUN ...]``."""
from __future__ import annotations

from typing import List, Optional

import typer


def register(app: typer.Typer, synth: typer.Typer | None = None) -> None:
    @app.command("evaluate")
    def evaluate(
        run: str = typer.Argument(..., help="run directory (has config.yaml and checkpoints/)"),
        split: str = typer.Option("test", help="split to evaluate"),
        manifest: Optional[str] = typer.Option(None, help="manifest (default: the run's data.manifest)"),
        cache: Optional[str] = typer.Option(None, help="preprocessed cache dir (default: the run's data.cache_dir)"),
        baselines: bool = typer.Option(True, "--baselines/--no-baselines", help="also run the sanity-check baselines"),
        pool: str = typer.Option("mean", help="zero-shot pooling over a class's prompts: mean or max"),
        absence: str = typer.Option("ignore", help="absence prompts: ignore or subtract"),
        prompts: Optional[str] = typer.Option(None, help="prompts YAML (default: medalign/eval/prompts.yaml)"),
        n_boot: int = typer.Option(1000, help="bootstrap resamples for the 95% CIs"),
        seed: int = typer.Option(0, help="seed for bootstrap and probes"),
        checkpoint: str = typer.Option("best", help="best or last"),
        supervised_epochs: Optional[int] = typer.Option(None, help="epochs of the supervised baseline (default: the run's)"),
    ) -> None:
        """Embed the split, compute retrieval / zero-shot / probe metrics with CIs; write RUN/eval/."""
        from medalign.errors import MedAlignError
        from medalign.eval.run import evaluate_run

        if pool not in ("mean", "max"):
            raise MedAlignError(f"--pool must be mean or max, got '{pool}'")
        if absence not in ("ignore", "subtract"):
            raise MedAlignError(f"--absence must be ignore or subtract, got '{absence}'")
        m = evaluate_run(run, split=split, manifest=manifest, cache=cache, baselines=baselines, pool=pool,
                         absence=absence, prompts=prompts, n_boot=n_boot, seed=seed, checkpoint=checkpoint,
                         supervised_epochs=supervised_epochs)
        from medalign.eval.bootstrap import format_ci

        for name, ci in m["headline"].items():
            typer.echo(f"{name:32s} {format_ci(ci)}")

    @app.command("report")
    def report(
        runs: List[str] = typer.Argument(..., help="one or more run directories"),
        out: str = typer.Option("report.html", help="HTML output (Markdown written beside it as .md)"),
        split: str = typer.Option("test", help="split evaluated"),
        thumbnails: bool = typer.Option(True, "--thumbnails/--no-thumbnails", help="slice thumbnails from the cache"),
    ) -> None:
        """One self-contained HTML page (+ Markdown) for the runs; comparison table given several."""
        from medalign.eval.report import build_report

        html_p, md_p = build_report(runs, out, split=split, thumbnails=thumbnails)
        typer.echo(f"report: {html_p}\nmarkdown: {md_p}")
