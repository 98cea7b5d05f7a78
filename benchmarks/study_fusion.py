"""Early vs late/attention fusion on a held-out synthetic cohort, and what each loses per missing sequence.

    python benchmarks/study_fusion.py --model NAME RUN CACHE [--model NAME RUN CACHE ...] \
        --manifest HELDOUT/manifest.csv [--checkpoint best|last] [--no-subsets | --alone SEQ[,SEQ]]
        [--by-variant] [--out F]

Each ``--model`` is a run and the held-out cohort's cache preprocessed with that run's settings
(an early-fusion run needs a co-registered cache of its 3 sequences, a study-level run reads a
cache of all seven). Every study of the held-out manifest is evaluated (no split is used).

Per model: report->image R@5 and zero-shot accuracy (the shipped prompts, ``medalign/eval/prompts.yaml``;
one prompt per class as in the paper's protocol, and the prompt ensemble, the default, also per class), with 95%
percentile-bootstrap CIs over studies, for the full study, each sequence alone, and each
leave-one-out; and a logistic-regression probe (fit on the run's own training split, full
studies) on the full held-out studies. A sequence left out is hidden through the sequence mask:
early fusion sees a zeroed channel (what it was trained with under sequence dropout), the
study-level encoder does not encode that series at all. ``--alone flair`` gives the full row and
the FLAIR-alone row only. ``--by-variant`` adds, per row, the studies right (ensemble) per class and
variant of the finding that made the class (``ground_truth.json`` next to each study in a cohort from
``medalign synth brain``: e.g. others/wmh = small vessel disease, tumor/glioma), the counts issue 20's
record quotes ("small vessel disease called others on FLAIR alone").
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def embed(model, cache, ids: list[str], keep: np.ndarray, batch: int = 16) -> np.ndarray:
    """Image embeddings (N, E) with only the sequences in ``keep`` (C,) bool shown to the model."""
    out = []
    for i in range(0, len(ids), batch):
        items = [cache.load(s) for s in ids[i : i + batch]]
        x = np.stack([np.asarray(s["image"], np.float32) for s in items])  # (b, C, D, H, W)
        m = np.stack([np.asarray(s["sequence_mask"], bool) for s in items]) & keep[None]  # (b, C)
        if not m.any(1).all():
            raise SystemExit(f"a study has none of the kept sequences {keep}")
        out.append(model.encode_image(x, m))
    return np.concatenate(out)


def study_variants(manifest: str, ids: list[str], labels: list[str], *, age: bool = False) -> list[str]:
    """``class/variant`` per study from its ``ground_truth.json`` (``synth brain``): the variant of the first
    finding of the study's labelled class, ``class/-`` when it has none (normal brains, other cohorts);
    ``age``: ``/age`` appended where the finding has one (acute, chronic)."""
    root = Path(manifest).resolve().parent
    out = []
    for sid, label in zip(ids, labels):
        gt = root / sid / "ground_truth.json"
        if not gt.is_file():
            raise SystemExit(f"no ground truth for study {sid} ({gt}): finding variants need a `synth brain` cohort")
        found = [f for f in json.loads(gt.read_text(encoding="utf-8")).get("findings", []) if f.get("class") == label]
        variant = (found[0].get("variant") if found else None) or "-"
        out.append(f"{label}/{variant}" + (f"/{found[0]['age']}" if age and found and found[0].get("age") else ""))
    return out


def scores(model, img: np.ndarray, txt: np.ndarray, y: np.ndarray, bank: dict, n_boot: int,
           variants: list[str] | None = None) -> dict:
    from medalign.eval.bootstrap import bootstrap_ci
    from medalign.eval.zeroshot import scores_from_prompt_bank

    sim = txt @ img.T  # (N, N) report x image
    rank = (sim > np.diag(sim)[:, None]).sum(1)  # (N,) images above the true one
    r5 = (rank < 5).astype(float)
    zs = (scores_from_prompt_bank(img, bank, one_per_class=True).argmax(1) == y).astype(float)
    ens = (scores_from_prompt_bank(img, bank).argmax(1) == y).astype(float)  # the default pooling
    mean = lambda v: float(np.mean(v))  # noqa: E731
    classes = [str(c) for c in bank["classes"]]
    # right / studies per true class (ensemble): a gain on one class can hide a loss on another
    per_class = {c: [int(ens[y == classes.index(c)].sum()), int((y == classes.index(c)).sum())] for c in classes}
    out = {"R@5": bootstrap_ci(mean, r5, n=n_boot, seed=0), "zero_shot": bootstrap_ci(mean, zs, n=n_boot, seed=0),
           "zero_shot_ensemble": bootstrap_ci(mean, ens, n=n_boot, seed=0), "ensemble_per_class": per_class}
    if variants is not None:  # right / studies per class and variant (ensemble)
        v = np.asarray(variants)
        out["ensemble_per_variant"] = {k: [int(ens[v == k].sum()), int((v == k).sum())] for k in sorted(set(variants))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", nargs=3, action="append", metavar=("NAME", "RUN", "CACHE"), required=True)
    ap.add_argument("--manifest", required=True, help="held-out cohort manifest (all studies evaluated)")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--no-subsets", action="store_true", help="full studies only")
    ap.add_argument("--alone", default=None, metavar="SEQ[,SEQ]",
                    help="the full row and these sequences alone only (e.g. flair), no leave-one-out rows")
    ap.add_argument("--by-variant", action="store_true",
                    help="also count right per class and finding variant (needs a `synth brain` cohort's ground truth)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--checkpoint", default="best", choices=["best", "last"],
                    help="best (validation-selected, as classify loads) or last")
    a = ap.parse_args()

    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    import medalign
    from medalign.data.cache import CohortCache
    from medalign.data.schema import CLASSES
    from medalign.eval.bootstrap import bootstrap_ci, format_ci
    from medalign.eval.zeroshot import PROMPTS_FILE, embed_prompts, load_prompts
    from medalign.train.embed import embed_manifest

    df = pd.read_csv(a.manifest, dtype=str, keep_default_na=False)
    ids, y = df["study_id"].tolist(), np.array([CLASSES.index(v) for v in df["label"]])
    variants = study_variants(a.manifest, ids, df["label"].tolist()) if a.by_variant else None
    alone = [s.strip() for s in a.alone.split(",") if s.strip()] if a.alone else None
    results: dict = {"manifest": a.manifest, "n": len(ids), "checkpoint": a.checkpoint, "models": {}}
    for name, run, cache_dir in a.model:
        model = medalign.load(run, checkpoint=a.checkpoint)
        cache = CohortCache(cache_dir)
        seqs = list(model.sequences)
        txt = model.encode_report(df["report"].tolist())  # (N, E)
        bank = embed_prompts(load_prompts(str(PROMPTS_FILE)), model.encode_text)
        rows = {"full": np.ones(len(seqs), bool)}
        if alone is not None:
            unknown = [s for s in alone if s not in seqs]
            if unknown:
                raise SystemExit(f"--alone: run {run} reads {seqs}, not {unknown}")
            for s in alone:
                rows[f"{s} alone"] = np.array([q == s for q in seqs])
        elif not a.no_subsets:
            for i, s in enumerate(seqs):
                rows[f"{s} alone"] = np.eye(len(seqs), dtype=bool)[i]
            for i, s in enumerate(seqs):
                rows[f"without {s}"] = ~np.eye(len(seqs), dtype=bool)[i]
        res: dict = {"sequences": seqs, "rows": {}}
        for row, keep in rows.items():
            img = embed(model, cache, ids, keep)
            res["rows"][row] = scores(model, img, txt, y, bank, a.n_boot, variants)
            if row == "full":  # probe: fit on the run's own training split (full studies)
                tr = embed_manifest(model, model.config["data"]["manifest"], split="train")
                clf = LogisticRegression(max_iter=2000, C=1.0).fit(tr["image_embed"], tr["label_index"])
                ok = (clf.predict(img) == y).astype(float)
                res["probe"] = bootstrap_ci(lambda v: float(np.mean(v)), ok, n=a.n_boot, seed=0)
            r = res["rows"][row]
            per_class = " ".join(f"{c} {k}/{n}" for c, (k, n) in r["ensemble_per_class"].items() if n)
            print(f"{name:<22} {row:<18} R@5 {format_ci(r['R@5'])}  zero-shot {format_ci(r['zero_shot'])}  "
                  f"ensemble {format_ci(r['zero_shot_ensemble'])} ({per_class})", flush=True)
            if variants is not None:
                print(f"{'':<22} {'':<18} by variant: " + " ".join(f"{k} {c}/{n}" for k, (c, n) in r["ensemble_per_variant"].items()),
                      flush=True)
        print(f"{name:<22} {'probe (logreg)':<18} {format_ci(res['probe'])}", flush=True)
        results["models"][name] = res
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
