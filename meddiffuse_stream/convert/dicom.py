"""DICOM pixels to the shard format: MONOCHROME1 inverted, VOI window or LUT applied, bit depth kept.

Grey images with more than 8 stored bits become 16-bit PNGs. Without a VOI transform the stored values are kept
bit-exactly, shifted into the high bits as PNG does (``significant_bits`` in the metadata says by how much);
with one, the window's output range is mapped linearly onto the full 8 or 16 bits.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from .base import LoadedImage, RejectError

__all__ = ["dicom_from_bytes", "is_dicom"]


def is_dicom(data: bytes) -> bool:
    """True for files carrying the DICOM preamble magic."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def dicom_from_bytes(data: bytes, *, apply_window: bool = True) -> LoadedImage:
    """Decode one single-frame DICOM; everything that cannot be stored faithfully is a :class:`RejectError`."""
    if not data:
        raise RejectError("zero-byte file")
    try:
        return _decode(data, apply_window)
    except (RejectError, MemoryError):
        raise
    except Exception as error:  # pydicom reads damaged elements lazily: any failure there is a damaged file
        raise RejectError(f"damaged DICOM ({type(error).__name__}: {' '.join(str(error).split())[:300]})") from error


def _decode(data: bytes, apply_window: bool) -> LoadedImage:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError as error:
        raise RejectError(f"not a DICOM file ({' '.join(str(error).split())})") from error
    if "SOPClassUID" not in ds and "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
        raise RejectError("not a DICOM file (neither a SOP class nor a transfer syntax after the header)")
    if "PixelData" not in ds:
        raise RejectError("DICOM without pixel data (PixelData element missing)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise RejectError(f"multi-frame DICOM ({frames} frames): export the frame you want as its own file")
    try:
        pixels = ds.pixel_array
    except Exception as error:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", str(syntax))
        if "missing" in str(error) or "plugin" in str(error).lower():
            raise RejectError(
                f"no codec installed for transfer syntax '{name}': install pylibjpeg-libjpeg, pyjpegls or "
                "gdcm (JPEG 2000 comes with pip install 'meddiffuse-stream[dicom]')"
            ) from error
        raise RejectError(f"pixel data cannot be decoded ({name}): {' '.join(str(error).split())}") from error
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    meta: dict[str, Any] = {
        "modality": str(ds.get("Modality", "")),
        "photometric": photometric,
        "bits_stored": int(ds.get("BitsStored", pixels.dtype.itemsize * 8)),
        "transfer_syntax": str(ds.file_meta.get("TransferSyntaxUID", "")),
    }
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        image = _grey(ds, pixels, photometric, apply_window, meta)
    else:
        image = _colour(ds, pixels, photometric, meta)
    return LoadedImage(image, meta=meta)


def _grey(ds: Any, pixels: np.ndarray, photometric: str, apply_window: bool, meta: dict[str, Any]) -> np.ndarray:
    from pydicom.pixels import apply_voi_lut

    bits = meta["bits_stored"]
    if bits > 16:
        raise RejectError(f"{bits} stored bits: the shard format keeps at most 16; rescale the source first")
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    has_voi = "VOILUTSequence" in ds or "WindowCenter" in ds
    if apply_window and has_voi:
        if "VOILUTSequence" in ds:
            out_bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
            low, high = 0.0, float(2**out_bits - 1)
        else:
            low = float(-(2 ** (bits - 1))) if signed else 0.0
            high = float(2 ** (bits - 1) - 1) if signed else float(2**bits - 1)
        windowed = apply_voi_lut(pixels.astype(np.float64), ds)
        target_bits = 16 if bits > 8 else 8
        top = 2**target_bits - 1
        scaled = np.clip((windowed - low) / max(high - low, 1.0), 0.0, 1.0) * top
        values = np.rint(scaled).astype(np.uint16 if target_bits == 16 else np.uint8)
        if photometric == "MONOCHROME1":
            values = (top - values).astype(values.dtype)
        meta.update(window_applied=True, significant_bits=target_bits)
        return values
    stored = pixels.astype(np.int64)
    if signed:
        stored = stored + 2 ** (bits - 1)
        meta["pixel_offset"] = 2 ** (bits - 1)
    stored = np.clip(stored, 0, 2**bits - 1)
    if photometric == "MONOCHROME1":
        stored = (2**bits - 1) - stored
    if "RescaleSlope" in ds or "RescaleIntercept" in ds:
        meta["rescale"] = [float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))]
    target_bits = 16 if bits > 8 else 8
    shift = target_bits - bits
    meta.update(window_applied=False, significant_bits=bits)
    return (stored << shift).astype(np.uint16 if target_bits == 16 else np.uint8)


def _colour(ds: Any, pixels: np.ndarray, photometric: str, meta: dict[str, Any]) -> np.ndarray:
    from pydicom.pixels import apply_color_lut, convert_color_space

    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(pixels, ds)
        if rgb.dtype != np.uint8:  # palette entries are display values; 8 bits is their working precision
            rgb = (rgb.astype(np.uint32) >> 8).astype(np.uint8)
        meta["palette_applied"] = True
        return rgb
    if photometric.startswith("YBR") and photometric not in ("YBR_ICT", "YBR_RCT"):
        pixels = convert_color_space(pixels, photometric, "RGB")
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise RejectError(f"unsupported DICOM photometric interpretation {photometric} with shape {pixels.shape}")
    if pixels.dtype.itemsize > 1:
        raise RejectError(
            f"{meta['bits_stored']}-bit colour DICOM: the shard format keeps colour at 8 bits; convert it first"
        )
    return pixels.astype(np.uint8)
