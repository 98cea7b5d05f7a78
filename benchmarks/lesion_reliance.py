"""Does a model's call rest on the lesion? Zero-shot p(true class) with each study's lesion erased
vs as acquired, per class / variant: mean, and the change with a 95 % bootstrap CI over studies.

    python benchmarks/lesion_reliance.py RUN [RUN ...] [--cohort SYNTH_DIR] [--variants wmh,glioma]
        [--sequences flair] [--twins] [--erase mask|beyond|both] [--shared ../shared/data] [--checkpoint best|last]
        [--out results.json]

Erasing: every lesion voxel (the mask grown by ``--grow`` voxels in-plane, default 1: a mask
leaves out the lesion's partial-volume fringe) takes the median of the tissue around it (a
2-voxel in-plane ring, background left out), in every series, the mask resampled to that
series' grid (nearest neighbour). A model that recognises a class from its lesions loses p(true) when they are erased;
one that calls it from something else (age, atrophy, the absence of other findings) does not.

``--erase beyond`` erases instead, in the real clinical WMH FLAIRs, the bright tissue their masks leave
out (:func:`unmasked_bright`: connected regions of at least 1 ml brighter than the masked lesions' median,
outside the mask grown by 2 voxels, themselves grown by 3); ``both`` erases the two together. One such
region, a one-sided cortical-subcortical parietal hyperintensity, carries most of wmh_2516044939's
"infarct" (README, "Known limitations", stop 55).

Studies: the real cases with a lesion mask in ``--shared`` (the 3 clinical WMH FLAIRs, ``mask``;
the 6 BraTS gliomas, ``OTMultiClass`` > 0; ``real_cases.py`` lists them), and with ``--cohort``
the studies of a ``synth brain`` cohort whose first finding is one of ``--variants``
(``lesion_mask.nii.gz``); with ``--twins`` each of those studies is compared with its
lesion-free twin from ``synth brain --twins`` instead (real cases left out). ``--sequences`` sets
what each synthetic study shows (default: what the demo model reads, dwi/t2s/flair; ``flair`` =
FLAIR alone, as the real clinical cases). The protocol is ``medalign classify``'s default
(shipped prompts, ensemble pooling). Per group it also prints where the lesion's evidence goes:
the mean change of every class's probability that the lesion brings.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_SHARED = HERE.parents[0] / ".." / "shared" / "data"


def erase(image, mask, ring: int = 2, grow: int = 0):
    """``image`` (SimpleITK) with the voxels of ``mask`` (any grid; grown by ``grow`` voxels in-plane,
    for the partial-volume fringe a mask leaves out) set to the median of a ``ring``-voxel in-plane
    shell around them; unchanged where the mask misses this grid."""
    import scipy.ndimage as ndi
    import SimpleITK as sitk

    x = sitk.GetArrayFromImage(image).astype(np.float32)  # (z, y, x)
    m = sitk.GetArrayFromImage(sitk.Resample(mask, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0)) > 0
    if not m.any():
        return image
    plane = np.zeros((3, 3, 3), bool)
    plane[1] = ndi.generate_binary_structure(2, 1)  # in-plane only: thick slices are not neighbours
    if grow:
        m = ndi.binary_dilation(m, structure=plane, iterations=grow)
    shell = ndi.binary_dilation(m, structure=plane, iterations=ring) & ~m
    # the background is what the in-plane border holds: air, a stripped 0, or BraTS's constant minimum
    border = np.concatenate([x[:, 0].ravel(), x[:, -1].ravel(), x[:, :, 0].ravel(), x[:, :, -1].ravel()])
    bg = float(np.median(border))
    fg = x > bg + 0.05 * (float(np.percentile(x, 99.5)) - bg)
    ref = x[shell & fg] if (shell & fg).any() else x[shell]  # no background in view: the whole shell
    x[m] = float(np.median(ref))
    out = sitk.GetImageFromArray(x)
    out.CopyInformation(image)
    return out


def real_items(shared: Path) -> list[dict]:
    """The real cases of ``real_cases.py`` that have a lesion mask, with the mask's path."""
    sys.path.insert(0, str(HERE))
    from real_cases import real_cases

    items = []
    for c in real_cases(shared):
        d = Path(next(iter(c["files"].values()))).parent
        mask = d / ("OTMultiClass.nii.gz" if c["case"].startswith("brats/") else "mask.nii.gz")
        if mask.is_file():
            items.append({**c, "group": f"real {c['class']}", "mask": str(mask)})
    return items


def synthetic_items(cohort: Path, variants: list[str], sequences: list[str]) -> list[dict]:
    """Studies of a synthetic cohort whose first finding is one of ``variants``."""
    items = []
    for gt in sorted(cohort.glob("*/ground_truth.json")):
        t = json.loads(gt.read_text(encoding="utf-8"))
        f = (t.get("findings") or [{}])[0]
        files = {s: str(gt.parent / f"{s}.nii.gz") for s in sequences if (gt.parent / f"{s}.nii.gz").is_file()}
        mask = gt.parent / "lesion_mask.nii.gz"
        if f.get("variant") in variants and files and mask.is_file():
            items.append({"case": t["study_id"], "class": t["label"], "group": f"synthetic {t['label']}/{f['variant']}",
                          "files": files, "mask": str(mask)})
    return items


