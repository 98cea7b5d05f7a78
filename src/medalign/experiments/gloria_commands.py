"""CLI for the GLoRIA recipe: ``medalign attend`` (word attention overlay; ``--report``: one map per finding
sentence) and ``medalign localise``.

The work is done by :mod:`medalign.experiments.localisation` and :mod:`medalign.experiments.attend_report`
(imported inside the commands so that building the CLI stays cheap); ``--clip RUN`` adds a CLIP run to
the comparison table.
"""
from __future__ import annotations

from typing import Optional

import typer


def register(app: typer.Typer, synth: typer.Typer | None = None) -> None:
    """Add ``attend`` and ``localise`` to ``app`` (``synth`` is unused: no synthetic data here)."""
    @app.command("attend")
    def attend(
        run: str = typer.Argument(..., help="GLoRIA run directory (with --report: a CLIP run too, Grad-CAM maps)"),
        study: str = typer.Option(..., "--study", help="study id in the run's cache"),
        word: str = typer.Option("infarct", "--word", help="word whose attention is shown (not with --report)"),
        text: Optional[str] = typer.Option(None, "--text", help="text containing the word, or with --report the "
                                           "report to map (default: the study's report)"),
        report: bool = typer.Option(False, "--report", help="whole-report mode: one map per finding sentence, "
                                    "one PNG row per sentence (titled with the sentence)"),
        all_sentences: bool = typer.Option(False, "--all-sentences", help="with --report: every sentence, not "
                                           "only those with a finding"),
        out: Optional[str] = typer.Option(None, "--out", help="PNG path (default RUN/attention/<study>_<word>.png, "
                                          "or <study>_report.png)"),
        slices: Optional[int] = typer.Option(None, min=1, help="axial slices: around the lesion centre (default 3), or "
                                             "with --report the most attended of each sentence (default 1)"),
        manifest: Optional[str] = typer.Option(None, help="manifest (default: the run's data.manifest)"),
        cache: Optional[str] = typer.Option(None, help="cache dir (default: the run's data.cache_dir)"),
        checkpoint: str = typer.Option("best", help="best or last"),
        prior: bool = typer.Option(True, "--prior/--no-prior", help="word attention x the normative prior fitted on "
                                   "the run's normal training studies"),
    ) -> None:
        """Overlay the upsampled attention of WORD on the mid-lesion slices of each sequence; with --report,
        one row per finding sentence of the report."""
        if report:
            _attend_report(run, study, text, out, slices or 1, manifest, cache, checkpoint, all_sentences, prior)
            return
        from medalign.experiments.localisation import attend_study

        res = attend_study(run, study, word, text=text, out=out, n_slices=slices or 3, manifest=manifest, prior=prior,
                           cache=cache, checkpoint=checkpoint)
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
        pool: str = typer.Option("ensemble", "--pool", help="zero-shot pooling over a class's prompts: ensemble, mean or max "
                                 "(as `medalign evaluate --pool`)"),
        prior: bool = typer.Option(True, "--prior/--no-prior", help="also score word attention x the normative "
                                   "prior fitted on the run's normal training studies"),
    ) -> None:
        """Localisation (pointing game, mass, voxel AUROC) + retrieval + zero-shot, GLoRIA vs CLIP."""
        from medalign.experiments.localisation import localise_run

        res = localise_run(run, split=split, clip_run=clip, manifest=manifest, cache=cache, n_prompts=n_prompts,
                           n_gallery=gallery, n_boot=n_boot, seed=seed, checkpoint=checkpoint, prompts=prompts,
                           pool=pool, prior=prior)
        for row in res["table_rows"]:
            typer.echo(f"{row[0]:34s} " + "  ".join(f"{str(c):26s}" for c in row[1:]))
        typer.echo(f"wrote {res['json']} and {res['extra']}")


def _attend_report(run: str, study: str, text: Optional[str], out: Optional[str], slices: int,
                   manifest: Optional[str], cache: Optional[str], checkpoint: str, all_sentences: bool,
                   prior: bool = True) -> None:
    """``attend --report``: print where the PNG went and each row's scores (never the sentences: they
    are in the PNG, the user's own file)."""
    from medalign.experiments.attend_report import attend_report

    res = attend_report(run, study, text=text, out=out, n_slices=slices, manifest=manifest, cache=cache,
                        checkpoint=checkpoint, all_sentences=all_sentences, prior=prior)
    kind = "sentences (no finding sentence in the report)" if res["every_sentence"] else "finding sentences"
    typer.echo(f"{res['png']}  ({len(res['rows'])} rows = {kind}; {res['method']})")
    for r in res["rows"]:
        words = f"{r['words']} content words" if r["words"] else "whole sentence"
        line = f"  row {r['sentence']}: {words}, axial slice(s) {r['slices']}"
        if r.get("scores"):
            sc = r["scores"]
            auroc = "—" if sc["auroc"] is None else f"{sc['auroc']:.3f}"
            line += f", pointing {sc['pointing']:.2f}  mass {sc['mass']:.3f}  auroc {auroc}"
        typer.echo(line)
    if res.get("uniform"):
        typer.echo(f"  (uniform mass {res['uniform']['mass']:.3f})")
