"""Uploaded NIfTI files: sniff the header, spool to a temporary folder under a size limit, check
the volume shape. A DICOM study arrives as one zip: unpacked under limits (file count, total
size) into numbered files. The name a file gets on disk comes from the sequence field or a
counter, never the request (so no zip-slip, and no patient names from folder names)."""
from __future__ import annotations

import os
import stat
import struct
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import numpy as np

from medalign.serve.state import MAX_VOXELS

ZIP_EXPANSION = 16          # a study zip may unpack to at most 16 x the per-file upload limit (zip bombs)
MAX_ZIP_MEMBERS = 20_000    # files in one study zip (a long brain MR study has a few thousand)
ZIP_JUNK = ("__MACOSX",)    # folders archivers add that hold no DICOM


def nifti_suffix(head: bytes) -> str | None:
    """'.nii.gz' / '.nii' if ``head`` starts a NIfTI-1/2 file (gzipped or not), else None."""
    data = head
    gz = head[:2] == b"\x1f\x8b"
    if gz:
        try:  # a truncated gzip stream decodes as far as it goes
            data = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, 1024)
        except zlib.error:
            return None
    if len(data) < 348:
        return None
    for endian in ("<", ">"):
        size = struct.unpack(endian + "i", data[:4])[0]
        if size == 348 and data[344:348] in (b"n+1\x00", b"ni1\x00"):
            return ".nii.gz" if gz else ".nii"
        if size == 540 and len(data) >= 8 and data[4:8] in (b"n+2\x00", b"ni2\x00"):
            return ".nii.gz" if gz else ".nii"
    return None


def read_upload(seq: str, f: BinaryIO, tmpdir: Path, max_file_bytes: int) -> str:
    """Copy one upload to ``tmpdir/<seq>.nii[.gz]`` and return that path.

    Raises HTTPException 400 (not a NIfTI, unreadable header, not a 3-D/4-D volume or too many
    voxels) or 413 (file larger than ``max_file_bytes``, checked while copying).
    """
    from fastapi import HTTPException  # lazily: this package imports without the serve extra

    head = f.read(1024)
    suffix = nifti_suffix(head)
    if suffix is None:
        raise HTTPException(400, f"upload '{seq}': not a NIfTI file (.nii or .nii.gz)")
    dest = tmpdir / f"{seq}{suffix}"
    size = len(head)
    with open(dest, "wb") as out:
        out.write(head)
        while chunk := f.read(1 << 20):
            size += len(chunk)
            if size > max_file_bytes:
                raise HTTPException(413, f"upload '{seq}': larger than {max_file_bytes} bytes")
            out.write(chunk)
    try:
        import nibabel as nib

        img = nib.load(str(dest))
        shape = tuple(int(s) for s in img.shape)
    except Exception:
        raise HTTPException(400, f"upload '{seq}': unreadable NIfTI header") from None
    if len(shape) not in (3, 4) or min(shape) < 1 or int(np.prod(shape, dtype=np.int64)) > MAX_VOXELS:
        raise HTTPException(400, f"upload '{seq}': expected a 3-D volume, got shape {shape}")
    return str(dest)


def _path(info: zipfile.ZipInfo) -> PurePosixPath:
    return PurePosixPath(info.filename.replace("\\", "/"))  # archivers on Windows may write backslashes


def _unsafe(info: zipfile.ZipInfo) -> str | None:
    """Why a zip member must not be unpacked (zip-slip path, link, encryption), or None."""
    name = str(_path(info))
    if name.startswith("/") or ".." in _path(info).parts or (len(name) > 1 and name[1] == ":"):
        return "an unsafe path (absolute or with '..')"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "a symbolic link"
    if info.flag_bits & 0x1:
        return "encryption (not supported)"
    return None


def read_dicom_zip(f: BinaryIO, tmpdir: Path, max_file_bytes: int) -> Path:
    """Unpack a zip holding one DICOM study (any layout) into ``tmpdir/dicom`` as numbered files
    (``00000``, ``00001``, ...; ingest reads any file name) and return that folder.

    Raises HTTPException 413 (zip larger than ``max_file_bytes``, more than :data:`MAX_ZIP_MEMBERS`
    files, or more than :data:`ZIP_EXPANSION` x ``max_file_bytes`` unpacked, by the declared sizes and
    again by the bytes written) or 400 (not a zip, an unsafe member, no files, a corrupt member: one
    that inflates past its declared size fails zipfile's CRC check). Messages name members by
    number only: their paths may hold patient names.
    """
    from fastapi import HTTPException  # lazily: this package imports without the serve extra

    f.seek(0, os.SEEK_END)
    if f.tell() > max_file_bytes:
        raise HTTPException(413, f"upload 'dicom': zip larger than {max_file_bytes} bytes")
    f.seek(0)
    max_unzipped = ZIP_EXPANSION * max_file_bytes
    try:
        zf = zipfile.ZipFile(f)
    except (zipfile.BadZipFile, OSError, ValueError):
        raise HTTPException(400, "upload 'dicom': not a zip archive (zip one DICOM study folder)") from None
    with zf:
        members = [i for i in zf.infolist() if not i.is_dir()]
        if len(members) > MAX_ZIP_MEMBERS:
            raise HTTPException(413, f"upload 'dicom': {len(members)} files in the zip, more than {MAX_ZIP_MEMBERS}")
        for k, info in enumerate(members):
            why = _unsafe(info)
            if why:
                raise HTTPException(400, f"upload 'dicom': zip member {k + 1} has {why}; refused")
        # archivers' metadata, dot-files and DICOMDIR hold no images (ingest's walk skips them by name too)
        keep = [i for i in members if not set(_path(i).parts) & set(ZIP_JUNK) and not _path(i).name.startswith(".")
                and _path(i).name.upper() != "DICOMDIR"]
        if not keep:
            raise HTTPException(400, "upload 'dicom': the zip holds no files")
        if sum(i.file_size for i in keep) > max_unzipped:
            raise HTTPException(413, f"upload 'dicom': the zip unpacks to more than {max_unzipped} bytes")
        out = tmpdir / "dicom"
        out.mkdir()
        total = 0
        for k, info in enumerate(keep):
            try:
                with zf.open(info) as src, open(out / f"{k:05d}", "wb") as dst:
                    while chunk := src.read(1 << 20):
                        total += len(chunk)
                        if total > max_unzipped:
                            raise HTTPException(413, f"upload 'dicom': the zip unpacks to more than {max_unzipped} bytes")
                        dst.write(chunk)
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError):
                raise HTTPException(400, f"upload 'dicom': zip member {k + 1} is corrupt or uses an unsupported "
                                         "compression") from None
    return out
