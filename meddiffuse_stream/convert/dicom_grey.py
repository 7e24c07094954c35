"""DICOM grey pixels as a viewer shows them, every number checked where it is read.

The Modality LUT (rescale slope / intercept, or a ModalityLUTSequence) and then the first VOI LUT or window are
applied, and the window's output is mapped onto the full 8 or 16 bits; MONOCHROME1 is inverted. A rescale that is
not a finite, non-zero number — or that overflows on this file's values — is a reject naming the element: it
would make a flat (all-black or all-white) image. A window a viewer would ignore (width below 1, not finite, an
unknown function), a VOI LUT without a usable table, and a window that maps every pixel to one grey level are
ignored here too and counted in the summary; without a usable VOI the stored values are kept bit-exactly, shifted
into the high bits as PNG does (``significant_bits`` says by how much).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .base import RejectError

__all__ = ["checked_rescale", "grey_pixels", "voi_of", "window_unit"]

_FLAT = "DICOM window ignored (it maps every pixel to one grey level): stored range kept"


def _number(ds: Any, keyword: str, tag: str, default: float) -> float:
    """One numeric element: its value, ``default`` when absent; empty or not a number is a reject naming it."""
    if keyword not in ds:
        return default
    value = ds[keyword].value
    value = value[0] if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else value
    if value is None or value == "":
        raise RejectError(f"DICOM {keyword} {tag} is present but empty: correct the element or remove it")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise RejectError(f"DICOM {keyword} {tag} is not a number: correct the element or remove it") from None


def checked_rescale(ds: Any, pixels: np.ndarray) -> tuple[float, float] | None:
    """``(slope, intercept)`` when the data set rescales, checked: finite, a non-zero slope, and finite results
    for this file's values. ``None`` when it has no rescale elements."""
    if "RescaleSlope" not in ds and "RescaleIntercept" not in ds:
        return None
    slope = _number(ds, "RescaleSlope", "(0028,1053)", 1.0)
    intercept = _number(ds, "RescaleIntercept", "(0028,1052)", 0.0)
    for keyword, value in (("RescaleSlope", slope), ("RescaleIntercept", intercept)):
        if not math.isfinite(value):
            raise RejectError(
                f"DICOM {keyword} is {value}: the modality LUT would make every pixel {value} (a flat image); "
                f"correct {keyword} or remove it"
            )
    if slope == 0:
        raise RejectError("DICOM RescaleSlope is 0: it maps every pixel to one value; correct RescaleSlope")
    if pixels.size:
        with np.errstate(over="ignore", invalid="ignore"):
            ends = np.array([pixels.min(), pixels.max()], dtype=np.float64) * slope + intercept
        if not np.isfinite(ends).all():
            raise RejectError(
                f"DICOM RescaleSlope {slope:g} and RescaleIntercept {intercept:g} give values that are not finite "
                "on this file's pixels (float overflow): correct the elements"
            )
    return slope, intercept


def voi_of(ds: Any, notes: list[str] | None = None) -> tuple[str | None, Any]:  # Any: a LUT item, a tuple or a note
    """The VOI transform a viewer would apply: ``("lut", item)``, ``("window", (centre, width, function))``, or
    ``(None, reason)`` — reason ``None`` when the file has no VOI, else why its window is ignored. A VOI LUT
    without a usable table is passed over (counted in ``notes``) for the window beside it, as viewers do."""
    sequence = ds.get("VOILUTSequence")
    if sequence:
        item = sequence[0]
        problem = _lut_problem(item)
        if problem is None:
            return "lut", item
        if notes is not None:
            notes.append(f"DICOM VOI LUT ignored ({problem})")
    if "WindowCenter" not in ds and "WindowWidth" not in ds:
        return None, None
    function = str(ds.get("VOILUTFunction", "") or "LINEAR").strip().upper()
    try:
        centre, width = float(_first(ds.get("WindowCenter"))), float(_first(ds.get("WindowWidth")))
    except (TypeError, ValueError):
        return None, "DICOM window ignored (centre or width missing or not a number): stored range kept"
    if not (math.isfinite(centre) and math.isfinite(width)):
        return None, "DICOM window ignored (not finite): stored range kept"
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        return None, f"DICOM window ignored (unknown VOI LUT function {function}): stored range kept"
    if width < 1 if function == "LINEAR" else width <= 0:
        return (
            None,
            f"DICOM window ignored (width {width:g} {'< 1' if function == 'LINEAR' else '<= 0'}): stored range kept",
        )
    return "window", (centre, width, function)


