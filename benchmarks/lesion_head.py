"""What the auxiliary lesion head (``recipe.lesion_aux``) sees at a lesion, per study group:

- the per-cell AUC of its lesion-ness (1 - p(no lesion)) for the cells the lesion mask covers
  against the other cells inside the head (does it find the lesion in the scan?);
- its class probabilities averaged over the lesion cells (which class does it say the lesion is?);
- the study-level evidence of ``recipe.lesion_evidence: lesion`` (lesion load, and the class mix of
  the top 1/16 cells) as acquired and with the lesion erased (does the summary move with the lesion?);
- with ``--cohort``, the study-level AUC of the lesion load (mean lesion-ness over the cells: the
  estimated lesion share for a head trained with ``lesion_targets: fraction``) of each group against
  the cohort's normal studies shown the same way (does it tell a study with this lesion from one
  without?). A head that calls lesion in every brain scores ~0.5 there however well it ranks cells.

Each figure is the median over a group's studies (real WMH, real tumours, each synthetic variant).

    python benchmarks/lesion_head.py RUN [RUN ...] [--cohort SYNTH_DIR] [--variants wmh,glioma]
        [--sequences flair] [--shared ../shared/data] [--out results.json]

Studies and erasing as ``lesion_reliance.py`` (the real cases with a mask in ``--shared``; with
``--cohort`` the synthetic studies of ``--variants``, showing ``--sequences``). Cells are those of
the head's grid (``image_encoder.local_level``); a cell is a lesion cell when the mask, max-pooled
to the grid, covers it (the lesion loss's targets); a cell is inside the head when most of its voxels
are (:func:`head_voxels`).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from lesion_reliance import DEFAULT_SHARED, erased_copies, real_items, synthetic_items  # noqa: E402


def head_voxels(image: np.ndarray, present: np.ndarray):
    """(C, D, H, W) preprocessed image -> float (D, H, W) tensor, 1 inside the head: preprocessing
    normalises inside the reference's head mask and sets every voxel outside it to exactly 0."""
    import torch

    return torch.from_numpy((image[np.asarray(present, bool)] != 0).any(0).astype(np.float32))


def head_logits(model, files: dict, mask: str | None = None):
    """(lesion-head logits (1, 1 + K, *grid), the preprocessed study) of one study through ``model``."""
    import torch

    from medalign.data.imaging import preprocess_study

    files = {k: v for k, v in files.items() if k in model.sequences}
    st = preprocess_study(files, model.preprocess_config, study_id="study", mask_path=mask)
    image = torch.from_numpy(st.image)[None]  # (1, C, D, H, W)
    seq = torch.from_numpy(st.sequence_mask.astype(bool))[None]  # (1, C)
    rec = model.recipe
    with torch.no_grad():
        return rec.lesion_head(rec.image_encoder(image, seq)["local"]), st


def study_load(model, files: dict) -> float:
    """The lesion load (mean over the cells of 1 - p(no lesion)) the head gives one study."""
    logits, _ = head_logits(model, files)
    return float(1.0 - logits.softmax(1)[0, 0].mean())


def normal_items(cohort: Path, sequences: list[str]) -> list[dict]:
    """The studies of a synthetic cohort labelled normal, showing ``sequences``."""
    from feature_probe import cohort_groups

    return cohort_groups(cohort, [], ["normal"], sequences)


def vs_normal_auc(loads: list[float], normal_loads: list[float]) -> float:
    """AUC of a group's study loads against the normal studies' (0.5 = no separation)."""
    from sklearn.metrics import roc_auc_score

    if not loads or not normal_loads:
        return float("nan")
    return float(roc_auc_score([1] * len(loads) + [0] * len(normal_loads), [*loads, *normal_loads]))


def head_readout(model, files: dict, mask: str) -> dict:
    """One study through ``model``'s encoder and lesion head: AUC, class probabilities at the lesion, evidence."""
    import torch
    import torch.nn.functional as F
    from sklearn.metrics import roc_auc_score

    from medalign.losses.lesion import lesion_targets
    from medalign.recipes.clip import lesion_evidence

    logits, st = head_logits(model, files, mask)  # (1, 1 + K, *grid)
    grid = tuple(logits.shape[2:])
    p = logits.softmax(1)[0]  # (1 + K, *grid)
    lesion = lesion_targets(torch.from_numpy(st.mask.astype(np.uint8))[None], torch.tensor([0]), grid)[0] > 0
    inside = F.adaptive_avg_pool3d(head_voxels(st.image, st.sequence_mask)[None], grid)[0] > 0.5  # (*grid)
    score, target = (1 - p[0])[inside].numpy(), lesion[inside].numpy()
    auc = float(roc_auc_score(target, score)) if 0 < target.sum() < target.size else float("nan")
    at_lesion = p[:, lesion].mean(1).numpy() if lesion.any() else np.full(p.shape[0], np.nan)
    ev = lesion_evidence(logits, "lesion")[0].numpy()  # [load, mix (K), top load, top mix (K)]
    return {"auc": auc, "at_lesion": at_lesion, "evidence": ev}


