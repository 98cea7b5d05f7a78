"""Uploaded NIfTI files: sniff the header, spool to a temporary folder under a size limit, check
the volume shape. The name a file gets on disk comes from the sequence field, never the request."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from medalign.serve.state import MAX_VOXELS


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
