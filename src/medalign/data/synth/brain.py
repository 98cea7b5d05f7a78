"""Synthetic brain-pathology cohort: real MNI152 anatomy, controlled pathology, known truth.

This module drives the cohort: it plans it (classes, splits, patients and follow-ups, label
noise, reports), synthesises every study and writes the NIfTI files, ``ground_truth.json``,
``manifest.csv`` and ``cohort.json``. Pipeline per study (``synthesize_study``; all
vectorised numpy / scipy.ndimage):

1. **Anatomy** (``synth.anatomy``): grey/white-matter, CSF and scalp maps from the MNI152
   templates shipped inside nilearn, on the template grid (2 mm; 4 mm in
   ``shape_mode="small"``), with age-related atrophy turning tissue into CSF.
2. **Pathology** (``synth.lesions``): lesion components (irregular ellipsoids) drawn from the
   study's ground truth, each with its own intensity per sequence, blended over the tissue
   contrast (``synth.sequences``); haemorrhage "blooms" on T2*.
3. **Subject warp** (``synth.anatomy``): smooth random elastic field + radial mass effect around
   space-occupying lesions, applied once on the template grid (trilinear, ``synth.sampling``).
4. **Acquisition** (``synth.sequences``): per sequence an axial grid in scanner space with
   clinical anisotropic voxels, field of view and orientation code, a random head pose
   (rotation, scale, shift) and a small per-sequence rigid motion, so the sequences are *not*
   aligned voxel-to-voxel. Sampled trilinearly once each (``synth.sampling``); then a multiplicative
   bias field and Rician noise; stored as int16 NIfTI (ADC in 1e-6 mm^2/s).
5. **Post-contrast T1** (``synth.enhancement``): t1c = the T1 contrast plus enhancement
   (glioma ring/solid, meningioma + dural tail, some early subacute infarcts, some active
   plaques, sinus mucosa, normal dura; never haemorrhage, chronic infarct, WMH or normal
   parenchyma), warped with the rest, acquired last on its own grid. Every random draw of
   t1c comes from its own stream (``T1C_STREAM``), so the six other sequences, the mask and
   the reports are byte-identical with and without it (``with_t1c=False``).

6. **Domain randomisation** (``synth.randomise``; ``randomise=True``, the default): per study
   tissue contrast and lesion conspicuity, slice thickness / in-plane voxel / partial coverage,
   skull stripping, bias, noise, ghosting and motion, per patient the atrophy slope and the
   white-matter disease shapes (``synth.wm_disease``: Fazekas grades, Dawson's fingers), all
   drawn at planning time from new random streams into ``truth["domain"]`` (and the findings),
   so the reports name them and ``randomise=False`` leaves the cohort byte-identical.

``synth.realism`` checks the synthetic tumours against real BraTS cases.

``generate_brain_cohort`` plans the whole cohort (classes, splits, patients, lesion
parameters, reports) from one seed in the parent process, then synthesises the studies in
a process pool: every study has its own seed, so the output does not depend on ``workers``.
"""
from __future__ import annotations

import functools
import gzip
import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from medalign.data.schema import CLASSES, PARAPHRASES_COLUMN
from medalign.data.synth.anatomy import _elastic, _tissues, load_anatomy, open_sulci
from medalign.data.synth.enhancement import post_contrast, t1c_signal
from medalign.data.synth.lesions import OTHERS_P, OTHERS_P_RANDOMISED, _lesions, follow_up, sample_truth
from medalign.data.synth.protocols import check_flair_alone, flair_alone_record, flair_alone_studies
from medalign.data.synth.randomise import (DomainOptions, apply_grid, artefacts, coverage_target, record_options,
                                            study_contrast)
from medalign.data.synth.sequences import (MASK_GRID, POST_CONTRAST, SEQUENCES, _acquisition, _acquisition_t1c,
                                           _grid_affine, _record, _rigid, _sample_grid, _signal)
from medalign.errors import MedAlignError

PAPER_SPLIT = {"train": 211, "val": 24, "test": 27}  # brain-CLIP Table 1 (n = 262)
T1C_STREAM = 7  # t1c's random stream: truth["seed"] + [T1C_STREAM] (the shared one is truth["seed"])
MAX_PARAPHRASES = 20
# Generator paraphrases per study written by default (issue 16): the CPU presets train on them
# (text_views: paraphrases); on the held-out cohort they raised zero-shot and corpus-query search.
DEFAULT_PARAPHRASES = 4


