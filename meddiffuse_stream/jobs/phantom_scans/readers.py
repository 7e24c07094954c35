"""Members of registry archives, read in place, decoded to one 2-D grey image each.

DICOM through the project's own decoder (:func:`meddiffuse_stream.convert.dicom.dicom_from_bytes`: modality LUT and
window as a viewer shows them, MONOCHROME1 inverted, the middle frame of a cine loop; colour to luma); NIfTI-1,
NRRD, ``.npy`` and raw arrays by the few lines each needs (volumes: the middle slice).
"""

from __future__ import annotations

import gzip
import io
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .catalogue import SourceScan

__all__ = ["ArchiveReader", "decode", "luma", "middle_slice"]

_NIFTI_TYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4"}
_NRRD_TYPES = {
    "short": "i2", "int16": "i2", "unsigned short": "u2", "ushort": "u2", "uint16": "u2", "int": "i4",
    "int32": "i4", "float": "f4", "double": "f8", "uchar": "u1", "unsigned char": "u1", "uint8": "u1",
}  # fmt: skip


class ArchiveReader:
    """Members of a wheel (zip) or a tarball (npm, sdist), by their path inside it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._zip = zipfile.ZipFile(path) if path.suffix in (".whl", ".zip") else None
        self._tar = None if self._zip is not None else tarfile.open(path)

    def read(self, member: str) -> bytes:
        try:
            if self._zip is not None:
                return self._zip.read(member)
            assert self._tar is not None, "an archive is a zip or a tar"
            stream = self._tar.extractfile(member)
            if stream is None:
                raise KeyError(member)
            return stream.read()
        except KeyError:
            raise KeyError(f"{self.path.name} has no member {member} (the catalogue names it)") from None

    def close(self) -> None:
        (self._zip or self._tar).close()  # type: ignore[union-attr]


def luma(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma of ``(..., 3)`` (or RGBA) pixels."""
    return rgb[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def middle_slice(volume: np.ndarray) -> np.ndarray:
    """The middle slice along the first axis of a 3-D array; 2-D arrays as they are."""
    return volume[(volume.shape[0] - 1) // 2] if volume.ndim == 3 else volume


def _dicom(blob: bytes) -> tuple[np.ndarray, dict[str, Any]]:
    from ...convert.dicom import dicom_from_bytes

    loaded = dicom_from_bytes(blob, frames="middle")
    image = loaded.image
    grey = luma(image) if image.ndim == 3 else image.astype(np.float64)
    keys = ("modality", "photometric", "bits_stored", "transfer_syntax", "frames")
    return grey, {key: loaded.meta[key] for key in keys if key in loaded.meta}


def _nifti(blob: bytes) -> tuple[np.ndarray, dict[str, Any]]:
    if blob[:2] == b"\x1f\x8b":
        blob = gzip.decompress(blob)
    order = "<" if int.from_bytes(blob[:4], "little") == 348 else ">"
    dims = np.frombuffer(blob[40:56], order + "i2")
    datatype = int(np.frombuffer(blob[70:72], order + "i2")[0])
    offset = int(np.frombuffer(blob[108:112], order + "f4")[0])
    slope, intercept = (float(v) for v in np.frombuffer(blob[112:120], order + "f4"))
    shape = [int(d) for d in dims[1 : 1 + int(dims[0])]]
    if datatype not in _NIFTI_TYPES:
        raise ValueError(f"NIfTI datatype {datatype} is not read here")
    count = int(np.prod(shape))
    data = np.frombuffer(blob, order + _NIFTI_TYPES[datatype], count=count, offset=offset)
    volume = data.reshape(shape[::-1]).astype(np.float64)  # NIfTI is x-fastest: (t, z, y, x)
    if slope not in (0.0, 1.0) or intercept:
        volume = volume * (slope or 1.0) + intercept
    while volume.ndim > 3:
        volume = volume[0]
    return middle_slice(volume), {"volume_shape": shape}


def _nrrd(blob: bytes) -> tuple[np.ndarray, dict[str, Any]]:
    head, _, body = blob.partition(b"\n\n")
    header: dict[str, str] = {}
    for line in head.decode("latin1").splitlines()[1:]:
        if ":" in line and not line.startswith("#"):
            key, value = line.split(":", 1)
            header[key.strip()] = value.strip().lstrip("=").strip()
    sizes = [int(x) for x in header["sizes"].split()]
    order = "<" if header.get("endian", "little") == "little" else ">"
    raw = gzip.decompress(body) if header.get("encoding") in ("gzip", "gz") else body
    volume = np.frombuffer(raw, order + _NRRD_TYPES[header["type"]]).reshape(sizes[::-1]).astype(np.float64)
    return middle_slice(volume), {"volume_shape": sizes}


def _npy(blob: bytes) -> tuple[np.ndarray, dict[str, Any]]:
    array = np.load(io.BytesIO(blob), allow_pickle=False)
    grey = luma(array) if array.ndim == 3 and array.shape[-1] in (3, 4) else array
    return middle_slice(np.asarray(grey, dtype=np.float64)), {}


def _raw(blob: bytes, options: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    data = gzip.decompress(blob) if options.get("gzip") else blob
    return np.frombuffer(data, str(options["dtype"])).reshape(options["shape"]).astype(np.float64), {}


def decode(scan: SourceScan, archive: ArchiveReader) -> tuple[np.ndarray, dict[str, Any]]:
    """``scan``'s member of ``archive`` as a 2-D float64 grey image, with what was learnt decoding it."""
    blob = archive.read(scan.member)
    if scan.reader == "dicom":
        return _dicom(blob)
    if scan.reader == "raw":
        return _raw(blob, dict(scan.options))
    readers = {"nifti": _nifti, "nrrd": _nrrd, "npy": _npy}
    if scan.reader not in readers:
        raise ValueError(f"{scan.name}: unknown reader {scan.reader!r}")
    return readers[scan.reader](blob)
