"""Write a PACS-style DICOM export from synthetic NIfTI studies, with the truth for each series.

Each study becomes a dozen series the way scanners export them: a 3-plane localizer, diffusion
(Siemens: b0 + b1000 trace in one series; GE: b1000 trace + a separate b0 series; Philips: b0 +
three directions), ADC, T2* GRE, SWI magnitude/phase/SWI/minIP, axial FLAIR (sometimes repeated,
sometimes as one enhanced multi-frame file), a 3D sagittal FLAIR and its coronal MPR, T1 (axial
SE and sometimes a sagittal MPRAGE), T1 post-contrast, T2, plus a structured report (not an
image). Descriptions use each vendor's spelling; some are empty or "Series N", and some series
have their physics fields stripped (as some anonymisers do), so both rule tables are exercised.
Patient names, birth dates, MRNs and accession numbers are fake PHI that ingest must not leak.

``truth.csv`` lists every image series: ``study_uid``, ``series_uid``, ``series_number``,
``truth`` (the sequence, or ``other``) and ``wanted`` (the series ingest's choice rule should pick).
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from medalign.data.synth.sequences import POST_CONTRAST, SEQUENCES

VENDORS = ("siemens", "ge", "philips")
MAKER = {"siemens": "SIEMENS", "ge": "GE MEDICAL SYSTEMS", "philips": "Philips Medical Systems"}
DESCRIPTIONS: dict[str, dict[str, str]] = {
    "localizer": {"siemens": "localizer", "ge": "3-Plane Loc", "philips": "Survey"},
    "dwi": {"siemens": "ep2d_diff_3scan_trace_p2", "ge": "Ax DWI 1000b", "philips": "DWI_SE"},
    "b0": {"siemens": "ep2d_diff_b0", "ge": "Ax DWI b0", "philips": "DWI_b0"},
    "adc": {"siemens": "ep2d_diff_3scan_trace_p2_ADC", "ge": "Apparent Diffusion Coefficient (mm2/s)", "philips": "dADC"},
    "t2s": {"siemens": "t2_fl2d_tra_hemo", "ge": "Ax T2* GRE", "philips": "T2*_FFE"},
    "swi_mag": {"siemens": "t2_swi_tra_p2_Mag", "ge": "Ax SWAN Mag", "philips": "SWIp_Mag"},
    "swi_pha": {"siemens": "t2_swi_tra_p2_Pha", "ge": "Ax SWAN Phase", "philips": "SWIp_Pha"},
    "swi": {"siemens": "t2_swi_tra_p2_SWI_Images", "ge": "Ax SWAN", "philips": "SWIp"},
    "swi_minip": {"siemens": "t2_swi_tra_p2_mIP_Images(SW)", "ge": "Ax SWAN minIP", "philips": "SWIp_minIP"},
    "flair": {"siemens": "t2_tirm_tra_dark-fluid", "ge": "Ax T2 FLAIR", "philips": "FLAIR_TRA"},
    "flair3d": {"siemens": "t2_space_dark-fluid_sag_p2", "ge": "Sag CUBE FLAIR", "philips": "3D_FLAIR_SAG"},
    "flair_mpr": {"siemens": "t2_space_dark-fluid_sag_p2_MPR_cor", "ge": "Cor CUBE FLAIR reformat", "philips": "3D_FLAIR_COR_MPR"},
    "t1": {"siemens": "t1_se_tra", "ge": "Ax T1 SE", "philips": "T1W_SE"},
    "mprage": {"siemens": "t1_mprage_sag_p2", "ge": "Sag T1 BRAVO", "philips": "3D_T1W_TFE_SAG"},
    "t1c": {"siemens": "t1_se_tra_KM", "ge": "Ax T1 +C", "philips": "T1W_SE_GD"},
    "t2": {"siemens": "t2_tse_tra", "ge": "Ax T2 FSE", "philips": "T2W_TSE"},
}
# kind -> (ScanningSequence, SequenceVariant, TE, TR, TI, flip, MRAcquisitionType, ImageType, truth)
PHYSICS: dict[str, tuple] = {
    "localizer": ("GR", "SP", 5.0, 8.6, None, 20.0, "2D", "ORIGINAL\\PRIMARY\\M\\NORM", "other"),
    "dwi": ("EP", "SK\\SP", 89.0, 5200.0, None, 90.0, "2D", "ORIGINAL\\PRIMARY\\DIFFUSION\\TRACEW", "dwi"),
    "b0": ("EP", "SK\\SP", 89.0, 5200.0, None, 90.0, "2D", "ORIGINAL\\PRIMARY\\DIFFUSION\\NONE", "other"),
    "adc": ("EP", "SK\\SP", 89.0, 5200.0, None, 90.0, "2D", "DERIVED\\PRIMARY\\DIFFUSION\\ADC", "adc"),
    "t2s": ("GR", "SP", 20.0, 650.0, None, 20.0, "2D", "ORIGINAL\\PRIMARY\\M\\ND", "t2s"),
    "swi_mag": ("GR", "SP", 20.0, 28.0, None, 15.0, "3D", "ORIGINAL\\PRIMARY\\M\\ND", "other"),
    "swi_pha": ("GR", "SP", 20.0, 28.0, None, 15.0, "3D", "ORIGINAL\\PRIMARY\\P\\ND", "other"),
    "swi": ("GR", "SP", 20.0, 28.0, None, 15.0, "3D", "DERIVED\\PRIMARY\\M\\SWI", "swi"),
    "swi_minip": ("GR", "SP", 20.0, 28.0, None, 15.0, "3D", "DERIVED\\PRIMARY\\MNIP", "other"),
    "flair": ("SE\\IR", "SK\\SP\\MP", 85.0, 9000.0, 2500.0, 150.0, "2D", "ORIGINAL\\PRIMARY\\M\\ND", "flair"),
    "flair3d": ("SE\\IR", "SK\\SP\\MP", 390.0, 5000.0, 1800.0, 120.0, "3D", "ORIGINAL\\PRIMARY\\M\\ND", "flair"),
    "flair_mpr": ("SE\\IR", "SK\\SP\\MP", 390.0, 5000.0, 1800.0, 120.0, "3D", "DERIVED\\SECONDARY\\MPR", "other"),
    "t1": ("SE", "SP", 12.0, 550.0, None, 90.0, "2D", "ORIGINAL\\PRIMARY\\M\\ND", "t1"),
    "mprage": ("GR\\IR", "SK\\SP\\MP", 2.5, 2000.0, 900.0, 8.0, "3D", "ORIGINAL\\PRIMARY\\M\\ND", "t1"),
    "t1c": ("SE", "SP", 12.0, 550.0, None, 90.0, "2D", "ORIGINAL\\PRIMARY\\M\\ND", "t1c"),
    "t2": ("SE", "SK\\SP", 100.0, 4500.0, None, 150.0, "2D", "ORIGINAL\\PRIMARY\\M\\ND", "t2"),
}
PHYSICS_KEYWORDS = ("EchoTime", "RepetitionTime", "InversionTime", "FlipAngle", "ScanningSequence", "SequenceVariant")
MR_STORAGE, ENHANCED_MR, SR_STORAGE = "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.4.1", "1.2.840.10008.5.1.4.1.1.88.11"


def reslice(data: np.ndarray, affine: np.ndarray, plane: str) -> tuple[np.ndarray, np.ndarray]:
    """The same voxels stacked along another axis: 'sagittal' slices along i, 'coronal' along j
    (an axial-acquired volume is assumed); the world geometry is unchanged."""
    perm = {"axial": (0, 1, 2), "sagittal": (1, 2, 0), "coronal": (0, 2, 1)}[plane]
    return np.transpose(data, perm), affine[:, list(perm) + [3]]


def _uid(*parts: Any) -> str:
    from pydicom.uid import generate_uid

    # one joined string: generate_uid concatenates its sources, so (1, 12) and (11, 2) would collide
    return generate_uid(entropy_srcs=["|".join(str(p) for p in parts)])


def _base(study: dict, series_uid: str, number: int, kind: str, vendor: str, rng: np.random.Generator,
          strip: bool, describe: str | None) -> dict[str, Any]:
    ss, sv, te, tr, ti, fa, acq, itype, _ = PHYSICS[kind]
    d: dict[str, Any] = {
        "PatientName": study["patient_name"], "PatientID": study["mrn"], "PatientBirthDate": study["birth_date"],
        "PatientSex": "F", "AccessionNumber": study["accession"], "StudyInstanceUID": study["study_uid"],
        "StudyDate": "20240105", "StudyTime": "101500", "StudyID": "1", "ReferringPhysicianName": "WHO^DR",
        "SeriesInstanceUID": series_uid, "SeriesNumber": number, "SeriesTime": f"10{20 + number // 60:02d}{number % 60:02d}",
        "Modality": "MR", "Manufacturer": MAKER[vendor], "SeriesDescription": DESCRIPTIONS[kind][vendor] if describe is None else describe,
        "ImageType": itype.split("\\"), "ScanningSequence": ss.split("\\"), "SequenceVariant": sv.split("\\"),
        "MRAcquisitionType": acq, "EchoTime": te, "RepetitionTime": tr, "FlipAngle": fa, "MagneticFieldStrength": 3.0,
        "FrameOfReferenceUID": study["frame_uid"],
    }
    if ti is not None:
        d["InversionTime"] = ti
    if kind == "t1c" and rng.random() < 0.7:
        d["ContrastBolusAgent"] = str(rng.choice(["Gadovist", "DOTAREM", "MultiHance"]))
    if strip:
        for k in PHYSICS_KEYWORDS:
            d.pop(k, None)
    return d


def _dataset(fields: dict[str, Any], sop_class: str, sop_uid: str) -> Any:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    for k, v in fields.items():
        setattr(ds, k, v)
    return ds


def _pixels(ds: Any, img: np.ndarray) -> None:
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PixelData = np.ascontiguousarray(img, dtype="<i2").tobytes()


def _bvalue_tags(ds: Any, vendor: str, b: float) -> None:
    """Each vendor's own way of recording the b-value (what real exports carry)."""
    if vendor == "siemens":
        ds.SequenceName = f"*ep_b{int(b)}t"
        ds.add_new(0x00190010, "LO", "SIEMENS MR HEADER")
        ds.add_new(0x0019100C, "IS", str(int(b)))
    elif vendor == "ge":
        ds.add_new(0x00430010, "LO", "GEMS_PARM_01")
        ds.add_new(0x00431039, "IS", [str(int(b) + 1_000_000_000), "8", "0", "0"])
    else:
        ds.DiffusionBValue = float(b)
        ds.add_new(0x20010010, "LO", "Philips Imaging DD 001")
        ds.add_new(0x20011003, "FL", float(b))