# ----------------------------------------------------------------------------- planning
def _parse_studies_per_patient(spec: str | int) -> tuple[int, int]:
    s = str(spec).strip()
    try:
        if "-" in s:
            a, b = (int(v) for v in s.split("-", 1))
        else:
            a = b = int(s)
    except ValueError:
        raise MedAlignError(f"--studies-per-patient must be K or A-B (e.g. 1-3), got '{spec}'") from None
    if not (1 <= a <= b <= 20):
        raise MedAlignError(f"--studies-per-patient must satisfy 1 <= A <= B <= 20, got '{spec}'")
    return a, b


def split_counts_for(n: int) -> dict[str, int]:
    """Paper proportions (211/24/27 of 262); exactly that for n = 262."""
    val = int(round(n * PAPER_SPLIT["val"] / 262))
    test = int(round(n * PAPER_SPLIT["test"] / 262))
    if n >= 3:
        val, test = max(val, 1), max(test, 1)
    return {"train": n - val - test, "val": val, "test": test}


def weighted_class_counts(n: int, weights: dict[str, float], option: str = "--class-weights") -> dict[str, int]:
    """Share ``n`` studies among ``CLASSES`` in proportion to ``weights`` (1 for a class not
    named), by largest remainder so the counts sum to ``n``; errors name ``option``."""
    unknown = sorted(set(weights) - set(CLASSES))
    if unknown:
        raise MedAlignError(f"{option}: unknown class '{unknown[0]}'; allowed: {', '.join(CLASSES)}")
    w = np.array([float(weights.get(c, 1.0)) for c in CLASSES])
    if np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
        raise MedAlignError(f"{option} must be finite, >= 0 and not all 0, got {weights}")
    from medalign.data.manifest import round_preserving  # lazily: it brings pandas

    return {c: int(k) for c, k in zip(CLASSES, round_preserving(n * w / w.sum()))}


def plan_cohort(n: int = 262, seed: int = 0, *, label_noise: float = 0.0,
                studies_per_patient: str | int = "1", heldout_phrasing: bool = False,
                split_counts: dict[str, int] | None = None, randomise: bool = True,
                paraphrases: int = 0, twins: float = 0.0,
                twin_classes: Sequence[str] | None = None,
                class_weights: dict[str, float] | None = None, domain: DomainOptions = DomainOptions(),
                flair_alone: int = 0, flair_alone_weights: dict[str, float] | None = None) -> list[dict]:
    """Plan a cohort (no images): one truth dict per study, with study/patient ids, split,
    true ``label``, ``manifest_label`` (after label noise), ``report`` and ``seed``.
    ``randomise`` adds each study's ``domain`` (``synth.randomise``: drawn from new random
    streams, so ``randomise=False`` plans exactly what the generator planned before it).
    ``paraphrases`` = K > 0 adds ``report_paraphrases``: up to K other reports of the same
    truth from the training phrasing families (``paraphrases.generate_paraphrases``, own
    random streams: everything else is planned exactly as with K = 0). ``class_weights`` (class ->
    relative weight, 1 for a class not named) shares the training split among the classes in
    those proportions; val and test stay balanced. ``twins`` = f > 0 appends
    lesion-free twins of a fraction f of the abnormal training studies (``synth.twins``; the
    first n studies stay exactly as planned without them), of ``twin_classes`` only when given.
    ``domain`` (``randomise.DomainOptions``: white-matter lesion conspicuity, clinical-grade noise,
    edge enhancement, skull stripping, background small vessel disease) sets how the randomised
    studies' domains are drawn; the defaults are the generator's (an option off draws nothing, so
    the plan is unchanged). ``flair_alone`` = N > 0 appends N training studies of new patients acquired
    as FLAIR alone (``synth.protocols``), after the twins, from their own streams: the rest is unchanged;
    ``flair_alone_weights`` their own class shares (``class_weights``'s otherwise).

    Splits are class-balanced (round-robin within each split) and patient-grouped: all
    studies of a patient share a split and a class (follow-ups of the same disease).
    """
    if not (20 <= n <= 10_000):
        raise MedAlignError(f"--n must be between 20 and 10000, got {n}")
    if seed < 0:
        raise MedAlignError(f"--seed must be >= 0, got {seed}")
    if not (0.0 <= label_noise <= 1.0):
        raise MedAlignError(f"--label-noise must be in [0, 1], got {label_noise}")
    if not (0 <= int(paraphrases) <= MAX_PARAPHRASES):
        raise MedAlignError(f"--paraphrases must be between 0 and {MAX_PARAPHRASES}, got {paraphrases}")
    check_flair_alone(flair_alone, domain, flair_alone_weights)
    if flair_alone_weights is not None:
        weighted_class_counts(1, flair_alone_weights, "--flair-alone-class-weights")  # names and values
    counts = dict(split_counts) if split_counts else split_counts_for(n)
    if sum(counts.values()) != n or any(v < 0 for v in counts.values()):
        raise MedAlignError(f"split counts {counts} must be non-negative and sum to n={n}")
    plan = functools.partial(_plan_studies, spp=_parse_studies_per_patient(studies_per_patient), label_noise=label_noise,
                             heldout_phrasing=heldout_phrasing, randomise=randomise, paraphrases=int(paraphrases),
                             class_weights=class_weights, domain=domain)
    out = plan(n, [int(seed)], counts)
    if twins:
        from medalign.data.synth.twins import lesion_free_twins

        out += lesion_free_twins(out, twins, seed=seed, paraphrases=int(paraphrases), classes=twin_classes)
    if flair_alone:
        out += flair_alone_studies(out, int(flair_alone), seed=int(seed), plan=plan, domain=domain,
                                   class_weights=flair_alone_weights)
    return out


