"""Synthetic image-omic cohort with known ground truth (for GiMP and its ablations).

Each patient has a class y, a whole-slide "bag" and an expression vector:

* Bag: patches on a 2-D grid (raster order, like CLAM coordinates), so neighbouring
  patches in the sequence are spatially adjacent. The grid is tiled into a few normal
  tissue regions (Voronoi cells, one prototype each); a patient-specific smooth field
  (random Fourier features) is added so adjacent patches look alike; a few round blobs
  of patches carry a class-specific prototype, plus blobs of a "shared tumour" type seen
  in every class (so detecting tumour alone is not enough). The class-specific fraction
  scales with ``img_signal`` and varies per patient (some slides hold almost none).
* Expression: ``n_genes`` genes in ``n_gene_groups`` contiguous groups; low-rank patient
  factors + noise; ``informative_groups`` groups get a class pattern scaled by
  ``gene_signal`` times a per-patient strength. Values are on a log2-like scale.

Because the per-patient strengths are independent between modalities, each modality
alone misclassifies some patients that the other gets right: fusion helps.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from medalign.data.bags import save_bag
from medalign.utils import atomic_path, atomic_write_json


def _bag(rng: np.random.Generator, n: int, y: int, *, protos: dict, feat_dim: int, img_signal: float,
         tumour_fraction: float, noise: float) -> tuple[np.ndarray, np.ndarray, dict]:
    side = math.ceil(math.sqrt(n))
    rr, cc = np.divmod(np.arange(n), side)  # raster order over the grid
    pos = np.stack([rr, cc], 1).astype(np.float64) / side  # (N, 2) in [0, 1)
    # normal tissue regions: Voronoi cells around a few random centres
    k = protos["normal"].shape[0]
    n_regions = int(rng.integers(3, 7))
    centres = rng.random((n_regions, 2))
    region_type = rng.integers(0, k, n_regions)
    d2 = ((pos[:, None, :] - centres[None]) ** 2).sum(-1)  # (N, R)
    types = region_type[d2.argmin(1)]
    feats = protos["normal"][types].copy()  # (N, D)
    kind = np.zeros(n, np.int8)  # 0 normal, 1 shared tumour, 2 class-specific

    def blobs(frac: float, code: int, proto: np.ndarray) -> None:
        if frac <= 0:
            return
        n_blobs = int(rng.integers(1, 4))
        r = math.sqrt(frac / (n_blobs * math.pi))  # radius giving ~frac of the unit square
        for _ in range(n_blobs):
            c = rng.random(2)
            inside = ((pos - c) ** 2).sum(1) < r * r
            feats[inside] = proto
            kind[inside] = code

    blobs(0.06, 1, protos["shared"])
    blobs(tumour_fraction, 2, protos["class"][y] * img_signal + protos["shared"] * (1 - min(img_signal, 1.0)))
    # smooth patient-specific field: adjacent patches similar, slides differ
    j = 8
    w = rng.normal(0, 6.0, (2, j))
    phase = rng.uniform(0, 2 * math.pi, j)
    amp = rng.normal(0, 0.35 / math.sqrt(j), (j, feat_dim))
    field = np.cos(pos @ w + phase) @ amp  # (N, D)
    feats = feats + field + rng.normal(0, noise, feats.shape)
    coords = np.stack([rr, cc], 1).astype(np.int32) * 256
    return feats.astype(np.float32), coords, {"class_patch_fraction": float((kind == 2).mean()),
                                              "shared_tumour_fraction": float((kind == 1).mean())}


def generate_omics_cohort(out_dir: str | Path, *, n: int = 160, n_classes: int = 2, seed: int = 0,
                          feat_dim: int = 128, n_genes: int = 512, n_gene_groups: int = 16,
                          informative_groups: int = 2, img_signal: float = 1.0, gene_signal: float = 1.0,
                          tumour_fraction: float = 0.04, bag_min: int = 200, bag_max: int = 20000,
                          patch_noise: float = 0.5, gene_noise: float = 1.0, fmt: str = "h5",
                          fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)) -> Path:
    """Write a synthetic image-omic cohort; returns the manifest path.

    Layout: ``manifest.csv`` (study_id, patient_id, split, label, bag, omics, n_patches),
    ``bags/<h5|pt|npy>_files/<study_id>.<fmt>`` (CLAM layout; features + coords),
    ``expression.csv`` (patient_id x genes), ``gene_groups.json`` and ``ground_truth.json``.
    """
    if fmt not in ("h5", "pt", "npy"):
        raise ValueError(f"fmt must be h5, pt or npy, got {fmt!r}")
    if n_genes % n_gene_groups:
        raise ValueError(f"n_genes {n_genes} must be divisible by n_gene_groups {n_gene_groups}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    classes = [f"type_{chr(ord('a') + i)}" for i in range(n_classes)]
    protos = {"normal": rng.normal(0, 1, (6, feat_dim)), "shared": rng.normal(0, 1, feat_dim),
              "class": rng.normal(0, 1, (n_classes, feat_dim))}
    gsize = n_genes // n_gene_groups
    groups = {f"group_{g:02d}": list(range(g * gsize, (g + 1) * gsize)) for g in range(n_gene_groups)}
    inf_groups = rng.choice(n_gene_groups, informative_groups, replace=False)
    pattern = np.zeros((n_classes, n_genes))
    for g in inf_groups:
        idx = np.arange(g * gsize, (g + 1) * gsize)
        pattern[:, idx] = rng.normal(0, 1, (n_classes, gsize))
    loadings = rng.normal(0, 1, (4, n_genes))  # shared biology (not class related)
    baseline = rng.uniform(2, 10, n_genes)

    labels = np.arange(n) % n_classes
    rng.shuffle(labels)
    lengths = np.exp(rng.uniform(math.log(bag_min), math.log(bag_max), n)).astype(int)
    rows, expr, truth = [], [], {}
    splits = np.empty(n, dtype=object)
    for c in range(n_classes):  # stratified split
        ids = np.flatnonzero(labels == c)
        rng.shuffle(ids)
        n_test, n_val = int(round(fractions[2] * len(ids))), int(round(fractions[1] * len(ids)))
        splits[ids[:n_test]], splits[ids[n_test:n_test + n_val]], splits[ids[n_test + n_val:]] = "test", "val", "train"
    sub = {"h5": "h5_files", "pt": "pt_files", "npy": "npy_files"}[fmt]
    for i in range(n):
        sid, y = f"syn{i:04d}", int(labels[i])
        img_strength = float(rng.choice([0.05, 1.0, 1.0, 1.5]))  # a quarter of slides show ~no class patches
        gene_strength = float(rng.choice([0.1, 1.0, 1.0, 1.5]))  # independently, a quarter of profiles are flat
        feats, coords, info = _bag(rng, int(lengths[i]), y, protos=protos, feat_dim=feat_dim, img_signal=img_signal,
                                   tumour_fraction=tumour_fraction * img_strength, noise=patch_noise)
        rel = Path("bags") / sub / f"{sid}.{fmt}"
        save_bag(out / rel, feats, coords)
        z = rng.normal(0, 1, 4)
        e = baseline + z @ loadings * 0.7 + gene_signal * gene_strength * pattern[y] + rng.normal(0, gene_noise, n_genes)
        expr.append(e.astype(np.float32))
        rows.append({"study_id": sid, "patient_id": f"P{i:04d}", "split": splits[i], "label": classes[y],
                     "bag": rel.as_posix(), "omics": "expression.csv", "n_patches": int(lengths[i])})
        truth[sid] = {"label": classes[y], "image_strength": img_strength, "gene_strength": gene_strength, **info}
    genes = [f"G{j:04d}" for j in range(n_genes)]
    expr_df = pd.DataFrame(np.stack(expr), index=[r["patient_id"] for r in rows], columns=genes)
    expr_df.index.name = "patient_id"
    with atomic_path(out / "expression.csv") as tmp:
        expr_df.to_csv(tmp, float_format="%.4f")
    atomic_write_json(out / "gene_groups.json", {k: [genes[j] for j in v] for k, v in groups.items()})
    atomic_write_json(out / "ground_truth.json", {
        "params": {"n": n, "n_classes": n_classes, "seed": seed, "feat_dim": feat_dim, "n_genes": n_genes,
                   "img_signal": img_signal, "gene_signal": gene_signal, "tumour_fraction": tumour_fraction,
                   "bag_min": bag_min, "bag_max": bag_max, "informative_groups": [f"group_{g:02d}" for g in inf_groups]},
        "studies": truth})
    manifest = out / "manifest.csv"
    with atomic_path(manifest) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
    return manifest
