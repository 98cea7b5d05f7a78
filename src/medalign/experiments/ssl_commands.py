"""``medalign ssl ...``: the command line of the self-supervised experiments.

``label-efficiency`` (medalign.experiments.label_efficiency: SimCLR / MICLe vs. scratch at
1 / 10 / 100 % labels) and ``hlss-knn`` (medalign.experiments.hlss_knn: kNN at slab/slice,
study and patient level). Only typer commands and argument parsing live here; the experiments
are imported inside the commands so ``medalign --help`` stays instant.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def _parse_pool_levels(text: str):
    """"all" -> "all", "last" -> None (last level only), "1,2" -> [1, 2]."""
    from medalign.errors import MedAlignError

    t = text.strip().lower()
    if t in ("all", "last"):
        return "all" if t == "all" else None
    try:
        return [int(i) for i in t.split(",") if i.strip()]
    except ValueError:
        raise MedAlignError(f"--pool-levels must be 'all', 'last' or level indices like '1,2', got '{text}'") from None


def _parse_stride(text: str, spatial_dims: int):
    """"2" -> 2, "1,2,2" -> [1, 2, 2] (one value per spatial axis)."""
    from medalign.errors import MedAlignError

    try:
        vals = [int(i) for i in text.split(",") if i.strip()]
    except ValueError:
        vals = []
    if len(vals) == 1:
        return vals[0]
    if len(vals) != spatial_dims or min(vals) < 1:
        raise MedAlignError(f"--stem-stride must be one integer or {spatial_dims} comma-separated ones, got '{text}'")
    return vals


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def register(app: typer.Typer, synth: typer.Typer) -> None:
    """Add the ``ssl`` command group (``synth`` is the shared synth group; nothing of it here)."""
    ssl = typer.Typer(help="Self-supervised pretraining experiments: SimCLR / MICLe label efficiency, HLSS kNN.",
                      no_args_is_help=True)
    app.add_typer(ssl, name="ssl")

    @ssl.command("label-efficiency")
    def label_efficiency_cmd(
        out: Path = typer.Option(..., "--out", help="Output folder (results JSON, report_extras/, pretrained/)."),
        dataset: str = typer.Option("pneumoniamnist", help="pneumoniamnist | brain"),
        data_path: Optional[Path] = typer.Option(None, "--data", help="pneumoniamnist: the .npz (default ../shared/data)."),
        manifest: Optional[Path] = typer.Option(None, help="brain: cohort manifest (with train/test split)."),
        cache_dir: Optional[Path] = typer.Option(None, "--cache", "--cache-dir", help="brain: preprocessed cohort cache."),
        methods: str = typer.Option("scratch,simclr,micle,clip", help="Comma list: scratch, simclr, micle, clip."),
        clip_run: Optional[Path] = typer.Option(None, help="A brain-CLIP run dir for the 'clip' baseline."),
        fractions: str = typer.Option("0.01,0.1,1.0", help="Label fractions."),
        channels: str = typer.Option("16,32,64", help="Encoder feature maps per level."),
        layer_order: str = typer.Option("cbr", help="Encoder blocks: cbr (Conv-BatchNorm-ReLU), cgr, gcr (paper)."),
        global_pool: str = typer.Option("avgmax", help="Encoder global pooling: avgmax, avg, max."),
        pool_levels: str = typer.Option("all", help="Pooled levels: all, last, or indices like 1,2."),
        stem_stride: str = typer.Option("1", help="Strided stem: 1 (none), 2, or per axis like 1,2,2 (D,H,W)."),
        pretrain_epochs: int = typer.Option(15, help="SimCLR/MICLe pretraining epochs."),
        batch_size: int = typer.Option(128, help="Pretraining batch size."),
        lr: float = typer.Option(1e-3, help="Pretraining learning rate."),
        finetune_steps: int = typer.Option(150, help="Fine-tuning steps per label fraction."),
        finetune_lr: float = typer.Option(1e-3, help="Fine-tuning learning rate."),
        size: Optional[int] = typer.Option(None, help="pneumoniamnist: resize to SIZE x SIZE."),
        limit: Optional[int] = typer.Option(None, help="Keep the first N images per split (smoke tests)."),
        n_boot: int = typer.Option(200, help="Bootstrap resamples for the 95% CIs."),
        seed: int = typer.Option(0, help="Seed for pretraining, probes and bootstrap."),
        test_splits: str = typer.Option("test", "--split", "--test-splits",
                                        help="brain: manifest split(s) used as test set, e.g. val,test."),
    ) -> None:
        """Pretrain (SimCLR, MICLe), then probe and fine-tune with 1/10/100% labels vs. from scratch."""
        from medalign.errors import MedAlignError
        from medalign.experiments.label_efficiency import (_fmt, _load_cohort, _load_pneumoniamnist,
                                                            run_label_efficiency)

        if dataset == "pneumoniamnist":
            data = _load_pneumoniamnist(data_path, size, limit)
            spatial_dims, in_ch = 2, 1
        elif dataset == "brain":
            if manifest is None or cache_dir is None:
                raise MedAlignError("--dataset brain needs --manifest and --cache (a preprocessed cohort)")
            data = _load_cohort(manifest, cache_dir, tuple(t.strip() for t in test_splits.split(",") if t.strip()))
            if limit:
                data = {s: {k: (v[:limit] if v is not None else None) for k, v in d.items()} for s, d in data.items()}
            spatial_dims, in_ch = 3, int(data["train"]["x"].shape[1])
        else:
            raise MedAlignError(f"unknown --dataset '{dataset}' (pneumoniamnist, brain)")
        wanted = tuple(m.strip() for m in methods.split(",") if m.strip())
        if "clip" in wanted and (dataset == "pneumoniamnist" or clip_run is None):
            # said here, not only in the report's notes: the default method list includes it
            typer.echo("note: method 'clip' is left out: " + ("PneumoniaMNIST has no reports to train CLIP on"
                       if dataset == "pneumoniamnist" else "no --clip-run given"))
        summary = run_label_efficiency(
            dataset=dataset, out=out, data=data, spatial_dims=spatial_dims, in_channels=in_ch,
            input_shape=tuple(data["train"]["x"].shape[2:]), channels=tuple(int(c) for c in channels.split(",")),
            methods=wanted,
            fractions=tuple(float(f) for f in fractions.split(",")), pretrain_epochs=pretrain_epochs,
            batch_size=batch_size, lr=lr, finetune_steps=finetune_steps, finetune_lr=finetune_lr, seed=seed,
            n_boot=n_boot, clip_run=clip_run, layer_order=layer_order, global_pool=global_pool,
            pool_levels=_parse_pool_levels(pool_levels), stem_stride=_parse_stride(stem_stride, spatial_dims),
            log=typer.echo)
        for name, res in summary["results"].items():
            for mode in ("probe", "finetune"):
                for f, e in (res.get(mode) or {}).items():
                    typer.echo(f"{name:28s} {mode:8s} {float(f):5g}  acc {_fmt(e['accuracy'])}  auroc {_fmt(e['auroc'])}")
        typer.echo(f"wrote {out / 'label_efficiency.json'} and {out / 'report_extras' / 'label_efficiency.json'}")

    @ssl.command("hlss-knn")
    def hlss_knn_cmd(
        run: Path = typer.Argument(..., help="An HLSS run directory (medalign train with recipe hlss)."),
        manifest: Optional[Path] = typer.Option(None, help="Override the run's data.manifest."),
        cache_dir: Optional[Path] = typer.Option(None, "--cache", "--cache-dir", help="Override the run's data.cache_dir."),
        k: int = typer.Option(5, "--k", help="Neighbours voting per query."),
        n_boot: int = typer.Option(200, help="Bootstrap resamples for the 95% CIs."),
        checkpoint: str = typer.Option("best", help="best | last"),
        test_splits: str = typer.Option("test", "--split", "--test-splits",
                                        help="Query split(s), e.g. val,test (memory = train)."),
        random_init: bool = typer.Option(True, "--random-init/--no-random-init",
                                         help="Also evaluate the run's initial (random) weights as a baseline."),
    ) -> None:
        """kNN accuracy (with CIs) at slab/slice, study and patient level; writes report_extras/hlss_knn.json."""
        from medalign.experiments.hlss_knn import hlss_knn
        from medalign.experiments.label_efficiency import _fmt

        res = hlss_knn(run, manifest=manifest, cache_dir=cache_dir, k=k, n_boot=n_boot, checkpoint=checkpoint,
                       test_splits=tuple(t.strip() for t in test_splits.split(",") if t.strip()),
                       random_init=random_init)
        for name, levels in (("HLSS", res["levels"]), ("random init", (res.get("random_init") or {}).get("levels"))):
            for lvl, r in (levels or {}).items():
                typer.echo(f"{name:12s} {lvl:8s} n={r['n_test']:4d}  acc {_fmt(r['accuracy'])}  "
                           f"bacc {_fmt(r['balanced_accuracy'])}")
        typer.echo(f"wrote {Path(run) / 'report_extras' / 'hlss_knn.json'}")
