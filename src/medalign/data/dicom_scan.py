"""Read DICOM headers only and group them into series; check each series' slice geometry.

One :class:`FileRecord` per file (``pydicom.dcmread(stop_before_pixels=True)``); one
:class:`Slice` per 2D image (a single-frame file, or one frame of an enhanced multi-frame file);
one :class:`Series` per (StudyInstanceUID, SeriesInstanceUID). :func:`plan_stack` turns a
series' slices into a sorted stack (or a one-line reason why it cannot be one); the converter
(``dicom_convert``) reads pixels in that order, so sorting and spacing are computed once.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

# Non-image objects: structured reports, presentation states, key-object selections, ...
NON_IMAGE_MODALITIES = {"SR", "PR", "KO", "REG", "SEG", "RTSTRUCT", "RTPLAN", "DOC", "AU", "ECG"}
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"


@dataclass
class Slice:
    """One 2D image: a file, or frame ``frame`` of a multi-frame file."""

    path: str
    frame: int | None
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    spacing: tuple[float, float] | None  # PixelSpacing: (between rows, between columns) in mm
    shape: tuple[int, int]  # (Rows, Columns)
    bvalue: float | None
    sop_uid: str
    instance: int


@dataclass
class FileRecord:
    """Header summary of one file: identifiers, the fields identification needs, its slices."""

    path: str
    study_uid: str = ""
    series_uid: str = ""
    modality: str = ""
    patient_id: str = ""
    accession: str = ""
    header: dict[str, Any] = field(default_factory=dict)
    slices: list[Slice] = field(default_factory=list)
    problem: str | None = None  # a file-level problem (truncated pixels, no decoder)
    unreadable: str | None = None  # not DICOM at all / header unreadable


@dataclass
class Series:
    study_uid: str
    series_uid: str
    header: dict[str, Any]
    files: list[FileRecord]

    @property
    def slices(self) -> list[Slice]:
        return [s for f in self.files for s in f.slices]

    @property
    def n_files(self) -> int:
        return len(self.files)


def _get(ds: Any, keyword: str, default: Any = None) -> Any:
    try:
        v = ds.get(keyword, default)
    except Exception:  # a malformed value raises when pydicom converts it
        return default
    return default if v is None or v == "" else v


def _float(v: Any) -> float | None:
    try:
        if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue":
            v = v[0]
        return float(v)
    except (TypeError, ValueError, IndexError):
        return None


def _strs(v: Any) -> list[str]:
    if v is None:
        return []
    if isinstance(v, str):
        return [p.strip().upper() for p in v.split("\\") if p.strip()]
    try:
        return [str(p).strip().upper() for p in v if str(p).strip()]
    except TypeError:
        return [str(v).strip().upper()]


def _private(ds: Any, tag: int) -> Any:
    try:
        el = ds.get(tag)
        return None if el is None else el.value
    except Exception:
        return None


def vendor_bvalue(ds: Any) -> float | None:
    """The diffusion b-value: the standard tag, then the vendors' private ones (as dcm2niix reads
    them): GE (0043,1039) first value (minus the 1e9 some versions add), Philips (2001,1003),
    Siemens (0019,100C) and the b in Siemens' SequenceName ('*ep_b1000t')."""
    b = _float(_get(ds, "DiffusionBValue"))
    if b is not None:
        return b
    maker = str(_get(ds, "Manufacturer", "")).upper()
    if "GE" in maker.split() or maker.startswith("GE"):
        v = _private(ds, 0x00431039)
        b = _float(v.split("\\")[0] if isinstance(v, str) else v)  # "1000000000\\8\\0\\0" or a list
        return None if b is None else b % 1e9
    if "PHILIPS" in maker:
        return _float(_private(ds, 0x20011003))
    if "SIEMENS" in maker:
        b = _float(_private(ds, 0x0019100C))
        if b is not None:
            return b
        m = re.search(r"_b(\d+)", str(_get(ds, "SequenceName", "")))
        return float(m.group(1)) if m else None
    return None


