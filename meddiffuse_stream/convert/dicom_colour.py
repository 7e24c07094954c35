"""DICOM colour as stored in shards: RGB decoded once (pydicom's decoder converts YBR_FULL, YBR_FULL_422, YBR_ICT
and YBR_RCT itself), PALETTE COLOR through its table, 16-bit kept, more refused."""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import RejectError

__all__ = ["colour_pixels"]


def colour_pixels(ds: Any, pixels: np.ndarray, photometric: str, meta: dict[str, Any], notes: list[str]) -> np.ndarray:
    """RGB (8 or 16 bits) from the decoder's output in colour space ``photometric``."""
    if photometric == "PALETTE COLOR":
        return _palette(ds, pixels, meta, notes)
    if photometric in ("YBR_FULL", "YBR_FULL_422"):  # the decoder converts these itself; only a plugin that did not
        from pydicom.pixels import convert_color_space

        pixels = convert_color_space(pixels, photometric, "RGB")
    elif photometric != "RGB":
        raise RejectError(
            f"DICOM photometric interpretation {photometric} is not supported (RGB, YBR_FULL, "
            "YBR_FULL_422, YBR_ICT, YBR_RCT, PALETTE COLOR and MONOCHROME are)"
        )
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise RejectError(f"DICOM colour pixels of shape {pixels.shape}: expected rows x columns x 3")
    meta["decoded_as"] = "RGB"
    bits = meta["bits_stored"] or pixels.dtype.itemsize * 8
    if pixels.dtype.itemsize == 1 or bits <= 8:
        return pixels.astype(np.uint8)
    if bits > 16 or pixels.dtype.itemsize > 2:
        raise RejectError(
            f"{bits}-bit colour DICOM: the shard format keeps at most 16 bits per channel; convert it first"
        )
    meta["significant_bits"] = bits
    notes.append("16-bit colour kept at 16 bits")
    return (np.clip(pixels.astype(np.uint32), 0, 2**bits - 1) << (16 - bits)).astype(np.uint16)


def _palette(ds: Any, pixels: np.ndarray, meta: dict[str, Any], notes: list[str]) -> np.ndarray:
    from pydicom.pixels import apply_color_lut

    _check_palette(ds)
    _palette_to_native_order(ds)
    rgb = apply_color_lut(pixels, ds)
    meta["palette_applied"] = True
    if rgb.dtype == np.uint8:
        return rgb
    if not (rgb % 257).any():  # 8-bit entries stored as v * 257 (0x0000, 0x0101, ... 0xFFFF)
        return (rgb // 257).astype(np.uint8)
    if not (rgb % 256).any():  # 8-bit entries stored in the high byte
        return (rgb >> 8).astype(np.uint8)
    notes.append("16-bit palette kept at 16 bits")
    return rgb.astype(np.uint16)


def _check_palette(ds: Any) -> None:
    """Each colour's table must have a three-number descriptor and data (plain or segmented): else a reject
    naming the element, not a TypeError from deep inside the lookup."""
    for colour in ("Red", "Green", "Blue"):
        keyword = f"{colour}PaletteColorLookupTableDescriptor"
        descriptor = ds.get(keyword)
        values = list(descriptor) if descriptor is not None and hasattr(descriptor, "__iter__") else []
        if len(values) != 3 or not all(isinstance(v, int) for v in values):
            raise RejectError(
                f"PALETTE COLOR DICOM whose {keyword} is empty or not three numbers: the colours cannot be looked "
                "up; correct the element or export the image as RGB"
            )
        plain, segmented = (
            ds.get(f"{colour}PaletteColorLookupTableData"),
            ds.get(f"Segmented{colour}PaletteColorLookupTableData"),
        )
        if not plain and not segmented:
            raise RejectError(
                f"PALETTE COLOR DICOM without {colour}PaletteColorLookupTableData: the colours cannot be looked up; "
                "correct the file or export the image as RGB"
            )


def _palette_to_native_order(ds: Any) -> None:
    """pydicom 3.0 reads 16-bit (non-segmented) palette data in little-endian order whatever the transfer syntax:
    a big-endian file's colours come out byte-swapped (256 read as 1). Swap this in-memory copy's tables first."""
    _implicit, little = ds.original_encoding
    if little is not False or "RedPaletteColorLookupTableData" not in ds:
        return
    entries = int(ds.RedPaletteColorLookupTableDescriptor[0]) or 2**16
    for colour in ("Red", "Green", "Blue", "Alpha"):
        name = f"{colour}PaletteColorLookupTableData"
        data = ds.get(name)
        if data is not None and len(data) == 2 * entries:
            setattr(ds, name, np.frombuffer(data, ">u2").astype("<u2").tobytes())
