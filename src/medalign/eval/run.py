"""Evaluate one run end to end: embed the split (or reuse saved embeddings), every metric with CIs,
the baselines, metrics.json + plots under ``RUN/eval/`` (layout in medalign.eval.evaluate).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from medalign.eval.evaluate import (_embed, evaluate_embeddings, headline_cis, load_embeddings, save_embeddings,
                                    write_plots)
from medalign.utils import atomic_write_json
from medalign.eval.zeroshot import DEFAULT_POOL


def resolve_data(run_dir: Path, config: dict, manifest: str | None, cache: str | None) -> tuple[Path, Path]:
    """Manifest and cache from the CLI, else from the run's resolved config."""
    from medalign.errors import MedAlignError

    data = config.get("data") or {}
    m = manifest or data.get("manifest")
    c = cache or data.get("cache_dir") or data.get("cache")
    if not m:
        raise MedAlignError(f"run {run_dir}: no manifest in config.yaml (data.manifest); pass --manifest")
    if not c:
        raise MedAlignError(f"run {run_dir}: no cache dir in config.yaml (data.cache_dir); pass --cache")
    return Path(m), Path(c)


def check_cache(model, cache_dir: Path) -> None:
    """Refuse a cache preprocessed with other settings than the run's (it would embed wrong inputs)."""
    from medalign.data.cache import INDEX, CohortCache, check_cache_matches

    if (Path(cache_dir) / INDEX).is_file():  # a missing cache fails later, only if it is needed
        check_cache_matches(CohortCache(cache_dir).config, getattr(model, "preprocess_config", None),
                            cache_dir=cache_dir)


def _has_text_side(model) -> bool:
    """Whether the model can embed text (image-only SSL recipes raise on encode_text)."""
    from medalign.errors import MedAlignError

    try:
        model.encode_text(["no acute intracranial abnormality"])
    except (NotImplementedError, MedAlignError):
        return False
    return True


def _saved_or_embed(run_dir: Path, model, manifest, cache, split, *, required: bool = True,
                    manifest_given: bool = False):
    """Reuse RUN/embeddings/<split>.npz from `medalign embed` when it was made by this very model."""
    p = run_dir / "embeddings" / f"{split}.npz"
    if p.is_file() and not manifest_given:
        saved = load_embeddings(p)
        if str(saved.get("model_id", "")) == str(getattr(model, "model_id", None)):
            saved.pop("model_id", None)
            return saved
    return _embed(model, manifest, cache, split, required=required)


def prompt_bank(model, prompts: str | None = None) -> dict:
    """The zero-shot prompt bank of ``medalign evaluate``: the prompts YAML (default
    ``medalign/eval/prompts.yaml``) embedded with the model's text encoder."""
    from medalign.eval.zeroshot import embed_prompts, load_prompts

    return embed_prompts(load_prompts(prompts), model.encode_text)


def split_metrics(model, manifest: str | Path, cache: str | Path, split: str, *, prompts: str | None = None,
                  pool: str = DEFAULT_POOL, absence: str = "ignore", n_boot: int = 1000,
                  seed: int = 0) -> tuple[dict, dict]:
    """Retrieval and zero-shot of ``model`` on one split, computed exactly as ``medalign evaluate``
    computes them (``embed_manifest`` embeddings, :func:`prompt_bank`, ``evaluate_embeddings`` with
    the same bootstrap seed), without probes or baselines. Returns (embeddings, metrics).

    Why: another command that reports these numbers (``medalign localise``) calls this, so both
    pages give the same figures for the same model, split and prompt set (issue 21, finding 4).
    """
    test = _embed(model, manifest, cache, split)
    metrics = evaluate_embeddings(test, prompt_bank=prompt_bank(model, prompts), pool=pool, absence=absence,
                                  n_boot=n_boot, seed=seed)
    return test, metrics


