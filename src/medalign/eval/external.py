"""Score a trained run on any labelled cohort it was not trained with (``medalign evaluate RUN
--manifest REAL.csv``): a folder of real studies with a manifest (``medalign ingest`` writes one).

The studies are preprocessed with the run's own settings into ``OUT/cache`` (skipped when a
cache holding them is given), embedded, and scored with the same code as the run's own
evaluation (:func:`medalign.eval.evaluate.evaluate_embeddings`: retrieval where there are
reports, zero-shot with the same prompt set, CIs over studies). The run's ``eval/`` folder is not
touched: results go to ``OUT`` (default ``RUN/eval_external/<manifest name>``).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from medalign.errors import MedAlignError
from medalign.utils import atomic_write_json
from medalign.eval.zeroshot import DEFAULT_POOL


def cache_holds(cache_dir: str | Path | None, df: Any) -> bool:
    """Whether ``cache_dir`` is a cohort cache holding every study of manifest ``df`` (absolute
    paths) from the same files: a study id alone is not enough (two cohorts can both have S00001)."""
    from medalign.data.cache import INDEX, CohortCache
    from medalign.data.schema import IMAGE_PREFIX

    if not cache_dir or not (Path(cache_dir) / INDEX).is_file():
        return False
    cache = CohortCache(cache_dir)
    cols = [c for c in df.columns if c.startswith(IMAGE_PREFIX)]
    for row in df.to_dict(orient="records"):
        sid = str(row["study_id"])
        if sid not in cache:
            return False
        inputs = cache.entry(sid).get("inputs") or {}
        for c in cols:
            want, have = str(row.get(c) or ""), inputs.get(c[len(IMAGE_PREFIX):])
            if have is not None and want and Path(have).resolve() != Path(want).resolve():
                return False
    return True


def evaluate_external(run_dir: str | Path, manifest: str | Path, *, out: str | Path | None = None,
                      cache: str | Path | None = None, split: str | None = "test", prompts: str | None = None,
                      pool: str = DEFAULT_POOL, absence: str = "ignore", n_boot: int = 1000, seed: int = 0,
                      checkpoint: str = "best", workers: int = 2, say=print) -> dict:
    """Evaluate ``run_dir``'s model on ``manifest``; returns the metrics dict (also in OUT/metrics.json).

    ``split``: score that split when the manifest has rows in it, else every row (said so).
    """
    from medalign import api
    from medalign.data.cache import preprocess_cohort
    from medalign.data.manifest import load_manifest
    from medalign.eval.evaluate import evaluate_embeddings, headline_cis, save_embeddings
    from medalign.eval.zeroshot import embed_prompts, load_prompts
    from medalign.train.embed import embed_manifest

    run_dir, manifest = Path(run_dir), Path(manifest)
    t0 = time.time()
    df = load_manifest(manifest, check_files=False)
    if split and "split" in df.columns and (df["split"].astype(str) == split).any():
        df = df[df["split"].astype(str) == split]
        what = f"split '{split}'"
    else:
        what = "all rows"
        say(f"{manifest}: no '{split}' split; scoring all {len(df)} studies")
    if "label" not in df.columns or not (df["label"].astype(str) != "").any():
        raise MedAlignError(f"{manifest}: no labelled studies (a 'label' column naming a class is needed)")
    model = api.load(run_dir, checkpoint=checkpoint)
    if model.preprocess_config is None:
        raise MedAlignError(f"run {run_dir} records no preprocessing settings; cannot preprocess {manifest}")
    out_dir = Path(out) if out else run_dir / "eval_external" / manifest.stem
    if not cache_holds(cache, df):
        cache = out_dir / "cache"
        say(f"preprocessing {len(df)} studies with the run's settings into {cache}")
        preprocess_cohort(df, model.preprocess_config, cache, workers=workers, progress=False)
    emb = embed_manifest(model, df, cache, split=None)
    bank = embed_prompts(load_prompts(prompts), model.encode_text)
    metrics = evaluate_embeddings(emb, prompt_bank=bank, pool=pool, absence=absence, n_boot=n_boot, seed=seed)
    labels = np.asarray(emb["label"]).astype(str)
    counts = {c: int((labels == c).sum()) for c in sorted(set(labels) - {""})}
    metrics.update(run_dir=str(run_dir), manifest=str(manifest), cache_dir=str(cache), scored=what,
                   checkpoint=checkpoint, model_id=model.model_id, class_counts=counts,
                   majority_baseline=max(counts.values()) / max(1, sum(counts.values())) if counts else None)
    metrics["headline"] = headline_cis(metrics)
    metrics["seconds"] = round(time.time() - t0, 1)
    save_embeddings(out_dir / "embeddings.npz", emb)
    atomic_write_json(out_dir / "metrics.json", metrics)
    say(f"wrote {out_dir / 'metrics.json'}")
    return metrics