def _plan_studies(n: int, key: list[int], counts: dict[str, int], *, spp: tuple[int, int], label_noise: float,
                  heldout_phrasing: bool, randomise: bool, paraphrases: int, class_weights: dict[str, float] | None,
                  domain: DomainOptions, series: Sequence[str] | None = None) -> list[dict]:
    """``plan_cohort``'s studies from the random streams under ``key`` (``[seed]`` for a cohort's own:
    ``key + [0]`` plans, ``key + [1, i]`` images, ``key + [2, patient]`` anatomy, ``key + [3, i]`` reports);
    ``series`` (the series acquired, default all) is set before the report, which names it."""
    from medalign.data.synth.randomise import randomise_truth
    from medalign.data.synth.paraphrases import PARAPHRASE_STREAM, generate_paraphrases
    from medalign.data.synth.report_grammar import generate_report

    lo, hi = spp
    rng = np.random.default_rng([*key, 0])
    # 1. split x class slots, balanced within each split
    slots: list[tuple[str, str]] = []
    offset = 0
    for split in ("train", "val", "test"):
        if split == "train" and class_weights:
            per_class = weighted_class_counts(counts.get(split, 0), class_weights)
            slots += [(split, c) for c in CLASSES for _ in range(per_class[c])]
        else:
            slots += [(split, CLASSES[(k + offset) % len(CLASSES)]) for k in range(counts.get(split, 0))]
        offset += counts.get(split, 0)
    # 2. group slots into patients within each (split, class) bucket
    buckets: dict[tuple[str, str], int] = {}
    for slot in slots:
        buckets[slot] = buckets.get(slot, 0) + 1
    plans: list[dict] = []
    pid = 0
    for (split, label), m in sorted(buckets.items(), key=lambda kv: (("train", "val", "test").index(kv[0][0]),
                                                                     CLASSES.index(kv[0][1]))):
        left = m
        while left > 0:
            k = min(int(rng.integers(lo, hi + 1)), left)
            left -= k
            base = sample_truth(label, rng, others_p=OTHERS_P_RANDOMISED if randomise else OTHERS_P)
            years = 0.0
            for j in range(k):
                truth = base if j == 0 else follow_up(base, rng, years)
                plans.append({"patient_index": pid, "visit": j, "split": split, "truth": truth})
                years += float(rng.uniform(0.2, 3.0))
            pid += 1
    # 3. shuffle study order (ids are assigned after the shuffle), then ids, noise, reports
    order = rng.permutation(len(plans))
    plans = [plans[i] for i in order]
    pids = {}
    for p in plans:  # patient ids numbered by first appearance
        pids.setdefault(p["patient_index"], len(pids))
    n_noise = int(round(label_noise * n))
    noisy = set(rng.choice(n, size=n_noise, replace=False).tolist()) if n_noise else set()
    out = []
    for i, p in enumerate(plans):
        truth = dict(p["truth"])
        truth = json.loads(json.dumps(truth))
        sid = f"S{i + 1:05d}"
        truth["study_id"] = sid
        truth["patient_id"] = f"P{pids[p['patient_index']] + 1:05d}"
        truth["visit"] = p["visit"]
        truth["split"] = p["split"]
        truth["seed"] = [*key, 1, i]
        truth["anatomy_seed"] = [*key, 2, int(p["patient_index"])]
        if i in noisy:
            others = [c for c in CLASSES if c != truth["label"]]
            truth["manifest_label"] = str(rng.choice(others))
            truth["label_noise"] = True
        else:
            truth["manifest_label"] = truth["label"]
            truth["label_noise"] = False
        if series is not None:
            truth["series"] = list(series)
        if randomise:  # before the report: it names what the domain draws changed (Fazekas grade, ...)
            randomise_truth(truth, domain)
        heldout = bool(heldout_phrasing and p["split"] == "test")
        truth["report_family"] = "heldout" if heldout else "standard"
        truth["report"] = generate_report(truth, np.random.default_rng([*key, 3, i]), heldout=heldout)
        if paraphrases:  # after the report, from their own streams: the report and images stay as they were
            truth[PARAPHRASES_COLUMN] = generate_paraphrases(truth, [*key, PARAPHRASE_STREAM, i],
                                                             int(paraphrases), exclude=[truth["report"]])
        out.append(truth)
    return out


