"""Realism report of a synthetic cohort against the real cases in ../shared/data (issue 20).

    python benchmarks/realism.py --manifest COHORT/manifest.csv --cache CACHE --out DIR
                                 [--shared ../shared/data] [--overwrite]

Writes DIR/real_manifest.csv (the 6 BraTS 2015 gliomas: FLAIR + T1c + whole-tumour mask; the
three clinical WMH FLAIRs of ``real_dev/`` with their masks; the volunteer DWI), preprocesses it
with CACHE's config into DIR/real_cache, and runs ``medalign inspect --compare`` into DIR
(realism.png + realism.json); prints the coverage verdict per sequence and metric. The real
cases are few: read the verdicts as a direction for the generator, not as a test to tune on.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

DEFAULT_SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
# The finding of each real collection, by the generator's variant names (``synth.lesions``), for the
# per-finding verdicts: BraTS 2015 holds gliomas; the real_dev WMH cases (case names "wmh_...") are
# white-matter hyperintensities, the generator's "wmh" (small vessel disease) variant.
BRATS_FINDING = "glioma"
REAL_DEV_FINDING = {"wmh": "wmh"}


def real_manifest_rows(shared: Path) -> list[dict]:
    """Manifest rows (normal schema) for every real brain MRI case found under ``shared``."""
    rows = []
    for d in sorted(p for p in (shared / "brats2015").glob("*/*") if (p / "Flair_subtrMeanDivStd.nii.gz").is_file()):
        rows.append({"study_id": f"brats_{d.name.split('_')[2]}", "patient_id": d.name, "label": "tumor",
                     "image_flair": str(d / "Flair_subtrMeanDivStd.nii.gz"),
                     "image_t1c": str(d / "T1c_subtrMeanDivStd.nii.gz"), "image_dwi": "",
                     "mask": str(d / "OTMultiClass.nii.gz"), "finding": BRATS_FINDING})
    meta = shared / "real_dev" / "cases.json"
    for c in json.loads(meta.read_text(encoding="utf-8")) if meta.is_file() else []:
        f = {k: str(shared / "real_dev" / c["case"] / v) for k, v in c["files"].items()}
        rows.append({"study_id": c["case"], "patient_id": c["case"], "label": c["class"],
                     "image_flair": f.get("flair", ""), "image_t1c": f.get("t1c", ""), "image_dwi": f.get("dwi", ""),
                     "mask": f.get("mask", ""), "finding": REAL_DEV_FINDING.get(c["case"].split("_")[0], "")})
    return rows


def write_real_manifest(shared: Path, out: Path) -> Path:
    """Write the real cases' manifest (atomically) and return its path."""
    import pandas as pd

    from medalign.data.manifest import save_manifest

    rows = real_manifest_rows(shared)
    if not rows:
        raise SystemExit(f"no real cases under {shared}")
    return save_manifest(pd.DataFrame(rows), out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", required=True, help="synthetic cohort manifest")
    ap.add_argument("--cache", required=True, help="its preprocessed cache")
    ap.add_argument("--out", required=True, type=Path, help="output folder")
    ap.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    ap.add_argument("--overwrite", action="store_true")
    a = ap.parse_args(argv)
    from medalign.cli import main as cli

    real = write_real_manifest(a.shared, a.out / "real_manifest.csv")
    args = ["inspect", a.manifest, "--cache", a.cache, "--compare", str(real), "--out", str(a.out)]
    return cli(args + (["--overwrite"] if a.overwrite else []))


if __name__ == "__main__":
    raise SystemExit(main())