def _lut_problem(item: Any) -> str | None:
    """Why a LUT item (VOI or modality) cannot be applied, or ``None``."""
    descriptor = item.get("LUTDescriptor")
    values = list(descriptor) if isinstance(descriptor, (list, tuple)) or hasattr(descriptor, "__iter__") else []
    if len(values) != 3 or not all(isinstance(v, int) for v in values):
        return "LUTDescriptor empty or not three numbers"
    data = item.get("LUTData")
    if data is None or len(data) == 0:
        return "LUTData empty"
    if not 8 <= (values[2] or 16) <= 16:
        return f"LUTDescriptor gives {values[2]} bits per entry"
    return None


def _first(value: Any) -> Any:
    if value is None or value == "":
        return None
    return value[0] if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else value


def window_unit(values: np.ndarray, centre: float, width: float, function: str) -> np.ndarray:
    """The VOI window of PS3.3 C.11.2.1.2 with output range 0..1."""
    x = values.astype(np.float64)
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(np.clip(-4.0 * (x - centre) / width, -700, 700)))
    if function == "LINEAR_EXACT":
        return np.clip((x - centre) / width + 0.5, 0.0, 1.0)
    low, high = centre - 0.5 - (width - 1) / 2, centre - 0.5 + (width - 1) / 2
    inside = (x - (centre - 0.5)) / max(width - 1, 1e-12) + 0.5
    return np.where(x <= low, 0.0, np.where(x > high, 1.0, np.clip(inside, 0.0, 1.0)))


def _modality(ds: Any, pixels: np.ndarray) -> np.ndarray:
    """Stored values in modality units (HU for CT), as viewers compute them; a broken Modality LUT is a reject."""
    from pydicom.pixels import apply_modality_lut

    sequence = ds.get("ModalityLUTSequence")
    if sequence:
        problem = _lut_problem(sequence[0])
        if problem is not None:
            raise RejectError(
                f"DICOM ModalityLUTSequence has no usable table ({problem}): correct it, or convert with "
                "--no-window to keep the stored values"
            )
    return apply_modality_lut(pixels, ds)


def grey_pixels(
    ds: Any, pixels: np.ndarray, photometric: str, apply_window: bool, meta: dict[str, Any], notes: list[str]
) -> np.ndarray:
    """8- or 16-bit grey from one frame's stored values; ``ds`` holds that frame's rescale and VOI elements."""
    bits = meta["bits_stored"] or pixels.dtype.itemsize * 8
    if bits > 16:
        raise RejectError(f"{bits} stored bits: the shard format keeps at most 16; rescale the source first")
    target_bits = 16 if bits > 8 else 8
    top = 2**target_bits - 1
    dtype = np.uint16 if target_bits == 16 else np.uint8
    rescale = checked_rescale(ds, pixels)
    if rescale is not None:
        meta["rescale"] = list(rescale)
    kind: str | None
    voi: Any
    kind, voi = voi_of(ds, notes) if apply_window else (None, None)
    if kind is not None:
        from pydicom.pixels import apply_voi

        values = _modality(ds, pixels)
        if kind == "lut":
            out_bits = int(voi.LUTDescriptor[2]) or 16
            unit = np.clip(apply_voi(values, ds, index=0).astype(np.float64) / (2**out_bits - 1), 0.0, 1.0)
        else:
            unit = window_unit(values, *voi)
        scaled = np.rint(unit * top).astype(dtype)
        if scaled.min() == scaled.max() and pixels.min() != pixels.max():
            kind, voi = None, _FLAT  # a flat image says nothing: the stored values are kept instead
        else:
            if kind == "window":
                meta["window"] = [voi[0], voi[1], voi[2]]
            if photometric == "MONOCHROME1":
                scaled = (top - scaled).astype(dtype)
            meta.update(window_applied=True, significant_bits=target_bits)
            return scaled
    if voi is not None:
        notes.append(voi)
        meta["window_ignored"] = voi.split("(", 1)[1].split(")", 1)[0]
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    stored = pixels.astype(np.int64)
    if signed:
        stored = stored + 2 ** (bits - 1)
        meta["pixel_offset"] = 2 ** (bits - 1)
    stored = np.clip(stored, 0, 2**bits - 1)
    if photometric == "MONOCHROME1":
        stored = (2**bits - 1) - stored
    meta.update(window_applied=False, significant_bits=bits)
    return (stored << (target_bits - bits)).astype(dtype)