# ----------------------------------------------------------------------------- synthesis
def synthesize_study(truth: dict, *, shape_mode: str = "clinical", with_wm: bool = False,
                     with_t1c: bool = True) -> dict[str, Any]:
    """Images for one planned study (no files): dict seq -> (array, affine), ``mask`` ->
    (uint8 array, affine) on the FLAIR grid, plus ``acquisition`` and ``lesion_volume_ml``;
    ``with_wm`` adds ``wm_on_mask_grid`` (true WM probability, float32) for realism checks;
    ``with_t1c`` adds ``t1c`` and ``t1c_enhancement`` (what enhances) and changes nothing else.
    A ``truth["domain"]`` (``synth.randomise``) sets the study's contrast, grids, artefacts,
    bias, noise and skull stripping; without one the study is what it was before randomisation.
    ``truth["series"]`` (``synth.protocols``), when present, limits the series drawn to those."""
    from medalign.data.synth.sampling import coords_sample  # Numba: imported when a study is drawn, not to plan one

    acquired = set(truth.get("series") or (*SEQUENCES, *POST_CONTRAST))
    if MASK_GRID not in acquired:  # the lesion mask is drawn on that series' grid
        raise MedAlignError(f"study {truth.get('study_id', '?')}: series {sorted(acquired)} lack {MASK_GRID}, the mask's grid")
    with_t1c = with_t1c and "t1c" in acquired
    dom = truth.get("domain")
    con = study_contrast(dom, truth["findings"]) if dom else None
    anat = load_anatomy(4 if shape_mode == "small" else 2)
    rng_anat = np.random.default_rng(truth["anatomy_seed"])
    rng = np.random.default_rng(truth["seed"])
    lesion_rng = np.random.default_rng(truth["anatomy_seed"] + [5])  # follow-ups: same lesion shape
    tissue, atrophy_map = _tissues(anat, truth)
    gamma = (dom or {}).get("patient", {}).get("sulcal_gamma")
    if gamma is not None:
        tissue = open_sulci(tissue, gamma)
    comps, lmask, masses = _lesions(anat, truth, tissue, lesion_rng)
    if any(f["kind"] == "others" and f["variant"] == "atrophy" for f in truth["findings"]):
        lmask = np.maximum(lmask, (atrophy_map > 0.5).astype(np.float32))
    sig_kw = {} if con is None else {"tissue_contrast": con["tissue"], "lesion_contrast": con["lesion"],
                                     "tex_cv": float(dom["texture_cv"])}
    img, tex = _signal(anat, tissue, comps, rng_anat, **sig_kw)  # (S, X, Y, Z), (X, Y, Z)
    rng_c = np.random.default_rng(list(truth["seed"]) + [T1C_STREAM]) if with_t1c else None
    extra: list[np.ndarray] = []
    if rng_c is not None:
        c_comps, enhancement = post_contrast(anat, tissue, comps, truth, rng_c)
        extra.append(t1c_signal(tissue, c_comps, tex, *((con["t1c_tissue"], con["t1c"]) if con else ())))  # (X, Y, Z)
    strip = bool(dom and dom["skull_stripped"])
    # subject warp on the template grid: elastic + mass effect, one map_coordinates per channel
    u = _elastic(anat, rng_anat, amp_mm=3.0, masses=masses)
    grid = np.indices(anat["mask"].shape, dtype=np.float32)  # (3, X, Y, Z)
    coords = grid + u
    # brain (+ any lesion reaching out of it, e.g. a meningioma) for skull stripping
    chans = ([ch if seq in acquired else None for seq, ch in zip(SEQUENCES, img)] + [lmask] + ([tissue["wm"]] if with_wm else [])
             + ([np.maximum(anat["mask"], lmask)] if strip else []) + extra)  # t1c last
    # a series not acquired is not warped (its cost is most of a study's)
    warped = [None if ch is None else coords_sample(ch, coords) for ch in chans]
    i_strip = len(SEQUENCES) + 1 + int(with_wm)
    # head pose (template mm -> scanner mm): patient-specific head size, study-specific pose
    head_c = anat["affine"][:3, :3] @ (np.array(anat["mask"].shape) / 2) + anat["affine"][:3, 3]
    scale = rng_anat.uniform(0.93, 1.07, 3)
    pose = _rigid(rng.normal(0, [6, 3, 4]), rng.normal(0, 5, 3), head_c, scale)
    acq = _acquisition(rng, shape_mode)
    target = coverage_target(truth, anat, head_c) if dom else None
    if dom:
        acq = {seq: apply_grid(a, dom["acquisition"][seq], shape_mode, target) for seq, a in acq.items()}
    inv_t = np.linalg.inv(anat["affine"])
    out: dict[str, Any] = {}

    def record(src: np.ndarray, seq: str, T: np.ndarray, a: dict, r: np.random.Generator,
               head: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Sample, add the domain's artefacts, record; zero outside the brain when stripped."""
        vol = _sample_grid(src, T, a["shape"])
        g = dom["acquisition"][seq] if dom else None
        if g is not None:
            vol = artefacts(vol, g, a["spacing"])
        dwi = vol > 0.03 if seq == "dwi" else None  # ADC shares the DWI grid: computed only where DWI has signal
        data = _record(vol, seq, a["shape"], r, head, **record_options(g, a["spacing"]))
        brain = _sample_grid(warped[i_strip], T, a["shape"]) > 0.5 if strip else None
        if brain is not None:
            data[~brain] = 0
        return data, dwi, brain

    dwi_head: np.ndarray | None = None
    for si, seq in enumerate(SEQUENCES):
        if seq not in acquired:
            continue
        a = acq[seq]
        A = _grid_affine(a, head_c)
        motion = _rigid(a["motion_deg"], a["motion_mm"], head_c)
        T = inv_t @ np.linalg.inv(pose) @ np.linalg.inv(motion) @ A  # acq voxel -> template voxel
        data, dwi, brain = record(warped[si], seq, T, a, rng, dwi_head)
        dwi_head = dwi if dwi is not None else dwi_head
        out[seq] = (data, A)
        if seq == MASK_GRID:
            mk = _sample_grid(warped[len(SEQUENCES)], T, a["shape"])
            binm = mk > 0.5
            if not binm.any() and mk.max() > 0.05:  # tiny lesions (microbleeds) on a coarse grid
                binm = mk >= 0.5 * mk.max()
            if brain is not None:  # the mask follows the image: nothing outside the stripped brain
                binm &= brain
            out["mask"] = (binm.astype(np.uint8), A)
            if with_wm:
                out["wm_on_mask_grid"] = _sample_grid(warped[len(SEQUENCES) + 1], T, a["shape"])
            out["lesion_volume_ml"] = float(out["mask"][0].sum() * np.prod(a["spacing"]) / 1000.0)
    if rng_c is not None:  # post-contrast T1, acquired last: own grid, motion, bias, noise, gain
        a = acq["t1c"] = _acquisition_t1c(rng_c, shape_mode, acq["t1"]["orientation"])
        if dom:
            a = acq["t1c"] = apply_grid(a, dom["acquisition"]["t1c"], shape_mode, target)
        A = _grid_affine(a, head_c)
        motion = _rigid(a["motion_deg"], a["motion_mm"], head_c)
        T = inv_t @ np.linalg.inv(pose) @ np.linalg.inv(motion) @ A
        out["t1c"] = (record(warped[-1], "t1c", T, a, rng_c, None)[0], A)
        out["t1c_enhancement"] = enhancement
    out["acquisition"] = {seq: a for seq, a in acq.items() if seq in acquired}  # t1c included, when drawn
    return out


# ----------------------------------------------------------------------------- files
def _nifti_bytes(data: np.ndarray, affine: np.ndarray) -> bytes:
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    # gzip with mtime=0 so the same seed gives byte-identical files; level 1 is fast
    return gzip.compress(img.to_bytes(), compresslevel=1, mtime=0)


FILE_NAMES = {**{s: f"{s}.nii.gz" for s in (*SEQUENCES, *POST_CONTRAST)}, "mask": "lesion_mask.nii.gz"}


def write_study(out_dir: Path, truth: dict, shape_mode: str = "clinical", with_t1c: bool = True) -> dict:
    """Synthesise one study and write its NIfTI files + ground_truth.json atomically."""
    from medalign.utils import atomic_write_bytes, atomic_write_json

    res = synthesize_study(truth, shape_mode=shape_mode, with_t1c=with_t1c)
    sdir = Path(out_dir) / truth["study_id"]
    sdir.mkdir(parents=True, exist_ok=True)
    keys = tuple(k for k in (*SEQUENCES, "mask", *(POST_CONTRAST if with_t1c else ())) if k in res)
    for key in keys:
        data, aff = res[key]
        atomic_write_bytes(sdir / FILE_NAMES[key], _nifti_bytes(data, aff))
    gt = dict(truth)
    gt.pop(PARAPHRASES_COLUMN, None)  # in the manifest only: ground_truth.json is the same with or without
    gt["acquisition"] = res["acquisition"]
    gt["lesion_volume_ml"] = round(res["lesion_volume_ml"], 3)
    gt["mask_grid"] = MASK_GRID
    gt["shape_mode"] = shape_mode
    gt["files"] = {k: FILE_NAMES[k] for k in keys}
    if "t1c_enhancement" in res:
        gt["t1c_enhancement"] = res["t1c_enhancement"]
    atomic_write_json(sdir / "ground_truth.json", gt)
    return gt


def _worker(args: tuple[str, dict, str, bool]) -> dict:
    out_dir, truth, mode, with_t1c = args
    return write_study(Path(out_dir), truth, mode, with_t1c)


def generate_brain_cohort(out_dir: str | os.PathLike, *, n: int = 262, seed: int = 0,
                          shape_mode: str = "clinical", label_noise: float = 0.0,
                          studies_per_patient: str | int = "1", heldout_phrasing: bool = False,
                          split_counts: dict[str, int] | None = None, workers: int = 2,
                          progress: bool = False, with_t1c: bool = True, randomise: bool = True,
                          paraphrases: int = DEFAULT_PARAPHRASES, twins: float = 0.0,
                          twin_classes: Sequence[str] | None = None,
                          class_weights: dict[str, float] | None = None, domain: DomainOptions = DomainOptions(),
                          flair_alone: int = 0, flair_alone_weights: dict[str, float] | None = None) -> Path:
    """Write a synthetic cohort to ``out_dir``; returns the path of ``manifest.csv``.

    Files: ``<study_id>/{dwi,adc,t2s,flair,t1,t2,t1c}.nii.gz``, ``lesion_mask.nii.gz`` (FLAIR
    grid; empty for normal), ``ground_truth.json`` (true class, findings, acquisition, the
    possibly noisy manifest label, ``t1c_enhancement``), plus ``manifest.csv`` and ``cohort.json``.
    ``with_t1c=False`` leaves out t1c (its file, manifest column and ground-truth keys); every
    other output is byte-identical either way. ``randomise`` (default) draws each study's domain
    (``synth.randomise``: contrast, grids, coverage, skull stripping, bias, noise, artefacts,
    atrophy slope, white-matter disease shapes; recorded under ``domain``); ``randomise=False``
    writes byte for byte the cohort of the generator before domain randomisation.
    ``paraphrases`` = K > 0 adds the manifest column ``report_paraphrases`` (a JSON list of up
    to K other reports of the study's truth in the training phrasing families, for every split;
    the CLIP recipe's ``text_views: paraphrases`` uses them in training) and ``"paraphrases": K``
    in ``cohort.json``; every other file and column is byte-identical to K = 0. ``twins`` = f
    adds lesion-free twins of a fraction f of the abnormal training studies (of ``twin_classes``
    when given; ``synth.twins``) after the n planned ones, recorded as ``"twins"`` (fraction,
    classes and count) in ``cohort.json``. ``class_weights`` shares the training split among the
    classes in those proportions (``plan_cohort``), recorded as ``"class_weights"``; ``domain``
    likewise (``plan_cohort``), recorded under the options' names (``DomainOptions.record``).
    ``flair_alone`` = N adds N training studies acquired as FLAIR alone after the rest (``synth.protocols``;
    their other image cells are empty), recorded as ``"flair_alone"``, with ``flair_alone_weights``, their own
    class shares, as ``"flair_alone_class_weights"``.
    """
    import pandas as pd

    from medalign.utils import atomic_write_json, atomic_write_text

    if shape_mode not in ("clinical", "small"):
        raise MedAlignError(f"--shape-mode must be 'clinical' or 'small', got '{shape_mode}'")
    domain.check(randomise)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plans = plan_cohort(n, seed, label_noise=label_noise, studies_per_patient=studies_per_patient,
                        heldout_phrasing=heldout_phrasing, split_counts=split_counts, randomise=randomise,
                        paraphrases=paraphrases, twins=twins, twin_classes=twin_classes,
                        class_weights=class_weights, domain=domain, flair_alone=flair_alone,
                        flair_alone_weights=flair_alone_weights)
    load_anatomy(4 if shape_mode == "small" else 2)  # before forking: workers inherit it
    jobs = [(str(out), p, shape_mode, with_t1c) for p in plans]
    workers = max(1, int(workers))
    bar: Callable[[Any], Any] = (lambda it: it)
    if progress:
        from tqdm import tqdm

        bar = lambda it: tqdm(it, total=len(jobs), desc="synth brain", unit="study")  # noqa: E731
    if workers == 1:
        truths = [_worker(j) for j in bar(jobs)]
    else:
        import multiprocessing as mp

        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
        with ctx.Pool(workers) as pool:
            truths = list(bar(pool.imap(_worker, jobs, chunksize=1)))
    para = {p["study_id"]: p[PARAPHRASES_COLUMN] for p in plans if PARAPHRASES_COLUMN in p}
    rows = []
    for t in truths:
        sid = t["study_id"]
        row = {"study_id": sid, "patient_id": t["patient_id"], "split": t["split"],
               "label": t["manifest_label"], "report": t["report"]}
        if paraphrases:  # one line per cell (JSON escapes new lines), next to the report
            row[PARAPHRASES_COLUMN] = json.dumps(para[sid], ensure_ascii=False)
        for s in (*SEQUENCES, *(POST_CONTRAST if with_t1c else ())):  # a series not acquired: an empty cell
            row[f"image_{s}"] = f"{sid}/{FILE_NAMES[s]}" if s in t["files"] else ""
        row["mask"] = f"{sid}/{FILE_NAMES['mask']}"
        rows.append(row)
    df = pd.DataFrame(rows)
    atomic_write_text(out / "manifest.csv", df.to_csv(index=False))
    info = {"generator": "medalign.data.synth.brain", "n": n, "seed": seed, "shape_mode": shape_mode,
            "label_noise": label_noise, "studies_per_patient": str(studies_per_patient),
            "heldout_phrasing": heldout_phrasing, "split_counts": split_counts or split_counts_for(n),
            "classes": list(CLASSES)}
    if randomise:  # absent without randomisation: that cohort.json stays as it was
        info["randomise"] = True
        info.update(domain.record())
    if paraphrases:  # likewise absent without paraphrases
        info["paraphrases"] = int(paraphrases)
    if class_weights:  # likewise absent without weights
        info["class_weights"] = {c: float(class_weights.get(c, 1.0)) for c in CLASSES}
    if twins:  # likewise absent without twins
        info["twins"] = {"fraction": float(twins), "classes": list(twin_classes or []) or "abnormal",
                         "n": len(plans) - n}
    info.update(flair_alone_record(flair_alone, flair_alone_weights))  # likewise absent without them
    atomic_write_json(out / "cohort.json", info)
    return out / "manifest.csv"


def load_ground_truth(study_dir: str | os.PathLike) -> dict:
    """Read ``<study_dir>/ground_truth.json``."""
    p = Path(study_dir) / "ground_truth.json"
    return json.loads(p.read_text(encoding="utf-8"))
