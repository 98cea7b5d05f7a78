"""Inspection sheet: per study a row of mid-axial slices per sequence with report and label
(shown in the one display convention of ``medalign.utils.axial_for_display``, with L/R markers),
plus cohort statistics (class counts per split, report length histogram; the paper's Fig. 3).
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
