"""Figures for the evaluation report (matplotlib, Agg backend, atomic PNG writes)."""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from medalign.utils import atomic_write_bytes


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Write a matplotlib figure as PNG atomically (parent folders created), then close it."""
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def _class_colours(classes: Sequence[str]) -> dict:
    plt = _plt()
    cmap = plt.get_cmap("tab10")
    return {c: cmap(i % 10) for i, c in enumerate(classes)}


def read_metrics_jsonl(path: str | Path) -> list[dict]:
    """Rows of a run's metrics.jsonl; unreadable lines are skipped (a run may still be writing)."""
    rows = []
    p = Path(path)
    if not p.is_file():
        return rows
    for line in p.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def plot_training_curves(rows: list[dict], path: str | Path, *, title: str = "") -> Path | None:
    """Fig. 5: loss per step and per epoch (train, val), validation metrics, learning rate."""
    if not rows:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
    train = [r for r in rows if r.get("split") == "train" and r.get("loss") is not None]
    if train:  # raw per-step loss, faint, on the epoch axis
        spe = max(1, max(int(r.get("step", 0)) for r in train) / max(1, max(int(r.get("epoch", 1)) for r in train)))
        axes[0].plot([r.get("step", i) / spe for i, r in enumerate(train)], [r["loss"] for r in train],
                     color="C0", alpha=0.25, lw=0.8)
    for split, style, colour in (("train", "-", "C0"), ("val", "--", "C1")):
        by_epoch: dict[int, list[float]] = {}
        for r in rows:
            if r.get("split") == split and r.get("loss") is not None and r.get("epoch") is not None:
                by_epoch.setdefault(int(r["epoch"]), []).append(float(r["loss"]))
        if by_epoch:
            ep = sorted(by_epoch)
            axes[0].plot(ep, [np.mean(by_epoch[e]) for e in ep], style, color=colour, marker="o", ms=3, label=split)
    axes[0].set_xlabel("epoch"), axes[0].set_ylabel("loss"), axes[0].legend()
    axes[0].set_title(title or "loss", fontsize=9)
    skip = {"epoch", "step", "split", "loss", "lr", "n"}
    val = [r for r in rows if r.get("split") == "val"]
    keys = sorted({k for r in val for k, v in r.items() if k not in skip and not k.endswith("_loss")
                   and isinstance(v, (int, float)) and k != "mean_rank"})
    for k in keys:
        pts = [(r["epoch"], r[k]) for r in val if k in r and r.get("epoch") is not None]
        if pts:
            axes[1].plot([a for a, _ in pts], [b for _, b in pts], marker="o", ms=3, label=k)
    if keys:
        axes[1].legend(fontsize=7)
    axes[1].set_xlabel("epoch"), axes[1].set_title("validation metrics", fontsize=9)
    lr = [(r.get("step", i), r["lr"]) for i, r in enumerate(rows) if r.get("split") == "train" and r.get("lr")]
    if lr:
        axes[2].plot([a for a, _ in lr], [b for _, b in lr])
        axes[2].set_yscale("log")
    axes[2].set_xlabel("step"), axes[2].set_ylabel("learning rate")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_similarity_matrix(sim: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str],
                           path: str | Path, *, title: str = "batch similarity (text rows x image columns)") -> Path:
    """Fig. 6: cosine similarity of a batch, diagonal = matching pairs."""
    plt = _plt()
    n, m = sim.shape
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * m, 0.8 + 0.5 * n))
    im = ax.imshow(sim, cmap="viridis")
    for i in range(n):
        for j in range(m):
            ax.text(j, i, f"{sim[i, j]:.2f}", ha="center", va="center", fontsize=6,
                    color="white" if sim[i, j] < sim.mean() else "black")
    ax.set_xticks(range(m), col_labels, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(n), row_labels, fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04)
    return save_figure(fig, path)


def plot_rank_vs_similarity(ranks: Sequence[int], sims: Sequence[float], labels: Sequence[str],
                            classes: Sequence[str], path: str | Path, *, pool_size: int | None = None) -> Path:
    """Fig. 7: per query, rank of the right image vs its similarity, by class; box of ranks per class."""
    plt = _plt()
    ranks, sims, labels = np.asarray(ranks), np.asarray(sims), np.asarray(labels)
    col = _class_colours(classes)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for c in classes:
        sel = labels == c
        if sel.any():
            axes[0].scatter(sims[sel], ranks[sel], color=col[c], label=f"{c} (n={sel.sum()})", s=22, alpha=0.8)
    axes[0].set_xlabel("cosine similarity of the matching pair"), axes[0].set_ylabel("rank of the right image")
    axes[0].invert_yaxis()
    if pool_size:
        axes[0].axhline((pool_size + 1) / 2, color="grey", ls=":", lw=1, label="chance mean rank")
    axes[0].legend(fontsize=7)
    present = [c for c in classes if (labels == c).any()]
    if present:
        bp = axes[1].boxplot([ranks[labels == c] for c in present], patch_artist=True)
        for patch, c in zip(bp["boxes"], present):
            patch.set_facecolor(col[c])
        axes[1].set_xticks(range(1, len(present) + 1), present, rotation=20)
    axes[1].set_ylabel("rank (1 = best)"), axes[1].set_title("rank by class", fontsize=9)
    return save_figure(fig, path)