def _geometry(affine: np.ndarray) -> tuple[list[float], list[float], np.ndarray, np.ndarray]:
    """(ImageOrientationPatient, PixelSpacing, LPS affine, slice vector) of a RAS affine."""
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    sx, sy = np.linalg.norm(lps[:3, 0]), np.linalg.norm(lps[:3, 1])
    iop = [round(float(v), 8) for v in np.r_[lps[:3, 0] / sx, lps[:3, 1] / sy]]
    return iop, [round(float(sy), 6), round(float(sx), 6)], lps, lps[:3, 2]


def write_series(out: Path, fields: dict[str, Any], data: np.ndarray, affine: np.ndarray, *, vendor: str,
                 names: Iterator[str], bvalues: list[float] | None = None, directions: int = 1,
                 enhanced: bool = False) -> list[Path]:
    """Write one series (one file per slice, or one enhanced multi-frame file) into ``out``.
    ``data`` (i, j, k) with RAS ``affine``; ``bvalues`` repeats the volume once per b (scaled
    by exp(-b/2000) for a plausible decay) and ``directions`` times per b > 0."""
    iop, ps, lps, _ = _geometry(affine)
    vols = [(None, data)] if bvalues is None else [
        (b, data * float(np.exp(-b / 2000.0)) if b > 0 else data) for b in bvalues for _ in range(directions if b > 0 else 1)]
    paths = []
    if enhanced:
        return [_write_enhanced(out, fields, data, lps, iop, ps, names)]
    inst = 0
    for b, vol in vols:
        for k in range(vol.shape[2]):
            inst += 1
            sop = _uid(fields["SeriesInstanceUID"], inst)
            ds = _dataset(fields, MR_STORAGE, sop)
            ds.InstanceNumber = inst
            ds.ImagePositionPatient = [round(float(v), 6) for v in lps[:3, :3] @ [0, 0, k] + lps[:3, 3]]
            ds.ImageOrientationPatient, ds.PixelSpacing = iop, ps
            ds.SliceThickness = round(float(np.linalg.norm(lps[:3, 2])), 6)
            ds.Rows, ds.Columns = vol.shape[1], vol.shape[0]
            if b is not None:
                _bvalue_tags(ds, vendor, b)
            _pixels(ds, np.rint(vol[:, :, k].T))  # (rows=j, cols=i)
            p = out / next(names)
            p.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(p, enforce_file_format=True)
            paths.append(p)
    return paths


