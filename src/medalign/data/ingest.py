"""A DICOM export (any layout) -> a cohort: ``manifest.csv``, ``series.csv`` and NIfTI files.

walk -> read headers only (``dicom_scan``) -> group by study/series -> identify each series'
sequence (``dicom_identify``) -> choose one series per sequence -> check its geometry and convert
it (``dicom_convert``) -> pseudonymised manifest.

Privacy: patient and study ids in every output are keyed hashes (HMAC-SHA256 with a random key);
the key and the original-id mapping live only in ``COHORT_DIR/id_map.json``, which the user can
delete (resuming then keeps the ids already written). Names, birth dates and accession numbers are
never written. Resumable: a study whose ``studies/<id>/ingest.json`` (written last) matches the
export's series is skipped. Bad series never stop the run: they are listed with a one-line reason.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np

from medalign.data.dicom_identify import choose, contrast_by_order, identify, plane, why_not
from medalign.data.dicom_scan import FileRecord, Series, group_series, plan_stack, read_headers, walk
from medalign.data.schema import KNOWN_SEQUENCES, image_column
from medalign.errors import CohortError
from medalign.utils import atomic_path, atomic_write_json

# SWI is identified, chosen and converted, but the data contract has no image_swi column (yet).
CONVERTED: tuple[str, ...] = (*KNOWN_SEQUENCES, "swi")
SERIES_COLUMNS = ("study_id", "study_uid", "series_uid", "series_number", "description", "sequence", "chosen",
                  "reason", "n_files")


# --------------------------------------------------------------------------- headers
def scan(root: str | Path, workers: int = 1) -> tuple[dict[tuple[str, str], Series], dict[str, int], int]:
    """(series by (study, series) uid, skipped counts, files seen) for every file under ``root``.
    Raises CohortError when no file under ``root`` is a readable MR image."""
    root = Path(root)
    if not root.exists():
        raise CohortError("DICOM folder not found", path=str(root))
    paths = walk(root) if root.is_dir() else [str(root)]
    if not paths:
        raise CohortError("no files under the DICOM folder", path=str(root))
    chunks = [paths[i::max(1, workers * 4)] for i in range(max(1, workers * 4))]
    if workers > 1:
        with ProcessPoolExecutor(workers) as ex:
            records: list[FileRecord] = [r for rs in ex.map(read_headers, chunks) for r in rs]
    else:
        records = read_headers(paths)
    groups, skipped = group_series(records)
    if not groups:
        what = ", ".join(f"{n} {k}" for k, n in sorted(skipped.items()))
        raise CohortError(f"no readable DICOM MR image series among {len(paths)} file(s) ({what})", path=str(root))
    return groups, skipped, len(paths)


def series_header(s: Series) -> dict[str, Any]:
    """The first file's header plus what only the whole series tells: b-values, planes, slice positions."""
    h = dict(s.header)
    sl = s.slices
    h["bvalues"] = sorted({round(x.bvalue, 0) for x in sl if x.bvalue is not None})
    oris = {tuple(np.round(x.orientation, 2)) for x in sl if x.orientation is not None}
    normals = [np.cross(o[:3], o[3:]) for o in oris]
    per = Counter(tuple(np.round(x.orientation, 2)) for x in sl if x.orientation is not None)
    h["n_orientations"] = len(oris)
    h["orthogonal_planes"] = len(normals) > 1 and max(per.values()) <= 5 and all(
        abs(float(np.dot(a, b))) < 0.3 for i, a in enumerate(normals) for b in normals[i + 1:])
    h["n_positions"] = len({tuple(np.round(x.position, 1)) for x in sl if x.position is not None})
    h["plane"] = plane(sl[0].orientation) if sl else "unknown"
    return h