def plot_embedding_map(emb: np.ndarray, labels: Sequence[str], classes: Sequence[str], path: str | Path,
                       *, method: str = "tsne", seed: int = 0, title: str = "") -> Path | None:
    """t-SNE (or UMAP if installed and asked for) of image embeddings coloured by class."""
    emb = np.asarray(emb, np.float64)
    n = len(emb)
    if n < 3:
        return None
    if method == "umap":
        try:
            import umap  # type: ignore

            xy = umap.UMAP(random_state=seed, n_neighbors=min(15, n - 1)).fit_transform(emb)
        except ImportError:
            method = "tsne"
    if method == "tsne":
        from sklearn.manifold import TSNE

        xy = TSNE(n_components=2, perplexity=float(max(2, min(30, (n - 1) // 3))), init="pca",
                  random_state=seed).fit_transform(emb)  # (N, 2)
    plt = _plt()
    labels = np.asarray(labels)
    col = _class_colours(classes)
    fig, ax = plt.subplots(figsize=(4.8, 4))
    for c in classes:
        sel = labels == c
        if sel.any():
            ax.scatter(xy[sel, 0], xy[sel, 1], color=col[c], label=c, s=20)
    ax.set_xticks([]), ax.set_yticks([])
    ax.legend(fontsize=7)
    ax.set_title(title or f"{method.upper()} of image embeddings", fontsize=9)
    return save_figure(fig, path)


def plot_confusion(cm: Sequence[Sequence[int]], classes: Sequence[str], path: str | Path, *, title: str = "") -> Path:
    plt = _plt()
    cm = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(3.8, 3.4))
    ax.imshow(cm, cmap="Blues")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set_xlabel("predicted"), ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def plot_label_efficiency(curves: dict[str, dict], path: str | Path, *, metric: str = "balanced_accuracy",
                          title: str = "label efficiency") -> Path | None:
    """Probe metric vs fraction of training labels; ``curves`` = {name: label_efficiency() result}."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    drawn = False
    for name, le in curves.items():
        if not le:
            continue
        for probe in le.get("probes", []):
            fr = le["fractions"]
            vals = [le[probe][str(float(f))].get(metric) for f in fr]
            ci = [le[probe][str(float(f))].get(f"{metric}_ci") or {} for f in fr]
            lo = [c.get("lo", v) if c.get("lo") is not None else v for c, v in zip(ci, vals)]
            hi = [c.get("hi", v) if c.get("hi") is not None else v for c, v in zip(ci, vals)]
            line, = ax.plot(fr, vals, marker="o", label=f"{name}: {probe}")
            ax.fill_between(fr, lo, hi, color=line.get_color(), alpha=0.12)
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xscale("log"), ax.set_xlabel("fraction of training labels"), ax.set_ylabel(metric.replace("_", " "))
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6)
    return save_figure(fig, path)


def mid_axial_png(image: np.ndarray, *, size: int = 96, orientation: str = "RAS",
                  sequences: list[str] | None = None) -> bytes:
    """PNG bytes of the mid-axial slice of each channel of a (C, D, H, W) volume, side by side.

    Each tile is shown in the one display convention (``medalign.utils.axial_for_display``; the
    volume's axes run as ``orientation`` says) with L/R markers and its sequence name.
    """
    from PIL import Image

    from medalign.utils import axial_for_display, display_window, mark_image

    vol = np.asarray(image, dtype=np.float32)
    if vol.ndim == 3:
        vol = vol[None]
    c, d = vol.shape[:2]
    tiles = []
    for ch in range(c):
        sl = display_window(axial_for_display(vol[ch, d // 2], orientation))  # (H, W) in [0, 1]
        tile = Image.fromarray((sl * 255).astype(np.uint8))
        scale = size / max(1, tile.height)
        tile = tile.resize((max(1, int(tile.width * scale)), size))
        name = sequences[ch] if sequences and ch < len(sequences) else None
        tiles.append(np.asarray(mark_image(tile, name)))  # (size, w, 3)
    im = Image.fromarray(np.concatenate(tiles, axis=1))  # (size, C*w, 3)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()
