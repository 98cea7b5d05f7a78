"""A cohort's manifest with a share of its studies reduced to part of their protocol (FLAIR alone by default).

    python benchmarks/partial_protocol.py COHORT_MANIFEST OUT_MANIFEST [--share 0.75] [--keep flair]
                                          [--splits train] [--seed 66] [--overwrite]

Writes OUT_MANIFEST: the cohort's manifest with its paths made absolute and, in a share of the studies of
``--splits`` (the same share of each class, so the reduced studies keep the split's class balance), every
image cell but those of ``--keep`` emptied; masks, reports and every other column stay. Nothing is copied:
the new manifest points at the cohort's own files. Preprocess and train on it like any manifest
(``medalign preprocess OUT_MANIFEST --cache DIR``: a study without a series reads it as absent).

Why (issue 20, stop 65): the real white-matter-disease FLAIRs of ``../shared/data`` come as FLAIR alone, as
many clinical studies do, while every synthetic study has all its series and the preset shows FLAIR alone in
about one training view in ten. This makes the training cohort of a screen in which most studies are seen only
through FLAIR, every epoch, without drawing a new cohort (``docs/sim_to_real_record.md``, stop 65). The reduced
studies keep the report written for the full study, as a study whose other series never reached the archive.

The selection (``reduce_protocol``): per class in sorted order, the rows of that class in ``--splits`` are
shuffled by ``numpy.random.default_rng(seed)`` (one generator for all classes) and the first
``round(share x count)`` reduced; the same arguments give the same rows.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from medalign.data.manifest import load_manifest, manifest_sequences, save_manifest
from medalign.data.schema import image_column
from medalign.errors import MedAlignError


def reduce_protocol(df: pd.DataFrame, *, share: float, keep: list[str], splits: list[str],
                    seed: int) -> tuple[pd.DataFrame, list[str]]:
    """A copy of ``df`` (a loaded manifest) whose chosen studies keep only the ``keep`` series, and the
    ids of those studies (the share is taken per class; a manifest without labels is one group).
    One-line errors: a share outside [0, 1], no kept series or one the manifest lacks, a split with
    no studies."""
    if not 0.0 <= share <= 1.0:
        raise MedAlignError(f"--share must be in [0, 1], got {share}")
    have = manifest_sequences(df)
    if not keep:
        raise MedAlignError(f"--keep names no series (this manifest has {', '.join(have)})")
    missing = [s for s in keep if s not in have]
    if missing:
        raise MedAlignError(f"--keep: '{missing[0]}' is not a series of this manifest ({', '.join(have)})")
    rows = df[df["split"].isin(splits)] if "split" in df.columns else df.iloc[:0]
    if rows.empty:
        raise MedAlignError(f"no studies in split(s) {', '.join(splits)}")
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    groups = rows.groupby("label") if "label" in rows.columns else [("", rows)]  # unlabelled: one group
    for _, group in groups:
        idx = group.index.to_numpy().copy()
        rng.shuffle(idx)
        chosen += idx[: int(round(share * len(idx)))].tolist()
    out = df.copy()
    for s in have:
        if s not in keep:
            out.loc[chosen, image_column(s)] = ""
    # a reduced study must keep a series to be a study at all
    kept = out.loc[chosen, [image_column(s) for s in keep]].ne("").any(axis=1)
    if not kept.all():
        sid = out.loc[kept[~kept].index[0], "study_id"]
        raise MedAlignError(f"study {sid} has none of the kept series ({', '.join(keep)}) to keep")
    return out, out.loc[chosen, "study_id"].tolist()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("manifest", type=Path, help="the cohort's manifest.csv")
    ap.add_argument("out", type=Path, help="where to write the new manifest (.csv or .parquet)")
    ap.add_argument("--share", type=float, default=0.75, help="share of the studies of --splits reduced (default 0.75)")
    ap.add_argument("--keep", default="flair", help="comma-separated series the reduced studies keep (default flair)")
    ap.add_argument("--splits", default="train", help="comma-separated splits to reduce studies in (default train)")
    ap.add_argument("--seed", type=int, default=66)
    ap.add_argument("--overwrite", action="store_true", help="replace an existing OUT_MANIFEST")
    args = ap.parse_args(argv)
    try:
        if args.out.exists() and not args.overwrite:
            raise MedAlignError(f"{args.out} exists; pass --overwrite to replace it")
        df = load_manifest(args.manifest)
        out, ids = reduce_protocol(df, share=args.share, keep=[s.strip() for s in args.keep.split(",") if s.strip()],
                                   splits=[s.strip() for s in args.splits.split(",") if s.strip()], seed=args.seed)
    except MedAlignError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_manifest(out, args.out)
    print(f"wrote {args.out}: {len(ids)} of {len(out)} studies reduced to {args.keep}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