def _header(ds: Any) -> dict[str, Any]:
    """The fields identification reads, from classic or enhanced MR headers."""
    h: dict[str, Any] = {
        "description": str(_get(ds, "SeriesDescription", "") or "").strip(),
        "protocol": str(_get(ds, "ProtocolName", "") or "").strip(),
        "series_number": int(_float(_get(ds, "SeriesNumber")) or 0),
        "series_time": str(_get(ds, "SeriesTime", "") or ""),
        "acquisition_time": str(_get(ds, "AcquisitionTime", "") or ""),
        "manufacturer": str(_get(ds, "Manufacturer", "") or ""),
        "sop_class": str(_get(ds, "SOPClassUID", "") or ""),
        "image_type": _strs(_get(ds, "ImageType")),
        "scanning_sequence": _strs(_get(ds, "ScanningSequence")),
        "sequence_variant": _strs(_get(ds, "SequenceVariant")),
        "sequence_name": str(_get(ds, "SequenceName", "") or ""),
        "te": _float(_get(ds, "EchoTime")), "tr": _float(_get(ds, "RepetitionTime")),
        "ti": _float(_get(ds, "InversionTime")), "flip": _float(_get(ds, "FlipAngle")),
        "acq_type": str(_get(ds, "MRAcquisitionType", "") or "").upper(),
        "contrast": str(_get(ds, "ContrastBolusAgent", "") or "").strip(),
    }
    if h["sop_class"] == ENHANCED_MR:  # enhanced MR keeps the physics in functional groups
        if not h["scanning_sequence"]:
            pulse = str(_get(ds, "EchoPulseSequence", "")).upper()
            h["scanning_sequence"] = {"SPIN": ["SE"], "GRADIENT": ["GR"], "BOTH": ["SE", "GR"]}.get(pulse, [])
            if str(_get(ds, "InversionRecovery", "")).upper() == "YES":
                h["scanning_sequence"].append("IR")
        groups = [g for name in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence")
                  for g in (_get(ds, name) or [])[:1]]
        for g in groups:
            timing = (_get(g, "MRTimingAndRelatedParametersSequence") or [None])[0]
            echo = (_get(g, "MREchoSequence") or [None])[0]
            mod = (_get(g, "MRModifierSequence") or [None])[0]
            if timing is not None:
                h["tr"] = h["tr"] or _float(_get(timing, "RepetitionTime"))
                h["flip"] = h["flip"] or _float(_get(timing, "FlipAngle"))
            if echo is not None:
                h["te"] = h["te"] or _float(_get(echo, "EffectiveEchoTime"))
            if mod is not None:
                h["ti"] = h["ti"] or _float(_get(mod, "InversionTimes"))
    return h


def _frame_group(ds: Any, i: int, name: str) -> Any:
    """Functional group ``name`` of frame ``i``: per-frame first, then shared."""
    for seq_name in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        groups = _get(ds, seq_name) or []
        g = groups[i] if seq_name.startswith("PerFrame") and i < len(groups) else (groups[0] if groups and not seq_name.startswith("PerFrame") else None)
        item = (_get(g, name) or [None])[0] if g is not None else None
        if item is not None:
            return item
    return None


def _vec(v: Any, n: int) -> tuple[float, ...] | None:
    try:
        out = tuple(float(x) for x in v)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(np.isfinite(out)) else None


def _slices(ds: Any, path: str) -> list[Slice]:
    shape = (int(_get(ds, "Rows", 0)), int(_get(ds, "Columns", 0)))
    sop = str(_get(ds, "SOPInstanceUID", ""))
    inst = int(_float(_get(ds, "InstanceNumber")) or 0)
    nframes = int(_float(_get(ds, "NumberOfFrames")) or 1)
    if nframes == 1 and _get(ds, "PerFrameFunctionalGroupsSequence") is None:
        return [Slice(path, None, _vec(_get(ds, "ImagePositionPatient"), 3), _vec(_get(ds, "ImageOrientationPatient"), 6),
                      _vec(_get(ds, "PixelSpacing"), 2), shape, vendor_bvalue(ds), sop, inst)]
    out = []
    for i in range(nframes):
        pos = _frame_group(ds, i, "PlanePositionSequence")
        ori = _frame_group(ds, i, "PlaneOrientationSequence")
        meas = _frame_group(ds, i, "PixelMeasuresSequence")
        diff = _frame_group(ds, i, "MRDiffusionSequence")
        out.append(Slice(path, i, _vec(_get(pos, "ImagePositionPatient"), 3) if pos is not None else None,
                         _vec(_get(ori, "ImageOrientationPatient"), 6) if ori is not None else None,
                         _vec(_get(meas, "PixelSpacing"), 2) if meas is not None else None, shape,
                         _float(_get(diff, "DiffusionBValue")) if diff is not None else None, f"{sop}#{i}", inst))
    return out