def twin_items(cohort: Path, variants: list[str], sequences: list[str]) -> tuple[list[dict], list[dict]]:
    """Studies of a ``synth brain --twins`` cohort whose first finding is one of ``variants`` and
    that have a lesion-free twin, and per study the twin's files: the generator's own
    counterfactual, a rescan without findings (same anatomy, age, atrophy, contrasts, noise level
    and slice geometry; positioning and the noise itself drawn anew). Erasing instead leaves the
    sub-threshold fringe of a soft lesion map behind (the mask is the map > 0.5)."""
    twin_of = {}
    for gt in sorted(cohort.glob("*/ground_truth.json")):
        t = json.loads(gt.read_text(encoding="utf-8"))
        if t.get("twin_of"):
            twin_of[t["twin_of"]] = gt.parent
    items, twins = [], []
    for it in synthetic_items(cohort, variants, sequences):
        d = twin_of.get(it["case"])
        if d is not None:
            items.append(it)
            twins.append({s: str(d / Path(p).name) for s, p in it["files"].items()})
    return items, twins


def unmasked_bright(flair: str, mask: str, out: str, min_ml: float = 1.0) -> bool:
    """Write to ``out`` the bright regions of ``flair`` that ``mask`` leaves out (see the module docstring);
    False, and nothing written, when there are none. In-plane morphology only: the slices are thick."""
    import scipy.ndimage as ndi
    import SimpleITK as sitk

    img, m_img = sitk.ReadImage(flair), sitk.ReadImage(mask)
    x = sitk.GetArrayFromImage(img).astype(np.float32)  # (z, y, x)
    m = sitk.GetArrayFromImage(sitk.Resample(m_img, img, sitk.Transform(), sitk.sitkNearestNeighbor, 0)) > 0
    if not m.any():
        return False
    plane = np.zeros((3, 3, 3), bool)
    plane[1] = True  # a 3 x 3 in-plane square
    bright = (x > np.median(x[m])) & ~ndi.binary_dilation(m, structure=plane, iterations=2)
    bright = ndi.binary_opening(bright, structure=plane)  # (z, y, x) without single-voxel noise
    lab, n = ndi.label(bright)
    ml = np.prod(img.GetSpacing()) / 1000.0
    keep = [k + 1 for k, v in enumerate(ndi.sum(bright, lab, range(1, n + 1))) if v * ml >= min_ml]
    if not keep:
        return False
    region = ndi.binary_dilation(np.isin(lab, keep), structure=plane, iterations=3) & (x > 0)
    out_img = sitk.GetImageFromArray(region.astype(np.uint8))
    out_img.CopyInformation(img)
    sitk.WriteImage(out_img, out)
    return True


