"""Realism report: a synthetic cohort against real cases, on what the model sees (the caches).

Per sequence present in both cohorts and per study (``study_metrics``), inside the head:

- intensity histogram and its 5th / 50th / 95th percentiles (normalised units);
- lesion contrast = mean lesion intensity - mean normal-appearing head intensity (head minus
  the lesion dilated by one in-plane voxel, to leave out partial-volume borders);
- lesion volume = lesion voxels / head voxels (grid-independent, unlike ml on a fitted grid);
- lesion largest share = voxels of the largest connected lesion / lesion voxels (one continuous
  periventricular ring vs separate confluent patches of white-matter disease);
- SNR = SD of the tissue signal (in-plane Gaussian, sigma 1 voxel) / noise SD (1.4826 x MAD of
  the residual image - smoothed), inside the head eroded by 2 in-plane voxels. A ratio of two
  spreads, so it survives the per-study z-scoring (a mean / SD SNR is ~0 in z-scored units).
- normal local contrast = the local contrast (below) of the head less the lesion dilated by two
  in-plane voxels: how far normal anatomy's thin bright structures stand out (septum, cortical
  ribbon). The real clinical WMH FLAIRs sit above every synthetic FLAIR of the default cohort
  here; an edge-enhancing reconstruction (``synth brain --sharpen``) reaches them.
- texture = robust SD (1.4826 x MAD) of an in-plane band-pass (Gaussian sigma 0.5 minus sigma 2
  voxels, i.e. structure of ~1-4 voxels: sulci, grey/white borders, tissue texture) in the same
  inner head less the dilated lesion, over the robust SD of the whole inner head. Real FLAIRs show
  gyri on smooth tissue; a blotchy synthetic texture hides them and mimics punctate lesions.

Lesion figures only for studies whose mask has lesion voxels in the head. ``coverage`` says,
per metric, whether the real values lie inside the synthetic cohort's [1st, 99th] percentile
range: the issue-20 criterion "the synthetic distributions cover the real ones".
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from medalign.errors import MedAlignError

METRICS: tuple[str, ...] = ("intensity_p05", "intensity_p50", "intensity_p95", "lesion_contrast",
                            "lesion_volume", "lesion_largest_share", "lesion_heterogeneity", "snr", "texture",
                            "local_contrast", "normal_local_contrast")
# also per class: the lesion metrics, and local contrast (it needs no mask, so it reaches real cases that have none)
LESION_METRICS: tuple[str, ...] = ("lesion_contrast", "lesion_volume", "lesion_largest_share", "lesion_heterogeneity",
                                   "local_contrast", "normal_local_contrast")
LOCAL_WINDOW = (1, 9, 9)  # (D, H, W) surround of the local contrast
COVERAGE_PCT: tuple[float, float] = (1.0, 99.0)
N_BINS = 60
DEFINITIONS = {
    "head": "medalign.data.imaging.head_mask of the sum of |present channels| (preprocessing zeroes "
            "every channel outside the reference sequence's head mask)",
    "intensity_pXX": "percentile of the normalised intensities inside the head",
    "lesion_contrast": "mean(lesion) - mean(head minus lesion dilated by 1 in-plane voxel), normalised units",
    "lesion_volume": "lesion voxels / head voxels",
    "lesion_largest_share": "voxels of the largest 26-connected lesion component / lesion voxels",
    "lesion_heterogeneity": "1.4826 x MAD of the lesion's intensities / 1.4826 x MAD of the head's: one even "
                            "signal (~0.5-1) or a mix, e.g. a dark necrotic core inside bright oedema (> 1.5)",
    "snr": "SD of in-plane Gaussian-smoothed (sigma 1 voxel) signal / (1.4826 x MAD of image - smoothed), "
           "inside the head eroded by 2 in-plane voxels",
    "texture": "1.4826 x MAD of (in-plane Gaussian sigma 0.5 - sigma 2 voxels) in the eroded head less the "
               "dilated lesion, / 1.4826 x MAD of the eroded head's intensities",
    "local_contrast": "99.9th percentile inside the head of each voxel minus the mean of the head voxels in its "
                      "1x9x9 surround: how far the brightest thin structures stand out, with or without a mask "
                      "(what image_encoder.local_contrast hands the encoder)",
    "normal_local_contrast": "local_contrast over the head less the lesion dilated by 2 in-plane voxels (studies "
                             "with a mask only; an empty mask = the whole head): the normal anatomy's thin bright "
                             "structures",
    "percentile": "per real study and metric: its rank among the synthetic studies' values, 0-100 (ties count "
                  "half), e.g. 3 = only 3 % of the synthetic studies lie lower",
    "coverage": "real values inside the synthetic cohort's [1st, 99th] percentile range of the same metric; "
                "for lesion metrics also per class (real class vs synthetic studies of that class) and per finding "
                "(real vs synthetic studies of that finding, e.g. 'others: wmh')",
}


def _inplane() -> np.ndarray:
    """(1, 3, 3) cross: dilation / erosion in-plane only (slices are thick: do not mix them)."""
    from scipy import ndimage

    return ndimage.generate_binary_structure(2, 1)[None]


def head_of(image: np.ndarray, sequence_mask: np.ndarray) -> np.ndarray:
    """Head mask (D, H, W) of a cached study (C, D, H, W) from its present channels."""
    from medalign.data.imaging import head_mask

    present = np.asarray(image)[np.asarray(sequence_mask, bool)]  # (C', D, H, W)
    if present.shape[0] == 0:
        return np.zeros(np.asarray(image).shape[1:], bool)
    return head_mask(np.abs(present.astype(np.float64)).sum(0))


def study_metrics(vol: np.ndarray, head: np.ndarray, lesion: np.ndarray | None = None) -> dict[str, float | None]:
    """The METRICS of one sequence volume (D, H, W) given its head and lesion masks (None = unknown)."""
    from scipy import ndimage

    x = np.asarray(vol, np.float64)
    head = np.asarray(head, bool)
    out: dict[str, float | None] = dict.fromkeys(METRICS)
    if head.sum() < 10:
        return out
    vals = x[head]
    p05, p50, p95 = (float(v) for v in np.percentile(vals, [5, 50, 95]))
    out.update(intensity_p05=p05, intensity_p50=p50, intensity_p95=p95)
    # mean over the head voxels of the surround only: the head's edge against the background is no contrast
    surround = ndimage.uniform_filter(np.where(head, x, 0.0), LOCAL_WINDOW, mode="constant")
    surround /= np.maximum(ndimage.uniform_filter(head.astype(np.float64), LOCAL_WINDOW, mode="constant"), 1e-9)
    excess = x - surround
    out["local_contrast"] = float(np.percentile(excess[head], 99.9))
    les = (np.asarray(lesion) > 0) & head if lesion is not None else np.zeros_like(head)
    if lesion is not None:  # without a mask the lesion cannot be told from the anatomy
        normal_head = head & ~ndimage.binary_dilation(les, structure=_inplane(), iterations=2)
        if normal_head.sum() >= 10:
            out["normal_local_contrast"] = float(np.percentile(excess[normal_head], 99.9))
    if les.any():
        normal = head & ~ndimage.binary_dilation(les, structure=_inplane())
        if normal.sum() >= 10:
            out["lesion_contrast"] = float(x[les].mean() - x[normal].mean())
        out["lesion_volume"] = float(les.sum() / head.sum())
        spread_head = _robust_sd(vals)
        if les.sum() >= 5 and spread_head > 0:  # a spread needs a few voxels
            out["lesion_heterogeneity"] = _robust_sd(x[les]) / spread_head
        comp, n = ndimage.label(les, structure=np.ones((3, 3, 3), bool))
        out["lesion_largest_share"] = float(np.bincount(comp.ravel())[1:].max() / les.sum())
    inner = ndimage.binary_erosion(head, structure=_inplane(), iterations=2)
    if inner.sum() >= 50:
        smooth = ndimage.gaussian_filter(x, sigma=(0.0, 1.0, 1.0))
        resid = (x - smooth)[inner]
        noise = _robust_sd(resid)
        signal = float(smooth[inner].std())
        out["snr"] = signal / noise if noise > 0 else None
        keep = inner & ~ndimage.binary_dilation(les, structure=_inplane(), iterations=2)
        spread = _robust_sd(x[inner])
        if keep.sum() >= 50 and spread > 0:
            band = ndimage.gaussian_filter(x, sigma=(0.0, 0.5, 0.5)) - ndimage.gaussian_filter(x, sigma=(0.0, 2.0, 2.0))
            out["texture"] = _robust_sd(band[keep]) / spread
    return out


def _robust_sd(v: np.ndarray) -> float:
    return 1.4826 * float(np.median(np.abs(v - np.median(v))))


def _histogram(vals: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Fraction of voxels per bin; values beyond the range count in the end bins."""
    h, _ = np.histogram(np.clip(vals, edges[0], edges[-1]), bins=edges)
    return h / max(1, h.sum())