def pixel_problem(ds: Any, fp_pos: int, size: int) -> str | None:
    """Why this file's pixels cannot be read (truncated / compressed without a decoder), or None."""
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is not None and ts.is_compressed:
        from pydicom.pixels import get_decoder

        try:
            dec = get_decoder(ts)
        except NotImplementedError:
            return f"transfer syntax {ts.name} ({ts}) is not supported by pydicom"
        if not dec.is_available:
            need = "; ".join(dec.missing_dependencies) or "a pydicom pixel-data plugin"
            return f"compressed transfer syntax {ts.name} has no decoder installed; install one of: {need}"
        return None
    rows, cols = int(_get(ds, "Rows", 0)), int(_get(ds, "Columns", 0))
    bits, spp = int(_get(ds, "BitsAllocated", 16)), int(_get(ds, "SamplesPerPixel", 1))
    frames = int(_float(_get(ds, "NumberOfFrames")) or 1)
    need = rows * cols * frames * spp * bits // 8
    if size - fp_pos - 8 < need:  # the Pixel Data element header is at least 8 bytes
        return f"file is truncated ({max(size - fp_pos - 8, 0)} of {need} pixel bytes)"
    return None


def read_header(path: str) -> FileRecord:
    """Header of one file (no pixels). Files that are not DICOM come back with ``unreadable`` set."""
    import pydicom

    rec = FileRecord(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fp:
            ds = pydicom.dcmread(fp, stop_before_pixels=True)
            pos = fp.tell()
    except Exception as e:
        rec.unreadable = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
        return rec
    rec.study_uid = str(_get(ds, "StudyInstanceUID", ""))
    rec.series_uid = str(_get(ds, "SeriesInstanceUID", ""))
    rec.modality = str(_get(ds, "Modality", "")).upper()
    if not rec.study_uid or not rec.series_uid:
        rec.unreadable = "no StudyInstanceUID/SeriesInstanceUID (not an image object)"
        return rec
    rec.patient_id = str(_get(ds, "PatientID", ""))
    rec.accession = str(_get(ds, "AccessionNumber", ""))
    if rec.modality != "MR" or "PixelData" not in ds and not _has_pixel_tag(ds, pos, size):
        return rec  # skipped later by modality / non-image; no slices needed
    rec.header = _header(ds)
    rec.slices = _slices(ds, path)
    rec.problem = pixel_problem(ds, pos, size)
    return rec


def _has_pixel_tag(ds: Any, pos: int, size: int) -> bool:
    """stop_before_pixels leaves the file at the Pixel Data tag: anything left means pixels."""
    return size - pos > 4 and int(_get(ds, "Rows", 0) or 0) > 0


def read_headers(paths: list[str]) -> list[FileRecord]:
    return [read_header(p) for p in paths]


def walk(root: str | Path) -> list[str]:
    """Every regular file under ``root`` (any layout, any names; DICOMDIR files and dot-files skipped)."""
    out = []
    for dirpath, dirnames, files in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(files):
            if f.startswith(".") or f.upper() == "DICOMDIR":
                continue
            out.append(os.path.join(dirpath, f))
    return out


def group_series(records: Iterable[FileRecord]) -> tuple[dict[tuple[str, str], Series], dict[str, int]]:
    """MR image files grouped by (study, series); counts of what was skipped and why."""
    groups: dict[tuple[str, str], Series] = {}
    skipped: dict[str, int] = {}
    for r in records:
        if r.unreadable:
            key = "not DICOM / unreadable"
        elif r.modality in NON_IMAGE_MODALITIES or not r.slices and r.modality == "MR":
            key = f"non-image object ({r.modality or '?'})"
        elif r.modality != "MR":
            key = f"non-MR modality ({r.modality or '?'})"
        else:
            k = (r.study_uid, r.series_uid)
            if k not in groups:
                groups[k] = Series(r.study_uid, r.series_uid, r.header, [])
            groups[k].files.append(r)
            continue
        skipped[key] = skipped.get(key, 0) + 1
    return groups, skipped


@dataclass
class Stack:
    """A series as sorted 3D volumes: ``volumes[b]`` is a list (one per slice position, sorted
    along the slice normal) of lists of slices at that position."""

    positions: list[tuple[float, float, float]]
    volumes: dict[float, list[list[Slice]]]
    orientation: tuple[float, ...]
    spacing: tuple[float, float]
    slice_step: np.ndarray  # (3,) mm vector from one slice to the next (LPS)


def plan_stack(series: Series, rel: Any = str) -> Stack:
    """Sort a series' slices into volume(s) and check the geometry; raise ValueError with a
    one-line reason (``rel`` formats file paths for the message)."""
    slices = series.slices
    for f in series.files:
        if f.problem:
            raise ValueError(f"{rel(f.path)}: {f.problem}")
    seen: dict[str, str] = {}
    for s in slices:
        if s.sop_uid in seen:
            raise ValueError(f"duplicated SOPInstanceUID {s.sop_uid} ({rel(seen[s.sop_uid])} and {rel(s.path)})")
        seen[s.sop_uid] = s.path
    bad = next((s for s in slices if s.position is None or s.orientation is None or s.spacing is None), None)
    if bad is not None:
        raise ValueError(f"{rel(bad.path)}: no ImagePositionPatient/ImageOrientationPatient/PixelSpacing")
    ori = np.array([s.orientation for s in slices])  # (n, 6)
    if np.abs(ori - ori[0]).max() > 1e-3:
        n_dist = len({tuple(np.round(o, 3)) for o in ori})
        raise ValueError(f"mixed orientations within one series ({n_dist} distinct ImageOrientationPatient)")
    sp = np.array([s.spacing for s in slices])  # (n, 2)
    if np.abs(sp - sp[0]).max() > 1e-3 or len({s.shape for s in slices}) > 1:
        raise ValueError("inconsistent pixel spacing or image size between slices")
    row, col = np.array(slices[0].orientation[:3]), np.array(slices[0].orientation[3:])
    normal = np.cross(row, col)
    d = np.array([s.position for s in slices]) @ normal  # (n,) distance along the normal
    order = np.argsort(d, kind="stable")
    uniq: list[float] = []
    for i in order:  # positions closer than 0.01 mm are one slice position
        if not uniq or d[i] - uniq[-1] > 0.01:
            uniq.append(float(d[i]))
    if len(uniq) < 2:
        raise ValueError(f"a series of one slice ({len(slices)} image(s) at one position): not a volume")
    gaps = np.diff(uniq)
    step = float(np.median(gaps))
    if gaps.max() - gaps.min() > max(0.01 * step, 0.01):
        worst = int(np.argmax(np.abs(gaps - step)))
        ratio = gaps[worst] / step
        if ratio > 1.5 and abs(ratio - round(ratio)) < 0.1:
            raise ValueError(f"missing slices: a gap of {gaps[worst]:.2f} mm after slice {worst + 1} of {len(uniq)} "
                             f"(spacing {step:.2f} mm; about {round(ratio) - 1} slice(s) missing)")
        raise ValueError(f"inconsistent slice spacing ({gaps.min():.2f} to {gaps.max():.2f} mm)")
    volumes: dict[float, list[list[Slice]]] = {}
    idx = np.searchsorted(np.array(uniq) + 0.01, d)  # slice position of each image
    for s, k in zip(slices, idx):
        b = round(s.bvalue, 0) if s.bvalue is not None else -1.0
        vol = volumes.setdefault(b, [[] for _ in uniq])
        vol[int(k)].append(s)
    for b, vol in volumes.items():
        empty = [i for i, v in enumerate(vol) if not v]
        if empty and len(volumes) > 1:
            raise ValueError(f"b={b:g}: no image at slice position(s) {empty[:5]} of {len(uniq)}")
    pos = [None] * len(uniq)
    for s, k in zip(slices, idx):
        pos[int(k)] = pos[int(k)] or s.position
    first, last = np.array(pos[0]), np.array(pos[-1])
    return Stack(pos, volumes, slices[0].orientation, slices[0].spacing, (last - first) / (len(uniq) - 1))