def summarise(items: list[dict], rows: list[tuple[dict, dict]], names: list[str]) -> dict:
    """Per study group, medians over its studies of the readouts (as acquired, erased) of :func:`head_readout`."""
    k = len(names) - 1
    groups: dict = {}
    for it, (r0, r1) in zip(items, rows):
        cls = 1 + k + names.index(it["class"])  # the true class in the top cells' mix
        groups.setdefault(it["group"], []).append(
            [r0["auc"], *r0["at_lesion"], r0["evidence"][0], r1["evidence"][0], r0["evidence"][cls], r1["evidence"][cls]])
    out = {}
    for g, vals in sorted(groups.items()):
        v = np.nanmedian(np.array(vals, dtype=float), 0)
        out[g] = {"n": len(vals), "auc": float(v[0]), "p_at_lesion": dict(zip(names, v[1:2 + k].round(3).tolist())),
                  "load": [float(v[2 + k]), float(v[3 + k])], "top_mix_true": [float(v[4 + k]), float(v[5 + k])]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="runs trained with recipe.lesion_aux")
    ap.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    ap.add_argument("--cohort", type=Path, default=None, help="a `synth brain` output folder")
    ap.add_argument("--variants", default="wmh,glioma")
    ap.add_argument("--sequences", default="flair",
                    help="what a synthetic study shows (default: FLAIR alone, as the real WMH were acquired)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    import logging

    import medalign
    from medalign.data.schema import CLASSES

    logging.getLogger("medalign.api").setLevel(logging.ERROR)
    items = real_items(a.shared) if a.shared.is_dir() else []
    if a.cohort is not None:
        items += synthetic_items(a.cohort, a.variants.split(","), a.sequences.split(","))
    if not items:
        raise SystemExit(f"no study with a lesion mask (shared {a.shared}, cohort {a.cohort})")
    names = ["none", *CLASSES]
    normals = normal_items(a.cohort, a.sequences.split(",")) if a.cohort is not None else []
    result: dict = {"studies": [it["case"] for it in items], "classes": names, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        erased = erased_copies(items, Path(tmp), grow=1)
        for run in a.runs:
            m = medalign.load(run)
            if getattr(m.recipe, "lesion_head", None) is None:
                raise SystemExit(f"{run}: no lesion head (train with recipe.lesion_aux > 0)")
            rows = [(head_readout(m, it["files"], it["mask"]), head_readout(m, er, it["mask"]))
                    for it, er in zip(items, erased)]
            summary = summarise(items, rows, names)
            normal_loads = [study_load(m, it["files"]) for it in normals]
            for g, v in summary.items():
                v["vs_normal_auc"] = vs_normal_auc([r0["evidence"][0] for it, (r0, _) in zip(items, rows)
                                                    if it["group"] == g], normal_loads)
                p = " ".join(f"{n[:5]} {x:.2f}" for n, x in v["p_at_lesion"].items())
                print(f"{Path(run).name:<16} {g:<30} n {v['n']:>2}  AUC {v['auc']:.2f}  at lesion {p}  | load "
                      f"{v['load'][0]:.3f} -> erased {v['load'][1]:.3f}, top cells' p(true) {v['top_mix_true'][0]:.2f}"
                      f" -> {v['top_mix_true'][1]:.2f} | vs {len(normal_loads)} normals AUC {v['vs_normal_auc']:.2f}",
                      flush=True)
            if normal_loads:
                print(f"{Path(run).name:<16} {'normal (load)':<30} n {len(normal_loads):>2}  median load "
                      f"{float(np.median(normal_loads)):.3f}", flush=True)
            result["runs"][run] = {"summary": summary, "auc": [r0["auc"] for r0, _ in rows],
                                   "normal_loads": normal_loads}
    if a.out:
        from medalign.utils import atomic_write_json

        atomic_write_json(a.out, result)


if __name__ == "__main__":
    main()