def cohort_values(cache_dir: str | Path, study_ids: Sequence[str], *, labels: dict[str, str] | None = None,
                  findings: dict[str, str] | None = None
                  ) -> tuple[dict[str, list[dict]], dict[str, dict[str, np.ndarray]], Any]:
    """Per sequence, per study: metrics (list of dicts, with the study's ``label`` and ``finding``
    from the mappings, "" where absent) and the head intensities (for histograms).

    Returns (metrics {seq: [row]}, values {seq: {study_id: 1-D array}}, PreprocessConfig).
    """
    from medalign.data.cache import CohortCache

    cache = CohortCache(cache_dir)
    seqs = list(cache.config.sequences)
    rows: dict[str, list[dict]] = {s: [] for s in seqs}
    values: dict[str, dict[str, np.ndarray]] = {s: {} for s in seqs}
    for sid in study_ids:
        a = cache.load(sid)
        img, smask = np.asarray(a["image"]), np.asarray(a["sequence_mask"], bool)
        head = head_of(img, smask)
        lesion = np.asarray(a["mask"]) if a["mask"] is not None else None
        for c, s in enumerate(seqs):
            if not smask[c]:
                continue
            m = study_metrics(img[c], head, lesion)
            rows[s].append({"study_id": sid, "label": (labels or {}).get(sid, ""),
                            "finding": (findings or {}).get(sid, ""), **m})
            values[s][sid] = img[c][head].astype(np.float32)
    return rows, values, cache.config


