"""Inspection sheet: per study a row of mid-axial slices per sequence with report and label
(shown in the one display convention of ``medalign.utils.axial_for_display``, with L/R markers),
plus cohort statistics (class counts per split, report length histogram; the paper's Fig. 3);
and ``realism_figure``, the figure of ``medalign inspect --compare`` (``data/realism_compare.py``).
"""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medalign.errors import CohortError
from medalign.utils import axial_for_display, display_window, mark_axes


def _mid_axial_raw(path: str) -> np.ndarray:
    """Middle axial slice (H, W) of a raw file, its axes running as the code "LPS" says (any stored order)."""
    import SimpleITK as sitk

    from medalign.data.volume_io import read_volume

    img = sitk.DICOMOrient(read_volume(path), "LPS")  # x -> Left, y -> Posterior, z -> Superior
    arr = sitk.GetArrayFromImage(img)  # (z, y, x); a copy: a view would dangle once img is freed
    return np.asarray(arr[arr.shape[0] // 2])  # (y, x)


def inspection_sheet(manifest: pd.DataFrame | str | Path, out: str | Path, *, cache_dir: str | Path | None = None,
                     max_studies: int = 12, sequences: list[str] | None = None, seed: int = 0) -> Path:
    """Write the PNG sheet (atomically) and return its path.

    With ``cache_dir`` the slices come from the preprocessed arrays (what the model sees);
    without, from the raw files. Studies are picked evenly across classes.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medalign.data.manifest import load_manifest, manifest_sequences
    from medalign.data.schema import CLASSES, SPLITS, image_column
    from medalign.utils import atomic_path

    df = manifest if isinstance(manifest, pd.DataFrame) else load_manifest(manifest, check_files=False)
    cache = None
    if cache_dir is not None:
        from medalign.data.cache import CohortCache

        cache = CohortCache(cache_dir)
        seqs = list(cache.config.sequences)
    else:
        seqs = sequences or manifest_sequences(df)
    pick = _pick(df, max_studies, seed)
    n = len(pick)
    ncol = len(seqs) + 1  # slices + text
    fig = plt.figure(figsize=(2.2 * len(seqs) + 4.5, 2.3 * n + 3.2))
    gs = fig.add_gridspec(n + 1, ncol, height_ratios=[1.0] * n + [1.4],
                          width_ratios=[1.0] * len(seqs) + [2.2], hspace=0.35, wspace=0.05)
    for r, (_, row) in enumerate(pick.iterrows()):
        sid = str(row["study_id"])
        arr = cache.load(sid) if cache is not None and sid in cache else None
        for c, s in enumerate(seqs):
            ax = fig.add_subplot(gs[r, c])
            ax.set_xticks([])
            ax.set_yticks([])
            sl = None
            if arr is not None:
                if arr["sequence_mask"][c]:
                    vol = arr["image"][c]  # (D, H, W)
                    sl = axial_for_display(np.asarray(vol[vol.shape[0] // 2]), cache.config.canonical)
            elif image_column(s) in df.columns and isinstance(row[image_column(s)], str) and row[image_column(s)]:
                try:
                    sl = axial_for_display(_mid_axial_raw(row[image_column(s)]), "LPS")
                except CohortError:
                    sl = None
            if sl is None:
                ax.set_facecolor("0.85")
                ax.text(0.5, 0.5, "missing", ha="center", va="center", fontsize=8, color="0.4")
            else:
                ax.imshow(display_window(sl), cmap="gray", vmin=0, vmax=1, aspect="auto")
                mark_axes(ax, s, fontsize=6)
            if r == 0:
                ax.set_title(s, fontsize=9)
            if c == 0:
                ax.set_ylabel(sid, fontsize=7)
        ax = fig.add_subplot(gs[r, len(seqs)])
        ax.axis("off")
        label = row["label"] if "label" in df.columns and row["label"] else "(no label)"
        split = row["split"] if "split" in df.columns and row["split"] else "-"
        text = str(row["report"]) if "report" in df.columns and isinstance(row["report"], str) else ""
        wrapped = "\n".join(textwrap.wrap(text, 48)[:7])
        ax.text(0, 1, f"[{label} | {split}]\n{wrapped}", va="top", ha="left", fontsize=6.5, family="monospace")

    # Cohort statistics.
    ax = fig.add_subplot(gs[n, : max(1, ncol // 2)])
    lab = df["label"].replace("", "(none)") if "label" in df.columns else pd.Series(["(none)"] * len(df))
    spl = df["split"].replace("", "(none)") if "split" in df.columns else pd.Series(["all"] * len(df))
    tab = pd.crosstab(lab.values, spl.values)
    order = [c for c in CLASSES if c in tab.index] + [c for c in tab.index if c not in CLASSES]
    cols = [s for s in SPLITS if s in tab.columns] + [s for s in tab.columns if s not in SPLITS]
    tab = tab.loc[order, cols]
    x = np.arange(len(order))
    w = 0.8 / max(1, len(cols))
    for k, s in enumerate(cols):
        ax.bar(x + k * w, tab[s].values, w, label=f"{s} ({int(tab[s].sum())})")
    ax.set_xticks(x + w * (len(cols) - 1) / 2)
    ax.set_xticklabels(order, fontsize=7, rotation=20)
    ax.set_ylabel("studies", fontsize=8)
    ax.set_title(f"class counts per split (n={len(df)})", fontsize=9)
    ax.legend(fontsize=7)
    ax2 = fig.add_subplot(gs[n, max(1, ncol // 2):])
    if "report" in df.columns:
        lens = df["report"].map(lambda t: len(str(t).split()) if isinstance(t, str) else 0)
        ax2.hist(lens, bins=min(30, max(5, len(df) // 5)), color="tab:gray")
        ax2.set_title(f"report length (words): median {int(np.median(lens))}", fontsize=9)
        ax2.set_xlabel("words", fontsize=8)
    else:
        ax2.axis("off")
        ax2.text(0.5, 0.5, "no report column", ha="center")
    out = Path(out)
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=90, format="png", bbox_inches="tight")
    plt.close(fig)
    return out


def _pick(df: pd.DataFrame, k: int, seed: int) -> pd.DataFrame:
    """Up to k studies, round-robin over labels (so every class shows up)."""
    if len(df) <= k:
        return df
    rng = np.random.default_rng(seed)
    if "label" not in df.columns:
        return df.iloc[np.sort(rng.choice(len(df), k, replace=False))]
    groups = [list(rng.permutation(np.flatnonzero(df["label"].values == lab))) for lab in sorted(df["label"].unique())]
    chosen: list[int] = []
    while len(chosen) < k:
        for g in groups:
            if g and len(chosen) < k:
                chosen.append(g.pop())
    return df.iloc[sorted(chosen)]


def inspect_summary(df: pd.DataFrame) -> dict[str, Any]:
    from medalign.data.manifest import manifest_sequences
    from medalign.data.schema import image_column

    return {
        "studies": len(df),
        "patients": int(df["patient_id"].nunique()),
        "sequences": {s: int((df[image_column(s)].astype(str) != "").sum()) for s in manifest_sequences(df)},
    }


# ----------------------------------------------------------------------------- realism figure
def realism_figure(result: dict[str, Any], out: str | Path) -> Path:
    """Write (atomically) the realism PNG of ``realism_compare.compare_cohorts``'s result.

    Per sequence a row: head-intensity histograms (synthetic mean with its 5-95% band across
    studies, each real study), then lesion contrast, lesion volume and SNR as strip plots
    (synthetic grey, real green inside / red outside the synthetic [p1, p99] band, shaded).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medalign.utils import atomic_path

    seqs = list(result["sequences"])
    fig, axes = plt.subplots(len(seqs), 9, figsize=(31.5, 3.1 * len(seqs)), squeeze=False)
    for r, s in enumerate(seqs):
        sq = result["sequences"][s]
        h, cov = sq["histogram"], sq["coverage"]
        ax = axes[r, 0]
        edges = np.asarray(h["edges"], float)
        mid = (edges[:-1] + edges[1:]) / 2
        ax.fill_between(mid, h["synthetic_p05"], h["synthetic_p95"], color="0.8", step="mid",
                        label="synthetic 5-95%")
        ax.step(mid, h["synthetic_mean"], where="mid", color="0.3", lw=1.5,
                label=f"synthetic mean (n={len(sq['studies']['synthetic'])})")
        for k, (sid, hv) in enumerate(h["real"].items()):
            ax.step(mid, hv, where="mid", lw=0.9, color=plt.cm.tab10(k % 10), label=f"real {sid}"[:28])
        pv = ", ".join(f"{m[-3:]} {cov[m]['inside']}/{cov[m]['n_real']}"
                       for m in ("intensity_p05", "intensity_p50", "intensity_p95"))
        ax.set_title(f"{s}: intensity inside the head\n(real inside synthetic range: {pv})", fontsize=8)
        ax.set_xlabel("normalised intensity", fontsize=7)
        ax.set_ylabel("fraction of head voxels", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=5, loc="upper right")
        for c, (m, title, log) in enumerate((("lesion_contrast", "lesion contrast (lesion - normal)", False),
                                             ("lesion_volume", "lesion volume (fraction of head)", True),
                                             ("lesion_largest_share", "largest lesion / lesion volume", False),
                                             ("lesion_heterogeneity", "signal spread inside the lesion / head's", True),
                                             ("snr", "SNR (signal SD / residual noise SD)", True),
                                             ("texture", "texture (1-4 voxel band / spread)", False),
                                             ("local_contrast", "local contrast, p99.9 (no mask needed)", False),
                                             ("normal_local_contrast", "local contrast outside the lesion", False)),
                                            start=1):
            _strip(axes[r, c], sq["studies"], cov[m], m, f"{s}: {title}", log=log,
                   by_label=(sq.get("coverage_by_label") or {}).get(m) or {})
    fig.suptitle(f"Realism: synthetic ({result['synthetic'].get('n_studies')} studies) vs real "
                 f"({result['real'].get('n_studies')} studies), per sequence, on the preprocessed arrays",
                 fontsize=10)
    fig.tight_layout()
    out = Path(out)
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return out


def _strip(ax: Any, studies: dict[str, list[dict]], cov: dict[str, Any], metric: str, title: str, *, log: bool,
           by_label: dict[str, dict] | None = None) -> None:
    """Synthetic values (jittered, coloured by class) at x=0, real ones at x=1: green inside /
    red outside the synthetic [p1, p99] band of their class (of all studies where the class has
    no synthetic band; the all-studies band is shaded); per-class verdicts in the title."""
    rng = np.random.default_rng(0)
    syn = [(row.get("label") or "", row[metric]) for row in studies["synthetic"] if row[metric] is not None]
    real = [(row["study_id"], row[metric]) for row in studies["real"] if row[metric] is not None]
    if log:
        ax.set_yscale("log")
        syn = [(lab, v) for lab, v in syn if v > 0]
        real = [(sid, v) for sid, v in real if v > 0]
    if cov.get("synthetic_range"):
        lo, hi = cov["synthetic_range"]
        if not log or lo > 0:
            ax.axhspan(lo, hi, color="0.9", zorder=0)
    for k, lab in enumerate(sorted({lab for lab, _ in syn})):
        v = np.asarray([v for la, v in syn if la == lab], float)
        ax.scatter(rng.uniform(-0.15, 0.15, v.size), v, s=9, color=plt_colour(k), label=lab or "(no label)")
    # red = outside the band of the synthetic studies of the same class where the class has one, else of all
    judged = {lab: c for lab, c in (by_label or {}).items() if c.get("synthetic_range")}
    in_class = {r["study_id"] for r in studies["real"] if r["label"] in judged}
    outside = {o["study_id"] for c in judged.values() for o in c["outside"]}
    outside |= {o["study_id"] for o in cov.get("outside", []) if o["study_id"] not in in_class}
    for sid, v in real:
        ax.scatter([1 + rng.uniform(-0.1, 0.1)], [v], s=24, marker="D", edgecolor="k", lw=0.4,
                   color="tab:red" if sid in outside else "tab:green")
        ax.annotate(sid[:18], (1.12, v), fontsize=5, va="center")
    ax.set_xticks([0, 1])
    ax.set_xticklabels([f"synthetic (n={len(syn)})", f"real (n={len(real)})"], fontsize=7)
    ax.set_xlim(-0.5, 1.9)
    ax.tick_params(labelsize=6)
    if syn and len({lab for lab, _ in syn}) > 1:
        ax.legend(fontsize=5, loc="best", markerscale=0.8)
    per = "; ".join(f"{lab} {c['inside']}/{c['n_real']}" for lab, c in (by_label or {}).items())
    ax.set_title(f"{title}\n{cov['verdict']} ({cov['inside']}/{cov['n_real']} real inside)"
                 + (f"; same class: {per}" if per else ""), fontsize=8)
    if not syn and not real:
        ax.text(0.5, 0.5, "no lesion masks" if metric.startswith("lesion") else "no data",
                transform=ax.transAxes, ha="center", va="center", fontsize=8, color="0.4")


def plt_colour(k: int) -> Any:
    """k-th colour of the tab10 cycle (one colour per class in the strip plots)."""
    import matplotlib

    return matplotlib.colormaps["tab10"](k % 10)