def _write_enhanced(out: Path, fields: dict[str, Any], data: np.ndarray, lps: np.ndarray, iop: list[float],
                    ps: list[float], names: Iterator[str]) -> Path:
    """One Enhanced MR Image object: frames with per-frame positions, shared orientation/spacing."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    f = {k: v for k, v in fields.items() if k not in PHYSICS_KEYWORDS}
    ds = _dataset(f, ENHANCED_MR, _uid(fields["SeriesInstanceUID"], "mf"))
    ds.InstanceNumber, ds.NumberOfFrames = 1, data.shape[2]
    ds.Rows, ds.Columns = data.shape[1], data.shape[0]
    physics = "EchoTime" in fields  # False when an 'anonymiser' stripped them
    shared = Dataset()
    ori, meas, timing, mod = Dataset(), Dataset(), Dataset(), Dataset()
    ori.ImageOrientationPatient, meas.PixelSpacing = iop, ps
    meas.SliceThickness = round(float(np.linalg.norm(lps[:3, 2])), 6)
    shared.PlaneOrientationSequence, shared.PixelMeasuresSequence = Sequence([ori]), Sequence([meas])
    if physics:
        ds.EchoPulseSequence = "BOTH" if "GR" in fields["ScanningSequence"] else "SPIN"
        ds.InversionRecovery = "YES" if "IR" in fields["ScanningSequence"] else "NO"
        timing.RepetitionTime, timing.FlipAngle = fields["RepetitionTime"], fields["FlipAngle"]
        mod.InversionTimes = [fields.get("InversionTime", 0)]
        shared.MRTimingAndRelatedParametersSequence, shared.MRModifierSequence = Sequence([timing]), Sequence([mod])
    frames = []
    for k in range(data.shape[2]):
        fr, pos, echo = Dataset(), Dataset(), Dataset()
        pos.ImagePositionPatient = [round(float(v), 6) for v in lps[:3, :3] @ [0, 0, k] + lps[:3, 3]]
        fr.PlanePositionSequence = Sequence([pos])
        if physics:
            echo.EffectiveEchoTime = fields["EchoTime"]
            fr.MREchoSequence = Sequence([echo])
        frames.append(fr)
    ds.SharedFunctionalGroupsSequence, ds.PerFrameFunctionalGroupsSequence = Sequence([shared]), Sequence(frames)
    _pixels(ds, np.rint(np.transpose(data, (2, 1, 0))))  # (frames, rows, cols)
    p = out / next(names)
    p.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(p, enforce_file_format=True)
    return p


def _names(layout: str, study: dict, number: int, rng: np.random.Generator) -> Iterator[str]:
    i = 0
    while True:
        i += 1
        if layout == "flat":  # a dump: random names, no extension
            yield f"{rng.integers(1 << 62):016x}"
        else:
            yield f"{study['patient_name'].split('^')[0]}/{study['accession']}/SE{number:03d}/IM{i:05d}.dcm"


def _plan(vendor: str, rng: np.random.Generator) -> list[tuple[str, str, bool]]:
    """(kind, plane, wanted) per series, in acquisition order; the wanted one per truth sequence
    is the series the documented choice rule must pick."""
    repeat_flair = rng.random() < 0.3
    plan = [("localizer", "3plane", False)]
    plan += [("dwi", "axial", True)] + ([("b0", "axial", False)] if vendor == "ge" else []) + [("adc", "axial", True)]
    plan += [("t2s", "axial", True), ("swi_mag", "axial", False), ("swi_pha", "axial", False), ("swi", "axial", True),
             ("swi_minip", "axial", False)]
    plan += [("flair", "axial", not repeat_flair)] + ([("flair", "axial", True)] if repeat_flair else [])
    plan += [("flair3d", "sagittal", False), ("flair_mpr", "coronal", False)]
    plan += [("t1", "axial", True)] + ([("mprage", "sagittal", False)] if rng.random() < 0.5 else [])
    plan += [("t2", "axial", True), ("t1c", "axial", True)]
    return plan


def export_study(volumes: dict[str, tuple[np.ndarray, np.ndarray]], out: Path, index: int, *, seed: int = 0,
                 vendor: str | None = None, layout: str = "nested", phi: dict | None = None) -> list[dict[str, Any]]:
    """Write one study's series under ``out``; ``volumes`` maps dwi/adc/t2s/flair/t1/t2[/t1c] to (data, RAS
    affine). A synthetic cohort brings its own t1c; without one (phantoms) it is the T1 brightened 1.2x on
    the T1 grid. Returns one truth row per image series."""
    rng = np.random.default_rng([seed, index])
    vendor = vendor or VENDORS[index % 3]
    study = {"study_uid": _uid(seed, index, "study"), "frame_uid": _uid(seed, index, "frame"),
             "patient_name": f"DOE{index:04d}^JANE", "mrn": f"MRN{7000000 + index}", "birth_date": f"19{50 + index % 40}0101",
             "accession": f"ACC{900000 + index}", **(phi or {})}
    vols = dict(volumes)
    vols.setdefault("t1c", (vols["t1"][0] * 1.2, vols["t1"][1]))
    source = {"localizer": "t1", "b0": "dwi", "swi_mag": "t2s", "swi_pha": "t2s", "swi": "t2s", "swi_minip": "t2s",
              "flair3d": "flair", "flair_mpr": "flair", "mprage": "t1"}
    rows = []
    for number, (kind, plane, wanted) in enumerate(_plan(vendor, rng), start=1):
        data, aff = vols[source.get(kind, kind)]
        strip = kind in ("t2s", "flair", "t1", "t2", "t1c") and rng.random() < 0.1
        describe = None if strip or rng.random() > 0.15 or kind == "localizer" else str(rng.choice(["", f"Series {number}", "WIP"]))
        uid = _uid(seed, index, number, "series")
        fields = _base(study, uid, number, kind, vendor, rng, strip, describe)
        names = _names(layout, study, number, rng)
        if kind == "localizer":  # three orthogonal slices in one series
            for p in ("axial", "sagittal", "coronal"):
                d, a = reslice(data, aff, p) if p != "axial" else (data, aff)
                mid = d.shape[2] // 2
                a2 = a.copy()
                a2[:3, 3] = a[:3, :3] @ [0, 0, mid] + a[:3, 3]
                write_series(out, fields, d[:, :, mid:mid + 1], a2, vendor=vendor, names=names)
        else:
            d, a = reslice(data, aff, plane) if plane != "axial" else (data, aff)
            if kind == "swi_pha":
                d = d * 0.1 - 200
            bvals = {"siemens": [0.0, 1000.0], "ge": [1000.0], "philips": [0.0, 1000.0]}[vendor] if kind == "dwi" else (
                [0.0] if kind == "b0" else None)
            write_series(out, fields, d, a, vendor=vendor, names=names, bvalues=bvals,
                         directions=3 if vendor == "philips" and kind == "dwi" else 1,
                         enhanced=vendor == "philips" and kind == "flair" and index % 2 == 1)
        rows.append({"study_uid": study["study_uid"], "series_uid": uid, "series_number": number, "vendor": vendor,
                     "kind": kind, "truth": PHYSICS[kind][8], "wanted": wanted, "description": fields["SeriesDescription"],
                     "stripped": strip})
    _write_sr(out, study, seed, index, layout)
    return rows


def _write_sr(out: Path, study: dict, seed: int, index: int, layout: str) -> None:
    """A structured report in the study: a non-image object ingest must skip."""
    fields = {"PatientName": study["patient_name"], "PatientID": study["mrn"], "AccessionNumber": study["accession"],
              "StudyInstanceUID": study["study_uid"], "SeriesInstanceUID": _uid(seed, index, "sr"), "Modality": "SR",
              "SeriesNumber": 99, "ValueType": "CONTAINER"}
    ds = _dataset(fields, SR_STORAGE, _uid(seed, index, "sr-sop"))
    name = f"{index:04d}SR" if layout == "flat" else f"{study['patient_name'].split('^')[0]}/{study['accession']}/SR/SR1.dcm"
    p = out / name
    p.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(p, enforce_file_format=True)


def export_cohort(manifest: str | Path, out: str | Path, *, seed: int = 0, layout: str = "nested",
                  limit: int | None = None) -> Path:
    """Every study of a synthetic NIfTI cohort (``medalign synth brain``) -> a DICOM export under ``out``,
    plus ``out/../<name>_truth.csv`` and ``<name>_reports.csv`` (reports keyed by AccessionNumber)."""
    import nibabel as nib

    from medalign.data.manifest import load_manifest

    df = load_manifest(manifest, check_files=False)
    out = Path(out)
    truth, reports = [], []
    for i, row in enumerate(df.head(limit).itertuples(index=False)):
        r = row._asdict()
        vols = {}
        for s in (*SEQUENCES, *POST_CONTRAST):  # a cohort without t1c: derived from t1
            p = r.get(f"image_{s}")
            if p:
                img = nib.load(p)
                vols[s] = (np.asarray(img.dataobj, dtype=np.float32), img.affine)
        lacking = [s for s in SEQUENCES if s not in vols]
        if lacking:  # e.g. the FLAIR-alone studies of `synth brain --flair-alone`, written after the rest
            from medalign.errors import MedAlignError

            raise MedAlignError(f"study {r['study_id']} has no {lacking[0]} series: the DICOM export writes whole "
                                f"protocols only (--limit N stops before a cohort's FLAIR-alone studies)")
        truth += export_study(vols, out, i, seed=seed, layout=layout)
        reports.append({"accession_number": f"ACC{900000 + i}", "report": r.get("report", "")})
    _csv(out.parent / f"{out.name}_truth.csv", truth)
    _csv(out.parent / f"{out.name}_reports.csv", reports)
    return out


def _csv(path: Path, rows: list[dict]) -> None:
    from medalign.utils import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