def coverage(synthetic: Sequence[float | None], real: Sequence[tuple[str, float | None]],
             pct: tuple[float, float] = COVERAGE_PCT) -> dict[str, Any]:
    """Whether the real (study_id, value) pairs lie in the synthetic values' [pct] range.

    verdict: "covered" (all inside), "partly" (some), "not covered" (none), "no data".
    """
    s = np.asarray([v for v in synthetic if v is not None and math.isfinite(v)], float)
    r = [(sid, float(v)) for sid, v in real if v is not None and math.isfinite(v)]
    res: dict[str, Any] = {"n_synthetic": int(s.size), "n_real": len(r), "synthetic_range": None,
                           "inside": 0, "outside": [], "verdict": "no data"}
    if s.size < 2 or not r:
        return res
    lo, hi = (float(v) for v in np.percentile(s, pct))
    res["synthetic_range"] = [lo, hi]
    res["outside"] = [{"study_id": sid, "value": v, "side": "low" if v < lo else "high"}
                      for sid, v in r if not lo <= v <= hi]
    res["inside"] = len(r) - len(res["outside"])
    res["verdict"] = ("covered" if not res["outside"] else "not covered" if res["inside"] == 0 else "partly")
    return res


def percentile_rank(synthetic: Sequence[float | None], value: float | None) -> float | None:
    """``value``'s rank among the synthetic values, 0-100 (ties count half); None without data."""
    s = np.asarray([v for v in synthetic if v is not None and math.isfinite(v)], float)
    if value is None or not math.isfinite(value) or s.size == 0:
        return None
    return float(100.0 * ((s < value).sum() + 0.5 * (s == value).sum()) / s.size)


