"""Zero-shot class of the real cases in ../shared/data with one or more trained runs, per case.

    python benchmarks/real_cases.py RUN [RUN ...] [--shared ../shared/data] [--checkpoint best|last] [--out results.json]

Cases: the 6 BraTS 2015 gliomas (FLAIR + T1c; class tumor), and ``real_dev/``: three clinical
FLAIRs with white-matter hyperintensities (class others) and a volunteer DWI (class normal).
Each run sees every sequence of the case that it reads (an early-fusion dwi/t2s/flair model sees
the FLAIR alone of a BraTS case; a study-level model reads FLAIR and T1c). The protocol is
``medalign classify``'s default (shipped prompts, ensemble pooling), fixed before these cases
were looked at. They are few: read them as a check of direction, not as an accuracy.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

DEFAULT_SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def real_cases(shared: Path) -> list[dict]:
    """[{case, class, files {sequence: path}}] for every real case found under ``shared``."""
    cases = []
    for d in sorted(p for p in (shared / "brats2015").glob("*/*") if (p / "Flair_subtrMeanDivStd.nii.gz").is_file()):
        cases.append({"case": f"brats/{d.name}", "class": "tumor",
                      "files": {"flair": str(d / "Flair_subtrMeanDivStd.nii.gz"), "t1c": str(d / "T1c_subtrMeanDivStd.nii.gz")}})
    meta = shared / "real_dev" / "cases.json"
    if meta.is_file():
        for c in json.loads(meta.read_text(encoding="utf-8")):
            files = {k: str(shared / "real_dev" / c["case"] / v) for k, v in c["files"].items() if k != "mask"}
            files = {k: v for k, v in files.items() if k in ("dwi", "adc", "t2s", "flair", "t1", "t1c", "t2")}
            cases.append({"case": f"real_dev/{c['case']}", "class": c["class"], "files": files})
    return cases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    ap.add_argument("--checkpoint", default="best", help="best (validation-selected, as classify loads) or last")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    import logging

    import medalign

    logging.getLogger("medalign.api").setLevel(logging.ERROR)  # "skipping t1c" is expected for 3-sequence models
    cases = real_cases(a.shared)
    if not cases:
        raise SystemExit(f"no real cases under {a.shared}")
    out: dict = {"cases": [c["case"] for c in cases], "runs": {}}
    for run in a.runs:
        m = medalign.load(run, checkpoint=a.checkpoint)
        usable = []
        for c in cases:
            if any(s in m.sequences for s in c["files"]):
                usable.append(c)
            else:  # e.g. the volunteer DWI for a FLAIR-only model
                print(f"{Path(run).name:<24} {c['case']:<34} skipped: has {sorted(c['files'])}, the run reads "
                      f"{list(m.sequences)}", flush=True)
        res = m.classify([c["files"] for c in usable]) if usable else []
        rows = []
        for c, r in zip(usable, res):
            used = sorted(s for s in c["files"] if s in m.sequences)
            rows.append({"case": c["case"], "true": c["class"], "predicted": r["label"], "sequences": used,
                         "p_true": round(r["probabilities"][c["class"]], 3)})
            print(f"{Path(run).name:<24} {c['case']:<34} {'+'.join(used):<10} true {c['class']:<7} "
                  f"-> {r['label']:<10} p(true) {rows[-1]['p_true']:.2f}", flush=True)
        right = {k: [sum(r["true"] == r["predicted"] for r in rows if r["true"] == k), sum(r["true"] == k for r in rows)]
                 for k in sorted({r["true"] for r in rows})}
        print(f"{Path(run).name:<24} right per class: " + ", ".join(f"{k} {a_}/{n}" for k, (a_, n) in right.items()))
        out["runs"][run] = {"rows": rows, "right": right}
    if a.out:
        from medalign.utils import atomic_write_json

        atomic_write_json(a.out, out)


if __name__ == "__main__":
    main()