# --------------------------------------------------------------------------- one study
def process_study(series: list[Series], study_dir: Path, study_id: str, root: str,
                  only: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Identify, choose, check and convert one study's series into ``study_dir``; returns its
    series rows, the manifest image paths (relative to the cohort) and the errors. ``only``: convert
    just these sequences (every series is still identified, so the study rule sees the whole study)."""
    from medalign.data.dicom_convert import convert

    rel = (lambda p: os.path.relpath(p, root)) if os.path.isdir(root) else os.path.basename
    rows, by_seq = [], {}
    series = sorted(series, key=lambda x: x.header.get("series_number", 0))
    headers = [series_header(s) for s in series]
    decisions = contrast_by_order(headers, [identify(h) for h in headers])  # the study rule after the table
    for s, h, (seq, reason) in zip(series, headers, decisions):
        row = {"study_id": study_id, "study_uid": s.study_uid, "series_uid": s.series_uid,
               "series_number": h["series_number"], "description": h["description"], "sequence": seq,
               "chosen": False, "reason": reason, "n_files": s.n_files}
        rows.append(row)
        if seq in CONVERTED:
            by_seq.setdefault(seq, []).append({**h, "row": row, "series": s})
    images, errors, geometry = {}, [], {}
    for seq, cands in by_seq.items():
        if only is not None and seq not in only:
            continue
        left = list(cands)
        while left:
            best, others = choose(left)
            try:
                stack = plan_stack(best["series"], rel)
                dest = study_dir / f"{seq}.nii.gz"
                geometry[seq] = convert(stack, seq, dest)
            except Exception as e:  # any failure of this series: say why, try the next candidate
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                best["row"]["reason"] += f"; NOT CONVERTED: {msg}"
                errors.append(f"study {study_id} series {best['series_number']} ({best['description'] or 'no description'}, "
                              f"{seq}): {msg}")
                left = others
                continue
            best["row"]["chosen"] = True
            images[seq] = f"studies/{study_id}/{seq}.nii.gz"
            for o in others:
                o["row"]["reason"] += f"; {why_not(best, o)}"
            break
    return {"rows": rows, "images": images, "errors": errors, "geometry": geometry}


def _signature(series: list[Series]) -> str:
    h = hashlib.sha256()
    for s in sorted(series, key=lambda x: x.series_uid):
        h.update(f"{s.series_uid}:{s.n_files};".encode())
    return h.hexdigest()[:16]


def _study_job(args: tuple) -> dict[str, Any]:
    series, study_dir, study_id, root, sig, patient = args
    done = study_dir / "ingest.json"
    if done.is_file():
        prev = json.loads(done.read_text())
        if prev.get("signature") == sig:
            return {**prev, "resumed": True}
    res = process_study(series, study_dir, study_id, root)
    res["signature"], res["patient_id"], res["study_uid"] = sig, patient, series[0].study_uid
    if res["images"]:
        atomic_write_json(done, res)  # written last: marks the study complete
    return {**res, "resumed": False}


def _done_studies(out: Path) -> dict[str, tuple[str, str]]:
    done = {}
    for p in sorted(out.glob("studies/*/ingest.json")):
        try:
            d = json.loads(p.read_text())
            done[d["study_uid"]] = (p.parent.name, d["patient_id"])
        except (ValueError, KeyError):
            continue  # an unreadable marker: the study is redone
    return done


# --------------------------------------------------------------------------- ids and reports
class Pseudonyms:
    """Keyed-hash ids; the key and the mapping live in ``id_map.json`` only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        d = json.loads(path.read_text()) if path.is_file() else {}
        self.key = bytes.fromhex(d.get("key") or secrets.token_hex(32))
        self.patients: dict[str, str] = d.get("patients", {})
        self.studies: dict[str, dict[str, str]] = d.get("studies", {})

    def _h(self, kind: str, value: str) -> str:
        return hmac.new(self.key, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()[:12]

    def patient(self, patient_id: str) -> str:
        pid = self.patients.get(patient_id) or f"P{self._h('patient', patient_id)}"
        self.patients[patient_id] = pid
        return pid

    def study(self, study_uid: str, accession: str) -> str:
        sid = (self.studies.get(study_uid) or {}).get("study_id") or f"S{self._h('study', study_uid)}"
        self.studies[study_uid] = {"study_id": sid, "accession": accession}
        return sid

    def save(self) -> None:
        atomic_write_json(self.path, {"key": self.key.hex(), "patients": self.patients, "studies": self.studies,
                                      "note": "pseudonym mapping: delete this file to make the cohort irreversible"},
                          private=True)  # the key and the real ids: owner-only


def read_reports(path: str | Path) -> tuple[dict[str, str], str]:
    """(key -> report text, key kind 'accession' or 'study_uid') from a CSV with a ``report`` column
    and ``accession_number`` / ``AccessionNumber`` or ``study_uid`` / ``StudyInstanceUID``."""
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise CohortError("reports file not found", path=str(p))
    df = pd.read_csv(p, dtype=str, keep_default_na=False)
    cols = {c.lower().replace("_", ""): c for c in df.columns}
    if "report" not in cols:
        raise CohortError(f"no 'report' column (columns: {', '.join(df.columns)})", path=str(p), column="report")
    for kind, names in (("accession", ("accessionnumber", "accession")), ("study_uid", ("studyuid", "studyinstanceuid"))):
        key = next((cols[n] for n in names if n in cols), None)
        if key is not None:
            return {str(k).strip(): str(v) for k, v in zip(df[key], df[cols["report"]]) if str(v).strip()}, kind
    raise CohortError("no key column: expected accession_number or study_uid", path=str(p))


# --------------------------------------------------------------------------- the cohort
def ingest(root: str | Path, out: str | Path, *, reports: str | Path | None = None, workers: int = 1,
           log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Ingest a DICOM export into ``out`` (see the module docstring); returns the summary."""
    t0 = time.perf_counter()
    log = log or (lambda _m: None)
    report_map, report_key = read_reports(reports) if reports else ({}, "")
    groups, skipped, n_files = scan(root, workers)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ids = Pseudonyms(out / "id_map.json")
    done = _done_studies(out)  # study_uid -> (study id, patient id) already written
    studies: dict[str, list[Series]] = {}
    meta: dict[str, FileRecord] = {}
    for (study_uid, _), s in sorted(groups.items()):
        studies.setdefault(study_uid, []).append(s)
        meta.setdefault(study_uid, s.files[0])
    jobs = []
    for study_uid, series in studies.items():
        f = meta[study_uid]
        if study_uid in done:  # keep the ids on disk even when id_map.json was deleted
            ids.studies[study_uid] = {"study_id": done[study_uid][0], "accession": f.accession}
            ids.patients.setdefault(f.patient_id or f"unknown-{study_uid}", done[study_uid][1])
        sid = ids.study(study_uid, f.accession)
        pid = ids.patient(f.patient_id or f"unknown-{study_uid}")
        jobs.append((series, out / "studies" / sid, sid, str(root), _signature(series), pid))
    ids.save()  # before any image: a crash never leaves ids nobody can map back
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(workers) as ex:
            results = list(ex.map(_study_job, jobs))
    else:
        results = [_study_job(j) for j in jobs]
    manifest_rows, series_rows, errors, no_report = [], [], [], 0
    for (series, _, sid, _, _, pid), res in zip(jobs, results):
        series_rows += res["rows"]
        errors += res["errors"]
        if not any(s in res["images"] for s in KNOWN_SEQUENCES):
            errors.append(f"study {sid}: no wanted sequence could be converted")
            continue
        study_uid = series[0].study_uid
        row = {"study_id": sid, "patient_id": pid}
        if reports:
            key = meta[study_uid].accession if report_key == "accession" else study_uid
            if key not in report_map:
                no_report += 1
                continue
            row["report"] = report_map[key]
        row.update({image_column(s): res["images"].get(s, "") for s in KNOWN_SEQUENCES})
        manifest_rows.append(row)
    summary = _write_outputs(out, manifest_rows, series_rows)
    summary.update(files=n_files, studies=len(jobs), skipped=skipped, errors=errors, no_report=no_report,
                   resumed=sum(bool(r.get("resumed")) for r in results), seconds=round(time.perf_counter() - t0, 2))
    for line in format_summary(summary):
        log(line)
    return summary


def _write_outputs(out: Path, manifest_rows: list[dict], series_rows: list[dict]) -> dict[str, Any]:
    import pandas as pd

    sr = pd.DataFrame(series_rows, columns=list(SERIES_COLUMNS))
    with atomic_path(out / "series.csv") as tmp:
        sr.to_csv(tmp, index=False)
    if manifest_rows:
        with atomic_path(out / "manifest.csv") as tmp:
            pd.DataFrame(manifest_rows).to_csv(tmp, index=False)
    return {"manifest": str(out / "manifest.csv") if manifest_rows else None, "series_csv": str(out / "series.csv"),
            "manifest_studies": len(manifest_rows), "series": len(sr),
            "identified": dict(Counter(sr["sequence"])) if len(sr) else {},
            "chosen": dict(Counter(sr.loc[sr["chosen"].astype(bool), "sequence"])) if len(sr) else {}}


def format_summary(s: dict[str, Any]) -> list[str]:
    """Human-readable summary lines (no PHI: pseudonymised ids, series numbers, descriptions)."""
    lines = [f"{s['files']} files, {s['studies']} studies ({s['resumed']} already done), {s['series']} MR image series "
             f"in {s['seconds']} s",
             "series per sequence: " + ", ".join(f"{k} {v}" for k, v in sorted(s["identified"].items())),
             "chosen per sequence: " + ", ".join(f"{k} {v}" for k, v in sorted(s["chosen"].items()))]
    if s["skipped"]:
        lines.append("skipped files: " + ", ".join(f"{n} {k}" for k, n in sorted(s["skipped"].items())))
    if s["no_report"]:
        lines.append(f"{s['no_report']} studies left out of the manifest: no report in the reports file")
    lines.append(f"{len(s['errors'])} series could not be converted" + (":" if s["errors"] else ""))
    lines += [f"  {e}" for e in s["errors"]]
    lines.append(f"wrote {s['manifest'] or '(no manifest: no study had a wanted sequence)'} and {s['series_csv']}")
    return lines


def study_volumes(folder: str | Path, out_dir: str | Path, sequences: tuple[str, ...] | None = None) -> dict[str, str]:
    """One DICOM study folder -> ``{sequence: NIfTI path}`` under ``out_dir``, by the same
    identification and choice as :func:`ingest` (used by ``medalign.load(run).encode_image``)."""
    groups, _, _ = scan(folder)
    uids = {k[0] for k in groups}
    if len(uids) != 1:
        raise CohortError(f"expected one DICOM study, found {len(uids)}", path=str(folder))
    res = process_study(list(groups.values()), Path(out_dir), "upload", str(folder), only=sequences or None)
    paths = {s: str(Path(out_dir) / f"{s}.nii.gz") for s in res["images"] if not sequences or s in sequences}
    if not paths:
        why = "; ".join(res["errors"]) or "no series identified as " + ", ".join(sequences or KNOWN_SEQUENCES)
        raise CohortError(f"no usable sequence in the DICOM study ({why})", path=str(folder))
    return paths