def _group(row: dict, by_finding: bool) -> str:
    """A row's class ("others"), or its class and finding ("others: wmh"); "" = not in a group."""
    if not by_finding:
        return row["label"]
    return f"{row['label']}: {row['finding']}" if row["label"] and row.get("finding") else ""


def _coverage_by_label(s_rows: list[dict], r_rows: list[dict], metric: str, pct: tuple[float, float]) -> dict:
    """Coverage of each real class's values by the synthetic studies of the same class (a tumour's
    contrast against synthetic tumours, not against every lesion type), then of each real finding's
    by the synthetic studies of that finding ("others: wmh"): a class such as "others" mixes atrophy,
    whose "lesion" is CSF, with white-matter disease, so its range alone covers almost any WMH."""
    out = {}
    for by_finding in (False, True):
        for g in sorted({_group(r, by_finding) for r in r_rows if r[metric] is not None} - {""}):
            syn = [r[metric] for r in s_rows if _group(r, by_finding) == g]
            out[g] = coverage(syn, [(r["study_id"], r[metric]) for r in r_rows if _group(r, by_finding) == g], pct)
    return out


def _verdict_row(seq: str, metric: str, label: str, c: dict, real_rows: list[dict]) -> dict:
    return {"sequence": seq, "metric": metric, "class": label, "verdict": c["verdict"], "inside": c["inside"],
            "n_real": c["n_real"], "n_synthetic": c["n_synthetic"], "synthetic_range": c["synthetic_range"],
            "real_values": [r[metric] for r in real_rows if r[metric] is not None]}


