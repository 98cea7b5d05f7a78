"""Which synthetic studies each real case sits nearest to, in a trained run's image embedding space.

    python benchmarks/nearest_synthetic.py RUN [RUN ...] --cohort COHORT [--splits train] [--k 10]
                                           [--checkpoint best|last] [--factors] [--figure DIR]
                                           [--shared ../shared/data] [--out results.json]

A sim-to-real check that needs no prompts: a model that has learnt a finding on the synthetic cohort
should embed a real case of that finding near the synthetic studies of it. Each real case of
``../shared/data`` (``real_cases.py``) is embedded with the sequences it has that the run reads, as
``real_cases.py`` and ``medalign classify`` see it; every study of COHORT (a ``synth brain`` output;
``--splits train`` = the run's own training studies) is embedded with the same sequences only (a
FLAIR-only real case is compared with the synthetic FLAIRs alone), so like is compared with like. Per
case and run: the findings of its ``k`` nearest synthetic studies by cosine similarity (grouped as
``finding_calls.py`` groups them, small vessel disease by Fazekas grade), the share of them in the
case's own class, and the nearest similarity; then the counts summed over the runs. The ``k`` also
vote: a case's ``vote`` is the class most of them hold (a tie goes to the tied class of the nearest),
a readout that needs no prompts (issue 20, stop 64), counted right per class and run.

``--figure DIR``: per real case, DIR/<case>.png shows the case above its 6 nearest synthetic studies of the first
run, each as the run reads it (three axial slices, the display convention of every medalign figure): where a call
comes from, by eye. It is how stop 66 saw BraTS pat0001 sit among MCA infarcts drawn where no glioma was ever drawn.

``--factors``: which drawn domain factor (``ground_truth.json["domain"]``: skull stripping, noise,
edge enhancement, slice thickness, contrast, ...; :func:`study_factors`) makes a synthetic study of
the case's class look like the real case to the models. Per run each study's similarity to the case
is z-scored over the studies compared, averaged over the runs, and ranked against each factor
(Spearman) within the case's class. Use a cohort with the factors spread (a default `synth brain`
cohort; several cohorts: one run of the script each) and many runs; it points at what to change in
the generator, and is no measure of transfer by itself.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finding_calls import cohort_studies  # noqa: E402
from real_cases import DEFAULT_SHARED, real_cases  # noqa: E402


def cosine(real: np.ndarray, synthetic: np.ndarray) -> np.ndarray:
    """Cosine similarity (N,) of every row of ``synthetic`` (N, E) to ``real`` (E,)."""
    s = synthetic / np.maximum(np.linalg.norm(synthetic, axis=1, keepdims=True), 1e-12)  # (N, E)
    return s @ (real / max(float(np.linalg.norm(real)), 1e-12))


def nearest(real: np.ndarray, synthetic: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (k,) of the ``k`` rows of ``synthetic`` (N, E) nearest to ``real`` (E,) by cosine, nearest
    first, and their similarities (k,)."""
    sim = cosine(real, synthetic)
    top = _top(sim, k)
    return top, sim[top]