def beyond_items(items: list[dict], out: Path, mode: str) -> list[dict]:
    """``--erase beyond|both``: the real WMH items whose masks leave bright regions out, each with the mask
    to erase (those regions, or those regions and the lesion mask), written under ``out``."""
    import SimpleITK as sitk

    chosen = []
    for i, it in enumerate(items):
        if not it["group"].startswith("real ") or it["class"] != "others" or "flair" not in it["files"]:
            continue
        extra = out / f"beyond_{i:04d}.nii.gz"
        if not unmasked_bright(it["files"]["flair"], it["mask"], str(extra)):
            continue
        if mode == "both":
            ref = sitk.ReadImage(str(extra))
            lesion = sitk.Resample(sitk.ReadImage(it["mask"]), ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
            sitk.WriteImage(sitk.Or(ref > 0, lesion > 0), str(extra))
        chosen.append({**it, "group": f"real {it['class']} ({mode})", "mask": str(extra)})
    return chosen


def erased_copies(items: list[dict], out: Path, grow: int = 0) -> list[dict]:
    """Per item, its files with the lesion erased (mask grown by ``grow`` voxels), written under ``out``."""
    import SimpleITK as sitk

    copies = []
    for i, it in enumerate(items):
        mask = sitk.ReadImage(it["mask"])
        files = {}
        for s, p in it["files"].items():
            files[s] = str(out / f"{i:04d}_{s}.nii.gz")
            sitk.WriteImage(erase(sitk.ReadImage(p), mask, grow=grow), files[s])
        copies.append(files)
    return copies


def summarise(groups: list[str], p_as_is: np.ndarray, p_erased: np.ndarray, *, key: str = "p_true_erased") -> dict:
    """Per group: n, mean p(true) as acquired / erased (under ``key``; other perturbations name
    theirs), and the paired change with its CI."""
    from medalign.eval.bootstrap import bootstrap_ci

    out = {}
    for g in sorted(set(groups)):
        idx = np.array([i for i, x in enumerate(groups) if x == g])
        d = p_erased[idx] - p_as_is[idx]
        out[g] = {"n": int(len(idx)), "p_true": float(p_as_is[idx].mean()), key: float(p_erased[idx].mean()),
                  "change": bootstrap_ci(np.mean, d, n=2000) if len(idx) > 1 else {"value": float(d.mean())}}
    return out


def class_changes(groups: list[str], as_is: list[dict], erased: list[dict]) -> dict[str, dict[str, float]]:
    """Per group, the mean change of every class's probability when the lesion is erased (or the
    twin shown): where the lesion's evidence goes (``medalign classify`` results)."""
    out = {}
    for g in sorted(set(groups)):
        idx = [i for i, x in enumerate(groups) if x == g]
        classes = list(as_is[idx[0]]["probabilities"])
        out[g] = {c: float(np.mean([erased[i]["probabilities"][c] - as_is[i]["probabilities"][c] for i in idx]))
                  for c in classes}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    ap.add_argument("--cohort", type=Path, default=None, help="a `synth brain` output folder")
    ap.add_argument("--variants", default="wmh,demyelination,glioma")
    ap.add_argument("--sequences", default="dwi,t2s,flair", help="what a synthetic study shows (default: the demo model's)")
    ap.add_argument("--grow", type=int, default=1,
                    help="grow each mask by this many voxels in-plane before erasing (the partial-volume fringe)")
    ap.add_argument("--twins", action="store_true",
                    help="compare with each --cohort study's lesion-free twin (`synth brain --twins`) instead of "
                         "erasing; the real cases are left out")
    ap.add_argument("--erase", choices=("mask", "beyond", "both"), default="mask",
                    help="what to erase in the real clinical WMH FLAIRs: the lesion mask, the bright tissue it "
                         "leaves out, or both (beyond / both: the synthetic cohort and BraTS are left out)")
    ap.add_argument("--checkpoint", default="best", help="best (validation-selected, as classify loads) or last")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    import logging

    import medalign

    logging.getLogger("medalign.api").setLevel(logging.ERROR)  # "skipping t1c" is expected for 3-sequence models
    twins = None
    if a.twins and a.erase != "mask":
        raise SystemExit("--twins compares with lesion-free twins; --erase beyond/both is for the real WMH")
    if a.twins:
        if a.cohort is None:
            raise SystemExit("--twins needs --cohort (a `synth brain --twins` output folder)")
        items, twins = twin_items(a.cohort, a.variants.split(","), a.sequences.split(","))
    else:
        items = real_items(a.shared) if a.shared.is_dir() else []
        if a.cohort is not None:
            items += synthetic_items(a.cohort, a.variants.split(","), a.sequences.split(","))
    if not items:
        raise SystemExit(f"no study with a lesion mask{' and a twin' if a.twins else ''} (shared {a.shared}, cohort {a.cohort})")
    with tempfile.TemporaryDirectory() as tmp:
        if a.erase != "mask":
            items = beyond_items(items, Path(tmp), a.erase)
            if not items:
                raise SystemExit("--erase beyond: no real WMH case has bright tissue outside its mask")
        result: dict = {"studies": [it["case"] for it in items], "grow": a.grow, "twins": a.twins, "erase": a.erase,
                        "checkpoint": a.checkpoint,
                        "runs": {}}
        erased = twins if twins is not None else erased_copies(items, Path(tmp), a.grow)
        for run in a.runs:
            m = medalign.load(run, checkpoint=a.checkpoint)
            r0, r1 = m.classify([it["files"] for it in items]), m.classify(erased)
            p0 = np.array([r["probabilities"][it["class"]] for it, r in zip(items, r0)])
            p1 = np.array([r["probabilities"][it["class"]] for it, r in zip(items, r1)])
            groups = [it["group"] for it in items]
            summary = summarise(groups, p0, p1)
            for g, per in class_changes(groups, r0, r1).items():
                summary[g]["class_change"] = per
            result["runs"][run] = {"summary": summary, "p_true": p0.round(4).tolist(), "p_true_erased": p1.round(4).tolist(),
                                   "called": [r["label"] for r in r0], "called_erased": [r["label"] for r in r1]}
            for g, s in summary.items():
                c = s["change"]
                ci = f" [{c['lo']:+.2f}, {c['hi']:+.2f}]" if "lo" in c else ""
                lesion = ", ".join(f"{k} {-v:+.2f}" for k, v in s["class_change"].items())
                print(f"{Path(run).name:<20} {g:<34} n {s['n']:>3}  p(true) {s['p_true']:.2f} -> {'twin' if a.twins else 'erased'} "
                      f"{s['p_true_erased']:.2f}  change {c['value']:+.2f}{ci}; the lesion adds: {lesion}", flush=True)
    if a.out:
        from medalign.utils import atomic_write_json

        atomic_write_json(a.out, result)


if __name__ == "__main__":
    main()