def _clean(x: Any) -> Any:
    """NaN/inf -> None, numpy scalars -> Python, recursively (strict JSON)."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def compare_cohorts(synthetic_cache: str | Path, synthetic_ids: Sequence[str], real_cache: str | Path,
                    real_ids: Sequence[str], *, synthetic_labels: dict[str, str] | None = None,
                    real_labels: dict[str, str] | None = None, synthetic_findings: dict[str, str] | None = None,
                    real_findings: dict[str, str] | None = None, pct: tuple[float, float] = COVERAGE_PCT) -> dict:
    """The realism numbers (JSON-able): per sequence histograms, per-study metrics, coverage verdicts
    (lesion metrics also per class and, where both cohorts name it, per finding: ``study_findings``)."""
    s_rows, s_vals, s_cfg = cohort_values(synthetic_cache, synthetic_ids, labels=synthetic_labels,
                                          findings=synthetic_findings)
    r_rows, r_vals, r_cfg = cohort_values(real_cache, real_ids, labels=real_labels, findings=real_findings)
    s_d, r_d = s_cfg.to_dict(), r_cfg.to_dict()
    diff = sorted(k for k in s_d if k != "sequences" and s_d[k] != r_d.get(k))
    if diff:
        raise MedAlignError(f"the real cache ({real_cache}) was preprocessed differently from the synthetic one "
                            f"({synthetic_cache}) in {diff}; omit --compare-cache to preprocess the real manifest "
                            "with the synthetic cache's config")
    result: dict[str, Any] = {"version": 1, "definitions": DEFINITIONS, "coverage_percentiles": list(pct),
                              "synthetic": {"cache": str(synthetic_cache), "n_studies": len(synthetic_ids)},
                              "real": {"cache": str(real_cache), "n_studies": len(real_ids)},
                              "preprocess": s_d, "sequences": {}, "skipped_sequences": {}, "verdicts": []}
    for s in s_cfg.sequences:
        if s not in r_cfg.sequences or not r_rows.get(s) or not s_rows.get(s):
            who = "synthetic" if not s_rows.get(s) else "real"
            result["skipped_sequences"][s] = f"no {who} study has {s}"
            continue
        pooled = np.concatenate(list(s_vals[s].values()) + list(r_vals[s].values()))
        lo, hi = np.percentile(pooled, [0.5, 99.5])
        edges = np.linspace(lo, hi if hi > lo else lo + 1.0, N_BINS + 1)
        s_h = np.stack([_histogram(v, edges) for v in s_vals[s].values()])  # (n_synth, bins)
        r_h = {sid: _histogram(v, edges) for sid, v in r_vals[s].items()}
        cov = {m: coverage([row[m] for row in s_rows[s]], [(row["study_id"], row[m]) for row in r_rows[s]], pct)
               for m in METRICS}
        by_label = {m: _coverage_by_label(s_rows[s], r_rows[s], m, pct) for m in LESION_METRICS}
        for row in r_rows[s]:  # how far inside: a covered value can still sit where few synthetic studies are
            row["percentile"] = {m: percentile_rank([x[m] for x in s_rows[s]], row[m]) for m in METRICS}
        result["sequences"][s] = {
            "histogram": {"edges": edges, "synthetic_mean": s_h.mean(0), "synthetic_p05": np.percentile(s_h, 5, 0),
                          "synthetic_p95": np.percentile(s_h, 95, 0),
                          "real_mean": np.mean(list(r_h.values()), 0), "real": r_h},
            "studies": {"synthetic": s_rows[s], "real": r_rows[s]},
            "coverage": cov,
            "coverage_by_label": by_label,
        }
        for m, c in cov.items():
            result["verdicts"].append(_verdict_row(s, m, "all", c, r_rows[s]))
            for lab, cl in by_label.get(m, {}).items():
                rows = [r for r in r_rows[s] if lab in (_group(r, False), _group(r, True))]
                result["verdicts"].append(_verdict_row(s, m, lab, cl, rows))
    if not result["sequences"]:
        raise MedAlignError(f"no sequence is present in both cohorts ({result['skipped_sequences']})")
    return _clean(result)


def verdict_table(result: dict) -> pd.DataFrame:
    """One row per (sequence, metric): synthetic range, real values, verdict."""
    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.3g}"

    rows = []
    for v in result["verdicts"]:
        rng = v["synthetic_range"]
        rows.append({"sequence": v["sequence"], "metric": v["metric"], "class": v.get("class", "all"),
                     "synthetic [p1, p99]": f"[{fmt(rng[0])}, {fmt(rng[1])}]" if rng else "-",
                     "real": ", ".join(fmt(x) for x in v["real_values"]) or "-",
                     "inside": f"{v['inside']}/{v['n_real']}", "verdict": v["verdict"]})
    return pd.DataFrame(rows)


def verdict_summary(result: dict) -> str:
    """One line: how many of the verdicts with data are covered, partly, not covered."""
    judged = [v["verdict"] for v in result["verdicts"] if v["verdict"] != "no data"]
    return (f"{judged.count('covered')} of the {len(judged)} verdicts with data covered "
            f"({judged.count('partly')} partly, {judged.count('not covered')} not covered)")


def study_findings(df: pd.DataFrame) -> dict[str, str]:
    """study_id -> finding (sub-type of the class: "wmh", "glioma", ...) for the per-finding verdicts:
    the manifest's ``finding`` column where set, else the variant of the class's first finding in a
    synthetic study's ``ground_truth.json`` (a comorbid one is not the class's); "" when neither says."""
    from medalign.data.manifest import study_ground_truths

    ids = df["study_id"].astype(str)
    named = df["finding"].fillna("").astype(str).str.strip() if "finding" in df else pd.Series("", index=df.index)
    out = dict(zip(ids, named))
    unnamed = named == ""
    for sid, truth in zip(ids[unnamed], study_ground_truths(df[unnamed])):  # only the rows without a name
        main = [f for f in (truth or {}).get("findings", [])
                if f.get("class") == truth.get("label") and not f.get("comorbid")]
        out[sid] = str(main[0].get("variant") or "") if main else ""
    return out


def realism_paths(out: str | Path) -> tuple[Path, Path]:
    """(PNG, JSON) for ``--out``: a .png file (JSON beside it) or a folder (realism.png/.json in it)."""
    out = Path(out)
    if out.suffix.lower() == ".png":
        return out, out.with_suffix(".json")
    return out / "realism.png", out / "realism.json"


def realism_report(manifest: str | Path | pd.DataFrame, cache: str | Path, real_manifest: str | Path | pd.DataFrame,
                   out: str | Path, *, real_cache: str | Path | None = None, overwrite: bool = False,
                   workers: int = 1) -> tuple[Path, Path, dict]:
    """Compare the synthetic cohort (``manifest`` in ``cache``) with the real one; write PNG + JSON.

    Without ``real_cache`` the real manifest is preprocessed with the synthetic cache's
    PreprocessConfig into ``<out folder>/real_cache_<config hash>`` (resumable). Refuses to replace earlier
    outputs unless ``overwrite``. Returns (png, json, result).
    """
    from medalign.data.cache import CohortCache, preprocess_cohort
    from medalign.data.inspect import realism_figure
    from medalign.data.manifest import load_manifest
    from medalign.utils import atomic_write_json, sha256_text

    png, js = realism_paths(out)
    for p in (png, js):
        if p.exists() and not overwrite:
            raise MedAlignError(f"{p} exists (an earlier realism report): pass --overwrite, or another --out")
    sdf = manifest if isinstance(manifest, pd.DataFrame) else load_manifest(manifest, check_files=False)
    rdf = real_manifest if isinstance(real_manifest, pd.DataFrame) else load_manifest(real_manifest, check_files=False)
    scache = CohortCache(cache)
    failed: list[dict] = []
    if real_cache is None:
        # one folder per preprocess config: a rerun against a re-preprocessed cohort never mixes configs
        real_cache = png.parent / f"real_cache_{sha256_text(scache.config.key())[:8]}"
        summ = preprocess_cohort(rdf, scache.config, real_cache, workers=workers, keep_going=True, progress=False)
        failed = summ["errors"]
    rcache = CohortCache(real_cache)
    s_ids = [str(s) for s in sdf["study_id"] if str(s) in scache]
    r_ids = [str(s) for s in rdf["study_id"] if str(s) in rcache]
    if not s_ids:
        raise MedAlignError(f"none of the {len(sdf)} studies of the synthetic manifest is in {cache}; "
                            "run `medalign preprocess` on it first")
    if not r_ids:
        raise MedAlignError(f"none of the {len(rdf)} real studies is in {real_cache}"
                            + (f" ({failed[0]['error']})" if failed else ""))

    def labels(df: pd.DataFrame) -> dict[str, str]:
        return dict(zip(df["study_id"].astype(str), df["label"].fillna("").astype(str))) if "label" in df else {}

    result = compare_cohorts(cache, s_ids, real_cache, r_ids, synthetic_labels=labels(sdf), real_labels=labels(rdf),
                             synthetic_findings=study_findings(sdf), real_findings=study_findings(rdf))
    result["synthetic"].update(n_manifest=len(sdf), not_cached=len(sdf) - len(s_ids))
    result["real"].update(n_manifest=len(rdf), not_cached=len(rdf) - len(r_ids), failed=failed)
    realism_figure(result, png)
    atomic_write_json(js, result)  # last: its presence means the pair is complete
    return png, js, result
