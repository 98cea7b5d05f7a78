"""CLI: ``medalign evaluate RUN`` and ``medalign report RUN [RUN ...]``."""
from __future__ import annotations

from pathlib import Path
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
        pool: str = typer.Option("ensemble", help="zero-shot pooling over a class's prompts: ensemble (mean prompt "
                                  "embedding, as `classify`), mean or max of the scores"),
        absence: str = typer.Option("ignore", help="absence prompts: ignore or subtract"),
        prompts: Optional[str] = typer.Option(None, help="prompts YAML (default: medalign/eval/prompts.yaml)"),
        n_boot: int = typer.Option(1000, help="bootstrap resamples for the 95% CIs"),
        seed: int = typer.Option(0, help="seed for bootstrap and probes"),
        checkpoint: str = typer.Option("best", help="best or last"),
        supervised_epochs: Optional[int] = typer.Option(None, help="epochs of the supervised baseline (default: the run's)"),
        out: Optional[str] = typer.Option(None, "--out", help="results folder for a --manifest the run's cache does not "
                                          "hold (default RUN/eval_external/<manifest name>)"),
    ) -> None:
        """Embed the split, compute retrieval / zero-shot / probe metrics with CIs; write RUN/eval/.

        With --manifest naming studies the cache does not hold (any labelled folder, e.g. from
        `medalign ingest`), they are preprocessed with the run's settings and scored into --out."""
        from medalign.errors import MedAlignError
        from medalign.eval.bootstrap import format_ci
        from medalign.eval.run import evaluate_run

        if pool not in ("ensemble", "mean", "max"):
            raise MedAlignError(f"--pool must be ensemble, mean or max, got '{pool}'")
        if absence not in ("ignore", "subtract"):
            raise MedAlignError(f"--absence must be ignore or subtract, got '{absence}'")
        if manifest is not None and _external(run, manifest, cache):
            from medalign.eval.external import evaluate_external

            m = evaluate_external(run, manifest, out=out, cache=cache, split=split, prompts=prompts, pool=pool,
                                  absence=absence, n_boot=n_boot, seed=seed, checkpoint=checkpoint, say=typer.echo)
            for name, ci in m["headline"].items():
                typer.echo(f"{name:32s} {format_ci(ci)}")
            if m.get("majority_baseline") is not None:
                typer.echo(f"{'majority-class accuracy':32s} {m['majority_baseline']:.3f}")
            return
        m = evaluate_run(run, split=split, manifest=manifest, cache=cache, baselines=baselines, pool=pool,
                         absence=absence, prompts=prompts, n_boot=n_boot, seed=seed, checkpoint=checkpoint,
                         supervised_epochs=supervised_epochs)
        for name, ci in m["headline"].items():
            typer.echo(f"{name:32s} {format_ci(ci)}")

    app.command("classify")(classify)
    app.command("compare")(compare)

    @app.command("report")
    def report(
        runs: List[str] = typer.Argument(..., help="one or more run directories"),
        out: str = typer.Option("report.html", help="HTML output (Markdown written beside it as .md)"),
        split: str = typer.Option("test", help="split evaluated"),
        thumbnails: bool = typer.Option(True, "--thumbnails/--no-thumbnails", help="slice thumbnails from the cache"),
        overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing --out page"),
    ) -> None:
        """One self-contained HTML page (+ Markdown) for the runs; comparison table given several."""
        from medalign.errors import MedAlignError
        from medalign.eval.report import build_report

        if Path(out).exists() and not overwrite:
            raise MedAlignError(f"{out} exists (an earlier report): pass --overwrite, or another --out")

        html_p, md_p = build_report(runs, out, split=split, thumbnails=thumbnails)
        typer.echo(f"report: {html_p}\nmarkdown: {md_p}")


def _external(run: str, manifest: str, cache: Optional[str]) -> bool:
    """Whether --manifest names studies that the cache (--cache, else the run's) does not hold."""
    import yaml

    from medalign.data.manifest import load_manifest
    from medalign.eval.external import cache_holds

    if cache is None:
        cfg_p = Path(run) / "config.yaml"
        cfg = yaml.safe_load(cfg_p.read_text(encoding="utf-8")) if cfg_p.is_file() else {}
        cache = ((cfg or {}).get("data") or {}).get("cache_dir")
    return not cache_holds(cache, load_manifest(manifest, check_files=False))


