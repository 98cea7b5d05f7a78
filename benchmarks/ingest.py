"""Series-identification accuracy and ingest throughput on a generated DICOM export.

    python benchmarks/ingest.py                         # synth 100 small brain studies -> DICOM -> ingest
    python benchmarks/ingest.py --n 120 --seed 1 --workers 2 --json out.json
    python benchmarks/ingest.py --manifest cohort/manifest.csv --n 100   # an existing synthetic cohort

Printed: the confusion matrix truth x identified over every MR image series, overall accuracy,
how many wanted series (the one per sequence the choice rule should pick) were chosen, how many
series the study rule made t1c by acquisition order (and how many of them truly are), and
throughput: files/s and studies/min of `ingest` (header scan + identification + conversion),
timed separately from generating the export. Half the studies use the flat layout (random file
names, no extension), half the nested PATIENT/ACCESSION/SERIES layout.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--manifest", type=Path, default=None, help="Existing synthetic NIfTI cohort (else synthesised).")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    import pandas as pd

    from medalign.data.dicom_identify import POST_BY_ORDER, SEQUENCE_TYPES
    from medalign.data.ingest import ingest
    from medalign.data.synth.dicom_export import export_study

    with tempfile.TemporaryDirectory(prefix="medalign-ingest-bench-") as td:
        root = Path(td)
        t0 = time.perf_counter()
        manifest = args.manifest
        if manifest is None:
            from medalign.data.synth.brain import generate_brain_cohort

            manifest = generate_brain_cohort(root / "nifti", n=args.n, seed=args.seed, shape_mode="small",
                                             workers=args.workers)
        t_synth = time.perf_counter() - t0
        import nibabel as nib
        import numpy as np

        from medalign.data.manifest import load_manifest

        df = load_manifest(manifest, check_files=False).head(args.n)
        truth = []
        t0 = time.perf_counter()
        for i, r in enumerate(df.to_dict("records")):
            vols = {}
            for s in ("dwi", "adc", "t2s", "flair", "t1", "t2", "t1c"):
                if not str(r.get(f"image_{s}") or "").strip():
                    continue  # cohorts made before the generator wrote t1c: export fakes it from T1
                img = nib.load(r[f"image_{s}"])
                vols[s] = (np.asarray(img.dataobj, dtype=np.float32), img.affine)
            truth += export_study(vols, root / "dicom", i, seed=args.seed, layout="flat" if i % 2 else "nested")
        t_export = time.perf_counter() - t0
        t0 = time.perf_counter()
        summary = ingest(root / "dicom", root / "cohort", workers=args.workers)
        t_ingest = time.perf_counter() - t0
        got = pd.read_csv(root / "cohort" / "series.csv", dtype={"series_uid": str})
    tr = pd.DataFrame(truth).drop(columns=["description"]).merge(got, on=["study_uid", "series_uid"], how="left")
    tr["sequence"] = tr["sequence"].fillna("(missing)")
    labels = [s for s in SEQUENCE_TYPES if s in set(tr["truth"]) | set(tr["sequence"])] + (
        ["(missing)"] if (tr["sequence"] == "(missing)").any() else [])
    cm = pd.crosstab(pd.Categorical(tr["truth"], labels), pd.Categorical(tr["sequence"], labels),
                     rownames=["truth"], colnames=["identified"], dropna=False)
    acc = float((tr["truth"] == tr["sequence"]).mean())
    wanted = tr[tr["wanted"]]
    found = int(wanted["chosen"].fillna(False).astype(bool).sum())
    by_order = tr["reason"].fillna("").str.contains(POST_BY_ORDER, regex=False)  # the study rule t1c_by_order
    wrong_rows = tr[tr["truth"] != tr["sequence"]][["vendor", "kind", "description", "truth", "sequence", "reason"]]
    res = {"studies": int(len(df)), "series": int(len(tr)), "files": summary["files"], "accuracy": round(acc, 4),
           "wanted": int(len(wanted)), "wanted_found": found, "errors": len(summary["errors"]),
           "ingest_s": round(t_ingest, 2), "files_per_s": round(summary["files"] / t_ingest, 1),
           "studies_per_min": round(len(df) / t_ingest * 60, 1), "export_s": round(t_export, 2),
           "synth_s": round(t_synth, 2), "workers": args.workers, "seed": args.seed,
           "t1c_by_order": int(by_order.sum()), "t1c_by_order_correct": int((by_order & (tr["truth"] == "t1c")).sum()),
           "confusion": cm.to_dict()}
    print(cm.to_string())
    print(f"\naccuracy {acc:.4f} over {len(tr)} series of {len(df)} studies; wanted series chosen {found}/{len(wanted)}; "
          f"{len(summary['errors'])} conversion errors")
    print(f"t1c by acquisition order (study rule, no contrast tag or words): {res['t1c_by_order']} series, "
          f"{res['t1c_by_order_correct']} truly t1c")
    if len(wrong_rows):
        print("misidentified:\n" + wrong_rows.to_string())
    print(f"ingest: {summary['files']} files in {t_ingest:.1f} s = {res['files_per_s']} files/s, "
          f"{res['studies_per_min']} studies/min ({args.workers} workers); export {t_export:.1f} s, synth {t_synth:.1f} s")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2, default=str))
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
