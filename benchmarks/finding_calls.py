"""Where each finding's studies go: zero-shot calls per finding, whole study vs one sequence alone, and
the reports' own calls through the run's text tower.

    python benchmarks/finding_calls.py RUN [RUN ...] --cohort COHORT [--alone flair] [--splits train,val]
                                       [--checkpoint best|last] [--readout] [--out results.json]

COHORT: a ``synth brain`` output (a ``ground_truth.json`` per study). Studies are grouped by class and
finding (small vessel disease by Fazekas grade, as its reports grade it). Each study is classified
from its NIfTI files with ``medalign classify``'s protocol (shipped prompts, ensemble pooling): with
every sequence the run reads, and with each sequence of ``--alone`` by itself, as a clinical study
that has only that series is (the real white-matter FLAIRs in ``../shared/data`` are FLAIR alone).
The ``reports`` view classifies each study's report through the run's text tower (the part the run
was trained on, e.g. the impression) with the same prompts: a finding whose reports already land in
the wrong class cannot be learnt from the images; one whose reports are right and whose images are
not is the image side's gap. Per group and view: studies right, mean p(true), the calls, and the mean
probability of every class (where a group's evidence goes even when the top call does not change:
e.g. whether small vessel disease on FLAIR alone gets more p(others) than the normals of the same run).
``--cohort`` the run's own training cohort with ``--splits train`` asks whether the run fits a finding
on the studies it was trained on (a finding missed there is not learnt, whatever the test data);
``--checkpoint last`` reads the run's last weights instead of the validation-selected ones.
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np


def finding_group(truth: dict) -> str:
    """``label/variant`` of a study's first finding (``normal`` when it has none); small vessel
    disease also by Fazekas grade (``others/wmh, Fazekas 2``)."""
    f = (truth.get("findings") or [{}])[0]
    if truth["label"] == "normal" or not f.get("variant"):
        return truth["label"]
    group = f"{truth['label']}/{f['variant']}"
    return f"{group}, Fazekas {f['fazekas']}" if f.get("fazekas") else group


def cohort_studies(cohort: Path, sequences: list[str], splits: set[str] | None = None) -> list[dict]:
    """[{study, label, group, report, files {sequence: path}}] of the studies of ``cohort`` that have at
    least one of ``sequences`` (the run's) and, when ``splits`` is given, are in one of them; sorted by
    study id."""
    out = []
    for gt in sorted(cohort.glob("*/ground_truth.json")):
        t = json.loads(gt.read_text(encoding="utf-8"))
        if splits and t.get("split") not in splits:
            continue
        files = {s: str(gt.parent / f"{s}.nii.gz") for s in sequences if (gt.parent / f"{s}.nii.gz").is_file()}
        if files:
            out.append({"study": t["study_id"], "label": t["label"], "group": finding_group(t),
                        "report": t.get("report", ""), "files": files})
    return out


def summarise(studies: list[dict], classes: list[str], p) -> dict:
    """Per group: {n, right, p_true (mean), calls {class: studies}, p_mean {class: mean probability}}
    of probabilities ``p`` (N, C). A group is one class's finding, so p_true is p_mean of that class."""
    groups: dict = {}
    for k, s in enumerate(studies):
        g = groups.setdefault(s["group"], {"label": s["label"], "n": 0, "right": 0, "calls": Counter(),
                                           "p_sum": np.zeros(len(classes))})
        call = classes[int(p[k].argmax())]
        g["n"] += 1
        g["right"] += int(call == s["label"])
        g["calls"][call] += 1
        g["p_sum"] += p[k]
    out = {}
    for name, g in groups.items():
        mean = g["p_sum"] / g["n"]  # (C,)
        out[name] = {"n": g["n"], "right": g["right"], "p_true": round(float(mean[classes.index(g["label"])]), 3),
                     "calls": dict(g["calls"].most_common()),
                     "p_mean": {c: round(float(v), 3) for c, v in zip(classes, mean)}}
    return out


def image_probabilities(model, items: list[dict], readout: bool = False) -> tuple[list[str], np.ndarray]:
    """(classes, (N, C) probabilities) of the studies ``items`` ({sequence: path} each): zero-shot, or with ``readout``
    as ``medalign classify`` reads them, with the run's own readout (its neighbour vote, test-time mirroring)."""
    if not readout:
        return model.zero_shot_probabilities(model.encode_image(items))
    calls = model.classify(items)
    classes = list(calls[0]["probabilities"])
    return classes, np.array([[c["probabilities"][k] for k in classes] for c in calls])  # (N, C)


def run_views(model, studies: list[dict], alone: list[str], readout: bool = False) -> dict:
    """{view: per-group summary}: ``all`` sequences, ``<s> alone`` for each of ``alone`` the run reads
    (studies without it left out), and ``reports`` (zero-shot through the text tower, whatever ``readout``)."""
    views: dict = {}
    classes, p = image_probabilities(model, [s["files"] for s in studies], readout)
    views["+".join(model.sequences)] = summarise(studies, classes, p)
    for seq in (s for s in alone if s in model.sequences):
        have = [s for s in studies if seq in s["files"]]
        if have:
            classes, p = image_probabilities(model, [{seq: s["files"][seq]} for s in have], readout)
            views[f"{seq} alone"] = summarise(have, classes, p)
    reported = [s for s in studies if s["report"]]
    if reported:
        classes, p = model.zero_shot_probabilities(np.asarray(model.encode_report([s["report"] for s in reported])))
        views["reports"] = summarise(reported, classes, p)
    return views


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--cohort", type=Path, required=True, help="a `synth brain` output folder")
    ap.add_argument("--alone", default="flair", help="comma-separated sequences to show alone ('' for none)")
    ap.add_argument("--splits", default="", help="comma-separated splits to keep (e.g. train: the run's own studies)")
    ap.add_argument("--checkpoint", default="best", help="best (validation-selected, as classify loads) or last")
    ap.add_argument("--readout", action="store_true", help="read the images as `medalign classify` does, with the run's "
                    "own readout (neighbour vote, mirroring), instead of zero-shot")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()

    import logging

    import medalign
    from medalign.utils import atomic_write_json

    logging.getLogger("medalign.api").setLevel(logging.ERROR)
    alone = [s.strip() for s in a.alone.split(",") if s.strip()]
    splits = {s.strip() for s in a.splits.split(",") if s.strip()} or None
    out: dict = {"cohort": str(a.cohort), "splits": a.splits, "checkpoint": a.checkpoint, "readout": a.readout, "runs": {}}
    for run in a.runs:
        m = medalign.load(run, checkpoint=a.checkpoint)
        studies = cohort_studies(a.cohort, list(m.sequences), splits)
        if not studies:
            raise SystemExit(f"{a.cohort}: no study with any of {list(m.sequences)}"
                             f"{f' in splits {sorted(splits)}' if splits else ''} (a `synth brain` output?)")
        views = run_views(m, studies, alone, a.readout)
        out["runs"][run] = views
        for view, groups in views.items():
            print(f"== {Path(run).name}: {view}")
            for g, r in sorted(groups.items()):
                calls = ", ".join(f"{c} {k}" for c, k in r["calls"].items())
                means = " ".join(f"{c} {v:.2f}" for c, v in r["p_mean"].items())
                print(f"  {g:<34} right {r['right']:>3}/{r['n']:<3} p(true) {r['p_true']:.2f}  calls: {calls}"
                      f"  | mean p: {means}", flush=True)
    if a.out:
        atomic_write_json(a.out, out)


if __name__ == "__main__":
    main()
