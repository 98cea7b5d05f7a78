"""Rigid co-registration of a study's sequences to its reference sequence (SimpleITK).

``register_rigid`` aligns one moving image to a fixed one (``Euler3DTransform``, Mattes mutual
information, 2-level pyramid, random sampling with a fixed seed); ``register_to_reference``
does it for every sequence of a study on the coarse canonical copies made by
``imaging.preprocess_study`` (step 3 of its pipeline), keeping the scanner's alignment
(identity) wherever the optimiser fails or makes the metric worse.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from medalign.data.volume_io import _first_line, _sitk


def _mattes_mi(sitk, sampling: float, seed: int, fixed_mask=None):
    """A registration method with the metric used everywhere here: Mattes MI (32 bins), random
    sampling with a fixed non-zero seed, optional fixed-image mask, linear interpolation."""
    R = sitk.ImageRegistrationMethod()
    R.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    R.SetMetricSamplingStrategy(R.RANDOM)
    R.SetMetricSamplingPercentage(float(sampling), int(seed))
    if fixed_mask is not None:
        R.SetMetricFixedMask(fixed_mask)
    R.SetInterpolator(sitk.sitkLinear)
    return R


def register_rigid(fixed, moving, fixed_mask, *, center, iterations: int = 40, sampling: float = 0.2,
                   max_shift_mm: float = 30.0, seed: int = 1):
    """Rigid (Euler3D) Mattes-MI registration, moving -> fixed; returns (transform, info dict).

    ``seed`` must be non-zero: SimpleITK treats 0 as "seed from the wall clock", which would
    make the cache depend on when it was built."""
    seed = int(seed) or 1
    sitk = _sitk()
    tx = sitk.Euler3DTransform()
    tx.SetCenter(tuple(float(c) for c in center))
    R = _mattes_mi(sitk, sampling, seed, fixed_mask)
    R.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=0.05, numberOfIterations=int(iterations),
                                               relaxationFactor=0.5, gradientMagnitudeTolerance=1e-6)
    R.SetOptimizerScalesFromPhysicalShift()
    R.SetShrinkFactorsPerLevel([2, 1])
    R.SetSmoothingSigmasPerLevel([1.0, 0.5])
    R.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    R.SetInitialTransform(tx, inPlace=False)
    before = float(R.MetricEvaluate(fixed, moving))
    out = R.Execute(fixed, moving)
    after = float(R.GetMetricValue())
    # Re-evaluate on the full coarse grid at the solution, comparable with `before`.
    R2 = _mattes_mi(sitk, sampling, seed, fixed_mask)
    final_tx = sitk.CompositeTransform(out).GetNthTransform(0) if out.GetName() == "CompositeTransform" else out
    euler = sitk.Euler3DTransform(final_tx) if final_tx.GetName() == "Euler3DTransform" else None
    R2.SetInitialTransform(final_tx)
    final = float(R2.MetricEvaluate(fixed, moving))
    params = list(euler.GetParameters()) if euler is not None else [0.0] * 6
    shift = float(np.linalg.norm(params[3:]))
    info = {
        "metric": "mattes_mi",
        "metric_before": before,
        "metric_after": final,
        "metric_last_level": after,
        "iterations": int(R.GetOptimizerIteration()),
        "rotation_deg": [math.degrees(a) for a in params[:3]],
        "translation_mm": params[3:],
        "reverted": False,
    }
    if not np.isfinite(final) or final > before or shift > max_shift_mm:
        # Worse than where we started (or an implausible jump): keep the scanner's alignment.
        info["reverted"] = True
        info["metric_final"] = before
        return sitk.Transform(), info
    info["metric_final"] = final
    return final_tx, info


def register_to_reference(coarse: Mapping[str, Any], ref_seq: str, ref_head: np.ndarray, center: Sequence[float], *,
                          iterations: int, sampling: float, max_shift_mm: float
                          ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Rigidly align every coarse image to ``coarse[ref_seq]``, the metric restricted to the
    (dilated) head mask ``ref_head`` of the reference, rotations about ``center``.

    Returns (sequence -> transform, identity for the reference; sequence -> registration info,
    in ``coarse`` order, reference left out).
    """
    sitk = _sitk()
    transforms: dict[str, Any] = {ref_seq: sitk.Transform()}
    infos: dict[str, dict[str, Any]] = {}
    fmask = sitk.GetImageFromArray(_dilate(ref_head).astype(np.uint8))
    fmask.CopyInformation(coarse[ref_seq])
    for s in coarse:
        if s == ref_seq:
            continue
        try:
            transforms[s], reg = register_rigid(coarse[ref_seq], coarse[s], fmask, center=center,
                                                iterations=iterations, sampling=sampling,
                                                max_shift_mm=max_shift_mm)
        except Exception as e:  # ITK: e.g. too few samples in the overlap of tiny images
            # Keep the scanner's alignment and say so, rather than losing the study.
            transforms[s] = sitk.Transform()
            reg = {"metric": "mattes_mi", "metric_before": None, "metric_final": None, "iterations": 0,
                   "reverted": True, "error": _first_line(e)}
        infos[s] = reg
    return transforms, infos


def _dilate(m: np.ndarray, it: int = 2) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_dilation(m, iterations=it)