def _top(sim: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest of ``sim`` (N,), largest first; ties in input order."""
    return np.argsort(-sim, kind="stable")[:k]


def vote(labels: list[str]) -> str:
    """The class most of ``labels`` (nearest first) hold; a tie goes to the tied class that comes first."""
    counts = Counter(labels)
    best = max(counts.values())
    return next(lab for lab in labels if counts[lab] == best)


def study_factors(gt: dict, sequence: str) -> dict[str, float]:
    """The domain factors of one randomised study (``ground_truth.json``) as numbers, those of ``sequence``'s
    series for the per-series ones; {} for a study drawn without randomisation."""
    d = gt.get("domain")
    if not d:
        return {}
    a, c, pt = d["acquisition"].get(sequence, {}), d["contrast"].get(sequence, {}), d.get("patient", {})
    out = {"skull_stripped": float(d["skull_stripped"]), "protocol_thick": float(d["protocol"] == "thick"),
           "protocol_3d": float(d["protocol"] == "3d"), "conspicuity": d["conspicuity"], "texture_cv": d["texture_cv"],
           "sulcal_gamma": pt.get("sulcal_gamma"), "atrophy": gt.get("atrophy"), "age_years": gt.get("age_years")}
    if a:
        out.update({"sharpen": a.get("sharpen") or 0.0, "noise_scale": a["noise_scale"], "thickness_mm": a["thickness_mm"],
                    "inplane_mm": a["inplane_mm"], "partial": float(a["partial"]), "bias_amp": a["bias_amp"],
                    "ghost": a["ghost"], "motion": float(a["motion"] is not None)})
    if c:
        out.update({"gm_to_wm": c["gm"] / c["wm"], "csf_to_wm": c["csf"] / c["wm"]})
    return {k: float(v) for k, v in out.items() if v is not None}


def factor_ranks(z: dict[str, float], factors: dict[str, dict[str, float]]) -> list[dict]:
    """[{factor, rho, p, n}] (Spearman of a study's mean z-scored similarity ``z`` {study: z} against each factor
    {study: {factor: value}}), strongest first (a list: JSON writers may sort keys); a factor that does not vary
    is left out."""
    from scipy.stats import spearmanr

    out = []
    for f in sorted({k for v in factors.values() for k in v}):
        ids = [s for s in z if f in factors.get(s, {})]
        x = np.array([factors[s][f] for s in ids])
        if len(ids) < 5 or np.ptp(x) == 0:
            continue
        rho, p = spearmanr(x, [z[s] for s in ids])
        out.append({"factor": f, "rho": round(float(rho), 3), "p": float(f"{p:.3g}"), "n": len(ids)})
    return sorted(out, key=lambda r: -abs(r["rho"]))


def case_neighbours(model, case: dict, studies: list[dict], k: int, memo: dict) -> dict | None:
    """{sequences, groups {finding group: count}, own_class (share of the k in the case's class), top_similarity,
    neighbours, z {study: similarity z-scored over the studies compared}} of one real case, or None when the run
    reads none of its sequences. ``memo`` keeps the synthetic
    embeddings per sequence set (every case with the same sequences reuses them)."""
    seqs = tuple(s for s in model.sequences if s in case["files"])
    if not seqs:
        return None
    if seqs not in memo:
        have = [s for s in studies if all(q in s["files"] for q in seqs)]
        memo[seqs] = (have, model.encode_image([{q: s["files"][q] for q in seqs} for s in have]) if have else None)
    have, emb = memo[seqs]
    if emb is None:
        return None
    real = model.encode_image([{q: case["files"][q] for q in seqs}])[0]
    sim = cosine(real, emb)  # (N,): all of them, for the z-scores below
    top = _top(sim, k)
    groups = Counter(have[j]["group"] for j in top)
    own = sum(have[j]["label"] == case["class"] for j in top) / len(top)
    z = (sim - sim.mean()) / max(float(sim.std()), 1e-12)  # this run's scale, so runs can be averaged
    return {"sequences": list(seqs), "groups": dict(groups.most_common()), "own_class": round(own, 3),
            "vote": vote([have[j]["label"] for j in top]),
            "top_similarity": round(float(sim[top[0]]), 4), "neighbours": [have[j]["study"] for j in top],
            "similarities": [round(float(sim[j]), 4) for j in top],
            "z": {s["study"]: float(v) for s, v in zip(have, z)}}


def neighbour_figure(model, case: dict, row: dict, studies: list[dict], path: Path, shown: int = 6) -> None:
    """A PNG at ``path``: the real case above its ``shown`` nearest synthetic studies (``row``, :func:`case_neighbours`),
    each preprocessed as the run reads it, three axial slices (35, 50, 65 % of the depth) of the first sequence compared,
    in the display convention of every medalign figure (``MEDALIGN_DISPLAY``); titles give the finding and the cosine."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medalign.utils import axial_for_display, display_window, mark_axes

    seqs, ch = row["sequences"], list(model.sequences).index(row["sequences"][0])
    by_id = {s["study"]: s for s in studies}
    items = [(case["case"], case["files"], f"real, {case['class']}")] + [
        (sid, by_id[sid]["files"], f"{by_id[sid]['group']}, cos {c:.3f}")
        for sid, c in zip(row["neighbours"][:shown], row["similarities"])]
    fig, axes = plt.subplots(len(items), 3, figsize=(6.6, 2.3 * len(items)), squeeze=False)
    for i, (name, files, what) in enumerate(items):
        vol = model._one({q: files[q] for q in seqs})[0][ch].numpy()  # (D, H, W): the channel the run compares
        for j, f in enumerate((0.35, 0.5, 0.65)):
            sl = axial_for_display(vol[int(round(f * (vol.shape[0] - 1)))], model.preprocess_config.canonical)
            axes[i, j].imshow(display_window(sl), cmap="gray", vmin=0, vmax=1)
            axes[i, j].axis("off")
            mark_axes(axes[i, j], seqs[0] if j == 0 else None)
        axes[i, 0].set_title(f"{name}: {what}", fontsize=7, loc="left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def case_factors(cohort: Path, cases: list[dict], zs: dict[str, dict[str, list[float]]],
                 sequence: dict[str, str]) -> dict[str, list[dict]]:
    """Per case: the domain factors (of its first sequence ``sequence[case]``'s series) ranked within the
    studies of its class (``factor_ranks``); prints the strongest."""
    gts = {t["study_id"]: t for t in (json.loads(p.read_text(encoding="utf-8")) for p in cohort.glob("*/ground_truth.json"))}
    out = {}
    print("== domain factors that bring the case's class nearer (Spearman rho of mean z; within its class)")
    for c in cases:
        if c["case"] not in zs:
            continue
        seq = sequence[c["case"]]
        z = {s: float(np.mean(v)) for s, v in zs[c["case"]].items() if gts.get(s, {}).get("label") == c["class"]}
        ranks = factor_ranks(z, {s: study_factors(gts[s], seq) for s in z})
        out[c["case"]] = ranks
        print(f"  {c['case']:<34} " + ", ".join(f"{r['factor']} {r['rho']:+.2f}" for r in ranks[:5]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--cohort", type=Path, required=True, help="a `synth brain` output folder")
    ap.add_argument("--splits", default="", help="comma-separated splits to keep (e.g. train: the run's own studies)")
    ap.add_argument("--k", type=int, default=10, help="neighbours per case")
    ap.add_argument("--factors", action="store_true",
                    help="also rank the drawn domain factors by how close they bring the case's class to the case")
    ap.add_argument("--figure", type=Path, default=None, help="a folder: per real case, a PNG of the case above its 6 "
                    "nearest synthetic studies as the first run reads them (where a call comes from, by eye)")
    ap.add_argument("--checkpoint", default="best", help="best (validation-selected, as classify loads) or last")
    ap.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if a.k < 1:
        raise SystemExit(f"--k must be >= 1, got {a.k}")

    import logging

    import medalign
    from medalign.utils import atomic_write_json

    logging.getLogger("medalign.api").setLevel(logging.ERROR)
    cases = real_cases(a.shared)
    if not cases:
        raise SystemExit(f"no real cases under {a.shared}")
    splits = {s.strip() for s in a.splits.split(",") if s.strip()} or None
    out: dict = {"cohort": str(a.cohort), "splits": a.splits, "k": a.k, "checkpoint": a.checkpoint, "runs": {},
                 "summed": {}}
    summed: dict[str, Counter] = {}
    zs: dict[str, dict[str, list[float]]] = {}  # case -> study -> z per run
    for run in a.runs:
        m = medalign.load(run, checkpoint=a.checkpoint)
        studies = cohort_studies(a.cohort, list(m.sequences), splits)
        if not studies:
            raise SystemExit(f"{a.cohort}: no study with any of {list(m.sequences)}")
        memo: dict = {}
        rows = {}
        for c in cases:
            r = case_neighbours(m, c, studies, a.k, memo)
            if r is None:
                continue
            for sid, v in r.pop("z").items():
                zs.setdefault(c["case"], {}).setdefault(sid, []).append(v)
            rows[c["case"]] = r
            if a.figure is not None and run == a.runs[0]:
                neighbour_figure(m, c, r, studies, a.figure / f"{c['case'].replace('/', '_')}.png")
            summed.setdefault(c["case"], Counter()).update(r["groups"])
            near = ", ".join(f"{g} {n}" for g, n in list(r["groups"].items())[:4])
            print(f"{Path(run).name:<20} {c['case']:<34} {'+'.join(r['sequences']):<6} own class {r['own_class']:.1f} vote {r['vote']:<8} "
                  f"nearest: {near}  (top cos {r['top_similarity']:.3f})", flush=True)
        out["runs"][run] = rows
        right = {k: [sum(rows[c["case"]]["vote"] == k for c in cases if c["case"] in rows and c["class"] == k),
                     sum(c["case"] in rows and c["class"] == k for c in cases)] for k in sorted({c["class"] for c in cases})}
        out.setdefault("vote_right", {})[run] = right
        print(f"{Path(run).name:<20} the {a.k} nearest's vote right per class: "
              + ", ".join(f"{k} {n}/{t}" for k, (n, t) in right.items()), flush=True)
    print(f"== the {a.k} nearest synthetic studies of each case, summed over {len(a.runs)} run(s)")
    for case, cnt in summed.items():
        out["summed"][case] = dict(cnt.most_common())
        print(f"  {case:<34} " + ", ".join(f"{g} {n}" for g, n in cnt.most_common(6)))
    if a.factors:
        first = {case: r["sequences"][0] for rows in out["runs"].values() for case, r in rows.items()}
        out["factors"] = case_factors(a.cohort, cases, zs, first)
    if a.out:
        atomic_write_json(a.out, out)


if __name__ == "__main__":
    main()
