"""CLI for the GLoRIA recipe: ``medalign attend`` (word attention overlay) and ``medalign localise``.

The work is done by :mod:`medalign.experiments.localisation` (imported inside the commands so
that building the CLI stays cheap); ``--clip RUN`` adds a CLIP run to the comparison table.
"""
from __future__ import annotations

from typing import Optional

import typer


def register(app: typer.Typer, synth: typer.Typer | None = None) -> None:
    """Add ``attend`` and ``localise`` to ``app`` (``synth`` is unused: no synthetic data here)."""
    @app.command("attend")
    def attend(
        run: str = typer.Argument(..., help="GLoRIA run directory"),
        study: str = typer.Option(..., "--study", help="study id in the run's cache"),
        word: str = typer.Option("infarct", "--word", help="word whose attention is shown"),
        text: Optional[str] = typer.Option(None, "--text", help="text containing the word (default: the study's report)"),
        out: Optional[str] = typer.Option(None, "--out", help="PNG path (default RUN/attention/<study>_<word>.png)"),
        slices: int = typer.Option(3, help="axial slices around the lesion centre"),
        manifest: Optional[str] = typer.Option(None, help="manifest (default: the run's data.manifest)"),
        cache: Optional[str] = typer.Option(None, help="cache dir (default: the run's data.cache_dir)"),
        checkpoint: str = typer.Option("best", help="best or last"),
    ) -> None:
        """Overlay the upsampled attention of WORD on the mid-lesion slices of each sequence."""
        from medalign.experiments.localisation import attend_study

        res = attend_study(run, study, word, text=text, out=out, n_slices=slices, manifest=manifest, cache=cache,
                           checkpoint=checkpoint)
        typer.echo(f"{res['png']}  (word '{res['word']}' in: {res['text'][:80]!r})")
        if res.get("scores"):
            s = res["scores"]
            typer.echo(f"pointing {s['pointing']:.2f}  mass {s['mass']:.3f}  auroc {s['auroc']:.3f}  "
                       f"(uniform mass {res['uniform']['mass']:.3f})")

    @app.command("localise")
    def localise(
        run: str = typer.Argument(..., help="GLoRIA run directory"),
        split: str = typer.Option("test", help="split to evaluate"),
        clip: Optional[str] = typer.Option(None, "--clip", help="a CLIP run to compare with (Grad-CAM maps)"),
        manifest: Optional[str] = typer.Option(None, help="manifest (default: the run's data.manifest)"),
        cache: Optional[str] = typer.Option(None, help="cache dir (default: the run's data.cache_dir)"),
        n_prompts: int = typer.Option(20, help="generated prompts per class for zero-shot"),
        gallery: int = typer.Option(6, help="studies in the attention gallery"),
        n_boot: int = typer.Option(1000, help="bootstrap resamples for the 95% CIs"),
        seed: int = typer.Option(0, help="seed for prompts and bootstrap"),
        checkpoint: str = typer.Option("best", help="best or last"),
        prompts: Optional[str] = typer.Option(None, "--prompts", help="prompts YAML of the `medalign evaluate` "
                                              "protocol (default: medalign/eval/prompts.yaml)"),
        pool: str = typer.Option("mean", "--pool", help="zero-shot pooling over a class's prompts: mean or max "
                                 "(as `medalign evaluate --pool`)"),
    ) -> None:
        """Localisation (pointing game, mass, voxel AUROC) + retrieval + zero-shot, GLoRIA vs CLIP."""
        from medalign.experiments.localisation import localise_run

        res = localise_run(run, split=split, clip_run=clip, manifest=manifest, cache=cache, n_prompts=n_prompts,
                           n_gallery=gallery, n_boot=n_boot, seed=seed, checkpoint=checkpoint, prompts=prompts,
                           pool=pool)
        for row in res["table_rows"]:
            typer.echo(f"{row[0]:34s} " + "  ".join(f"{str(c):26s}" for c in row[1:]))
        typer.echo(f"wrote {res['json']} and {res['extra']}")