def classify(
    run: str = typer.Argument(..., help="run directory"),
    studies: Optional[List[str]] = typer.Argument(None, help="study ids in the run's cache, or DICOM study folders"),
    images: Optional[List[str]] = typer.Option(None, "--images", help="seq=path of one raw study, repeatable "
                                               "(e.g. --images flair=a.nii.gz --images dwi=a_dwi.nii.gz)"),
    prompts: Optional[str] = typer.Option(None, "--prompts", help="prompts YAML (default: medalign/eval/prompts.yaml, "
                                          "the set `medalign evaluate` uses)"),
    pool: str = typer.Option("ensemble", "--pool", help="pooling over a class's prompts: ensemble, mean or max"),
    cache: Optional[str] = typer.Option(None, "--cache", help="preprocessed cache for study ids (default: the run's)"),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best or last"),
    neighbours: Optional[float] = typer.Option(None, "--neighbours", help="weight in [0, 1] of the vote of the k nearest "
                                               "training studies with the same sequences (0: zero-shot alone; 1: the vote "
                                               "alone; default: the run's readout.neighbours, 0 unless trained with it)"),
    k: Optional[int] = typer.Option(None, "--k", help="training studies that vote (default: the run's readout.k, 20)"),
    bank: Optional[str] = typer.Option(None, "--bank", help="labelled manifest whose train split votes (default: the "
                                       "run's data.manifest)"),
    mirror: Optional[bool] = typer.Option(None, "--mirror/--no-mirror", help="test-time left-right mirroring: each "
                                          "embedding the mean over the study and its mirror (default: the run's "
                                          "readout.mirror, off unless trained with it)"),
    out: Optional[str] = typer.Option(None, "--out", help="also write the results as JSON here"),
) -> None:
    """Classification of studies: the top class and every class's probability (zero-shot, or blended
    with the vote of the nearest training studies)."""
    from medalign.api import load
    from medalign.errors import MedAlignError
    from medalign.utils import atomic_write_json

    items: list = [s if not Path(s).is_dir() else Path(s) for s in (studies or [])]
    if images:
        paths = {}
        for item in images:
            if "=" not in item:
                raise MedAlignError(f"--images expects seq=path, got '{item}'")
            seq, p = item.split("=", 1)
            paths[seq.strip()] = p.strip()
        items.append(paths)
    if not items:
        raise MedAlignError("give study ids, DICOM study folders or --images seq=path")
    model = load(run, checkpoint=checkpoint, **({"cache_dir": cache} if cache else {}))
    res = model.classify(items, prompts=prompts, pool=pool, neighbours=neighbours, k=k, bank=bank, mirror=mirror)
    for r, item in zip(res, items):
        if isinstance(item, dict):
            r["study"] = ", ".join(f"{k}={Path(v).name}" for k, v in item.items())
        probs = "  ".join(f"{c} {p:.2f}" for c, p in sorted(r["probabilities"].items(), key=lambda kv: -kv[1]))
        typer.echo(f"{r['study']}: {r['label']}  ({probs})")
    r0 = res[0]
    typer.echo(f"prompt set {r0['prompt_set']}, pool {pool}, logit scale {r0['logit_scale']:.1f}"
               + (f"; with the vote of the {r0['k']} nearest training studies at weight {r0['neighbours']:g}"
                  if r0.get("neighbours") else "") + ("; each embedding the mean with its left-right mirror"
                                                      if r0["mirror"] else ""))
    if out:
        atomic_write_json(out, res)


def compare(
    run_a: str = typer.Argument(..., help="first evaluated run directory"),
    run_b: str = typer.Argument(..., help="second evaluated run directory"),
    split: str = typer.Option("test", "--split", help="split both runs were evaluated on"),
    k: int = typer.Option(5, "--k", help="R@k for report->image retrieval"),
    n_boot: int = typer.Option(1000, "--n-boot", help="paired bootstrap resamples"),
    seed: int = typer.Option(0, "--seed", help="bootstrap seed"),
    out: Optional[str] = typer.Option(None, "--out", help="also write the comparison as JSON here"),
) -> None:
    """A vs B on the same studies: each metric and the difference A - B with a paired bootstrap 95% CI."""
    from medalign.eval.bootstrap import format_ci
    from medalign.eval.compare import compare_runs
    from medalign.utils import atomic_write_json

    res = compare_runs(run_a, run_b, split=split, k=k, n_boot=n_boot, seed=seed)
    typer.echo(f"{res['n']} studies of split '{split}'; A = {run_a}, B = {run_b}")
    for m in res["metrics"].values():
        typer.echo(f"{m['title']:28s} A {format_ci(m['a'])}  B {format_ci(m['b'])}  A-B {format_ci(m['diff'])}")
    if out:
        atomic_write_json(out, res)