def evaluate_run(
    run_dir: str | Path,
    *,
    split: str = "test",
    manifest: str | None = None,
    cache: str | None = None,
    baselines: bool = True,
    pool: str = DEFAULT_POOL,
    absence: str = "ignore",
    prompts: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    checkpoint: str = "best",
    supervised_epochs: int | None = None,
    progress: bool = True,
) -> dict:
    """Embed ``split`` (and train, for probes) with the run's model and evaluate everything."""
    from medalign import api
    from medalign.errors import MedAlignError

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise MedAlignError(f"{run_dir}: not a run directory (no config.yaml)")
    t0 = time.time()
    say = print if progress else (lambda *a, **k: None)
    model = api.load(run_dir, checkpoint=checkpoint)
    manifest_p, cache_p = resolve_data(run_dir, model.config, manifest, cache)
    check_cache(model, cache_p)
    eval_dir = run_dir / "eval"
    say(f"embedding split '{split}' and 'train' of {manifest_p}")
    image_only = not _has_text_side(model)
    if image_only:
        from medalign.eval.baselines import _embed_image_only

        say("this recipe has no text encoder: image-only evaluation (case->case, probes)")
        embed = lambda sp, required=True: _embed_image_only(model, manifest_p, cache_p, sp, required=required)  # noqa: E731
    else:
        embed = lambda sp, required=True: _saved_or_embed(run_dir, model, manifest_p, cache_p, sp,  # noqa: E731
                                                          required=required, manifest_given=manifest is not None)
    test = embed(split)
    if len(test["study_id"]) == 0:
        raise MedAlignError(f"{manifest_p}: split '{split}' has no studies")
    train = embed("train", required=False) if split != "train" else None
    save_embeddings(eval_dir / f"embeddings_{split}.npz", test)
    if train is not None:
        save_embeddings(eval_dir / "embeddings_train.npz", train)
    bank = None if image_only else prompt_bank(model, prompts)
    if bank is not None:
        save_embeddings(eval_dir / "prompts.npz", bank)
    say(f"evaluating {len(test['study_id'])} {split} studies (bootstrap n={n_boot})")
    metrics = evaluate_embeddings(test, train=train, prompt_bank=bank, pool=pool, absence=absence,
                                  n_boot=n_boot, seed=seed)
    metrics.update(split=split, run_dir=str(run_dir), model_id=getattr(model, "model_id", None),
                   manifest=str(manifest_p), cache_dir=str(cache_p), checkpoint=checkpoint,
                   recipe=(model.config.get("recipe") or {}).get("name"))
    if baselines:
        from medalign.eval.baselines import run_baselines

        metrics["baselines"] = run_baselines(run_dir, manifest_p, cache_p, test=test, train=train, split=split,
                                             prompt_bank_fn=None if image_only else
                                             (lambda m: prompt_bank(m, prompts)),
                                             pool=pool, n_boot=n_boot, seed=seed, supervised_epochs=supervised_epochs,
                                             say=say)
    metrics["plots"] = write_plots(eval_dir, test, metrics, run_dir=run_dir, seed=seed)
    metrics["headline"] = headline_cis(metrics)
    metrics["seconds"] = round(time.time() - t0, 1)
    atomic_write_json(eval_dir / "metrics.json", metrics)
    say(f"wrote {eval_dir / 'metrics.json'}")
    return metrics


def evaluate_saved(run_dir: str | Path, *, split: str = "test", pool: str = DEFAULT_POOL, n_boot: int = 1000,
                   seed: int = 0) -> dict:
    """Recompute metrics + plots from saved embeddings (RUN/eval/*.npz or RUN/embeddings/*.npz), no model."""
    from medalign.errors import MedAlignError

    run_dir = Path(run_dir)
    eval_dir = run_dir / "eval"
    cands = [eval_dir / f"embeddings_{split}.npz", run_dir / "embeddings" / f"{split}.npz"]
    src = next((p for p in cands if p.is_file()), None)
    if src is None:
        raise MedAlignError(f"run {run_dir}: no metrics and no saved embeddings; run `medalign evaluate {run_dir}` first")
    test = load_embeddings(src)
    tr = next((p for p in (eval_dir / "embeddings_train.npz", run_dir / "embeddings" / "train.npz") if p.is_file()), None)
    train = load_embeddings(tr) if tr else None
    bank = load_embeddings(eval_dir / "prompts.npz") if (eval_dir / "prompts.npz").is_file() else None
    metrics = evaluate_embeddings(test, train=train, prompt_bank=bank, pool=pool, n_boot=n_boot, seed=seed)
    metrics.update(split=split, run_dir=str(run_dir))
    old = eval_dir / "metrics.json"
    if old.is_file():  # keep baselines computed by a model-backed evaluate
        prev = json.loads(old.read_text(encoding="utf-8"))
        for k in ("baselines", "cache_dir", "manifest", "model_id", "recipe"):
            if k in prev:
                metrics[k] = prev[k]
    metrics["plots"] = write_plots(eval_dir, test, metrics, run_dir=run_dir, seed=seed)
    metrics["headline"] = headline_cis(metrics)
    atomic_write_json(eval_dir / "metrics.json", metrics)
    return metrics
