"""DICOM pixels as a PACS viewer shows them, stored at full depth.

* Size first: rows × columns (× the frames kept) is checked against the pixel limit from the header, before any
  pixel is decoded; a deflated data set is inflated no further than its header declares.
* Frames: ``--frames middle`` (the default) keeps frame ``(N - 1) // 2`` of an N-frame file, ``all`` keeps every
  frame as its own sample, ``reject`` refuses multi-frame files.
* Grey: the Modality LUT (rescale slope/intercept) and then the first VOI LUT or window are applied, as viewers do,
  and the window's output is mapped onto the full 8 or 16 bits; MONOCHROME1 is inverted. A window a viewer would
  ignore — width below 1 (LINEAR; 0 or less for LINEAR_EXACT and SIGMOID), such as the ``0/0`` many MR exports
  carry — is ignored here too and counted in the summary. Without a usable VOI the stored values are kept
  bit-exactly, shifted into the high bits as PNG does (``significant_bits`` says by how much).
* Colour: decoded into RGB once, by pydicom's decoder (YBR_FULL, YBR_FULL_422, YBR_ICT, YBR_RCT); PALETTE COLOR
  through its lookup table — 8-bit when the table's 16-bit entries only repeat 8 bits, else 16-bit; 16-bit RGB is
  kept at 16 bits; more than 16 bits per channel is rejected with that reason.
* Files without the 128-byte preamble (written by old modalities) are read when they hold pixel data.
"""

from __future__ import annotations

import io
import math
import zlib
from typing import Any

import numpy as np

from .base import DEFAULT_MAX_PIXELS, LoadedImage, RejectError
from .dicom_colour import colour_pixels

__all__ = ["dicom_from_bytes", "is_dicom", "voi_of"]

_HEADER_PROBE = 1 << 20  # inflate this much of a deflated data set to read its header
_SLACK = 16 << 20  # bytes a data set may hold beyond its pixels (overlays, private tags)


def is_dicom(data: bytes) -> bool:
    """True for files carrying the DICOM preamble magic."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def dicom_from_bytes(
    data: bytes, *, apply_window: bool = True, frames: str = "middle", max_pixels: int = DEFAULT_MAX_PIXELS
) -> LoadedImage:
    """Decode one DICOM; everything that cannot be stored faithfully is a :class:`RejectError`."""
    if not data:
        raise RejectError("zero-byte file")
    try:
        return _decode(data, apply_window, frames, max_pixels)
    except (RejectError, MemoryError):
        raise
    except Exception as error:  # pydicom reads damaged elements lazily: any failure there is a damaged file
        raise RejectError(f"damaged DICOM ({type(error).__name__}: {' '.join(str(error).split())[:300]})") from error


def _decode(data: bytes, apply_window: bool, frames: str, max_pixels: int) -> LoadedImage:
    ds = _read(data, max_pixels)
    if "PixelData" not in ds:
        raise RejectError("DICOM without pixel data (PixelData element missing)")
    if "Rows" not in ds or "Columns" not in ds:
        raise RejectError("DICOM pixel data without Rows / Columns")
    rows, columns = int(ds.Rows), int(ds.Columns)
    count = int(ds.get("NumberOfFrames", 1) or 1)
    if rows * columns > max_pixels:
        raise RejectError(f"DICOM of {columns}x{rows} pixels is over the limit of {max_pixels} (--max-pixels)")
    indices = _frame_indices(count, frames, rows * columns, max_pixels)
    syntax = ds.file_meta.TransferSyntaxUID
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    meta: dict[str, Any] = {
        "modality": str(ds.get("Modality", "")),
        "photometric": photometric,
        "bits_stored": int(ds.get("BitsStored", 0) or 0),
        "transfer_syntax": str(syntax),
    }
    notes: list[str] = []
    if count > 1:
        meta["frames"] = count
        notes.append(f"multi-frame DICOM: {'middle frame' if frames == 'middle' else 'every frame'} kept")
        if frames == "middle":
            meta["frame_index"] = indices[0]
    images = []
    for index in indices:
        pixels, decoded_as = _pixels(ds, syntax, index if count > 1 else None)
        if decoded_as in ("MONOCHROME1", "MONOCHROME2"):
            images.append(_grey(ds, pixels, decoded_as, apply_window, meta, notes))
        else:
            images.append(colour_pixels(ds, pixels, decoded_as, meta, notes))
    return LoadedImage(images[0], meta=meta, frames=images if len(images) > 1 else None, notes=sorted(set(notes)))


def _frame_indices(count: int, frames: str, per_frame: int, max_pixels: int) -> list[int]:
    if count <= 1:
        return [0]
    if frames == "reject":
        raise RejectError(f"multi-frame DICOM ({count} frames): --frames reject refuses multi-frame files")
    if frames == "middle":
        return [(count - 1) // 2]
    if per_frame * count > max_pixels:
        raise RejectError(
            f"multi-frame DICOM of {count} frames, {per_frame * count} pixels in all, is over the limit "
            f"of {max_pixels} (--max-pixels); use --frames middle"
        )
    return list(range(count))


# --- reading the data set ---------------------------------------------------------------------------------------


def _read(data: bytes, max_pixels: int) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    if is_dicom(data):
        meta, body_at = _file_meta(data)
        if meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
            ds = _read_deflated(data, meta, body_at, max_pixels)
        else:
            try:
                ds = pydicom.dcmread(io.BytesIO(data))
            except InvalidDicomError as error:
                raise RejectError(f"not a DICOM file ({' '.join(str(error).split())})") from error
        if "SOPClassUID" not in ds and "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
            raise RejectError("not a DICOM file (neither a SOP class nor a transfer syntax after the header)")
    else:  # no preamble: an old-style file written straight from the data set
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
            usable = "PixelData" in ds and "Rows" in ds
        except Exception:
            usable = False
        if not usable:
            raise RejectError(
                "not a DICOM file with pixel data (no DICM preamble, and no pixel data when read as a headerless one)"
            )
    _ensure_transfer_syntax(ds)
    return ds


def _file_meta(data: bytes) -> tuple[Any, int]:
    from pydicom.filereader import _read_file_meta_info, read_preamble  # the meta group alone: nothing inflated

    stream = io.BytesIO(data)
    read_preamble(stream, False)
    return _read_file_meta_info(stream), stream.tell()


def _read_deflated(data: bytes, meta: Any, body_at: int, max_pixels: int) -> Any:
    """A deflated data set, inflated in bounded steps: the header first (1 MiB, then 4x more until it parses), then
    no more than the header declares. A header over the limit stops it before the pixels are inflated."""
    from pydicom.dataset import FileDataset
    from pydicom.filereader import read_dataset

    body = data[body_at:]
    limit = 6 * max_pixels + 4 * _SLACK  # 16-bit RGB at the pixel limit: the most a header could justify
    probe_size = _HEADER_PROBE
    while True:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        probe = inflater.decompress(body, probe_size)
        header = _parse_header(probe)
        if (header is not None and "Rows" in header) or not inflater.unconsumed_tail or probe_size >= limit:
            break
        probe_size *= 4
    if header is not None and "Rows" in header and "Columns" in header:
        rows, columns = int(header.Rows), int(header.Columns)
        if rows * columns > max_pixels:
            raise RejectError(f"DICOM of {columns}x{rows} pixels is over the limit of {max_pixels} (--max-pixels)")
        frames = int(header.get("NumberOfFrames", 1) or 1)
        samples = int(header.get("SamplesPerPixel", 1) or 1)
        bits = int(header.get("BitsAllocated", 16) or 16)
        limit = rows * columns * frames * samples * math.ceil(bits / 8) + _SLACK
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    inflated = inflater.decompress(body, limit)
    if inflater.unconsumed_tail:
        raise RejectError(f"deflated DICOM inflates to more than {limit} bytes, beyond what its header declares")
    dataset = read_dataset(io.BytesIO(inflated), False, True)
    result = FileDataset("", dataset, preamble=data[:128], file_meta=meta)
    result.set_original_encoding(False, True)
    return result


def _parse_header(probe: bytes) -> Any:
    """The elements before PixelData in a (possibly cut) inflated prefix, or ``None`` if it does not parse."""
    import warnings

    from pydicom.filereader import read_dataset

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return read_dataset(io.BytesIO(probe), False, True, stop_when=lambda tag, *_: tag == 0x7FE00010)
    except Exception:
        return None


def _ensure_transfer_syntax(ds: Any) -> None:
    """Headerless files (and some broken ones) lack the transfer syntax: take the encoding the reader found."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    if not hasattr(ds, "file_meta") or ds.file_meta is None:
        ds.file_meta = FileMetaDataset()
    if ds.file_meta.get("TransferSyntaxUID"):
        return
    implicit, little = ds.original_encoding
    if implicit is None:
        raise RejectError("DICOM without a transfer syntax, and its encoding cannot be told from the data")
    ds.file_meta.TransferSyntaxUID = (
        ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    )


def _pixels(ds: Any, syntax: Any, index: int | None) -> tuple[np.ndarray, str]:
    """One frame (or the only one), with the colour space the decoder returned it in."""
    from pydicom.pixels import as_pixel_options, get_decoder

    name = getattr(syntax, "name", str(syntax))
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as error:
        raise RejectError(f"transfer syntax '{name}' ({syntax}) has no pixel decoder in pydicom") from error
    if not decoder.is_available:
        raise RejectError(
            f"no codec installed for transfer syntax '{name}': pip install 'meddiffuse-stream[dicom]' "
            f"(it brings pylibjpeg-openjpeg, python-gdcm and pyjpegls); missing: {_missing(decoder)}"
        )
    try:
        pixels, info = decoder.as_array(ds, index=index, raw=False, **as_pixel_options(ds))
    except Exception as error:
        message = " ".join(str(error).split())
        hint = ""
        if "12-bit" in message or "precision" in message:
            hint = (
                "; 12-bit JPEG needs pylibjpeg-libjpeg, which is GPL-3.0 and so not in the dicom extra: "
                "install it yourself if its licence suits you"
            )
        raise RejectError(f"pixel data cannot be decoded ({name}): {message[:300]}{hint}") from error
    return pixels, str(info.get("photometric_interpretation", ds.get("PhotometricInterpretation", ""))).strip()


def _missing(decoder: Any) -> str:
    missing = getattr(decoder, "missing_dependencies", [])
    return "; ".join(missing) if missing else "a plugin"


# --- grey -------------------------------------------------------------------------------------------------------


def voi_of(ds: Any) -> tuple[str | None, Any]:
    """The VOI transform a viewer would apply: ``("lut", item)``, ``("window", (centre, width, function))``, or
    ``(None, reason)`` — reason ``None`` when the file has no VOI, else why its window is ignored."""
    sequence = ds.get("VOILUTSequence")
    if sequence:
        item = sequence[0]
        if "LUTDescriptor" in item and "LUTData" in item:
            return "lut", item
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


def _grey(
    ds: Any, pixels: np.ndarray, photometric: str, apply_window: bool, meta: dict[str, Any], notes: list[str]
) -> np.ndarray:
    bits = meta["bits_stored"] or pixels.dtype.itemsize * 8
    if bits > 16:
        raise RejectError(f"{bits} stored bits: the shard format keeps at most 16; rescale the source first")
    target_bits = 16 if bits > 8 else 8
    top = 2**target_bits - 1
    dtype = np.uint16 if target_bits == 16 else np.uint8
    kind, voi = voi_of(ds) if apply_window else (None, None)
    if kind is None and voi is not None:
        notes.append(voi)
        meta["window_ignored"] = voi.split("(", 1)[1].split(")", 1)[0]
    if kind is not None:
        from pydicom.pixels import apply_modality_lut, apply_voi

        values = apply_modality_lut(pixels, ds)  # stored values -> modality units (HU for CT), as viewers do
        if kind == "lut":
            out_bits = int(voi.LUTDescriptor[2]) or 16
            unit = np.clip(apply_voi(values, ds, index=0).astype(np.float64) / (2**out_bits - 1), 0.0, 1.0)
        else:
            unit = window_unit(values, *voi)
            meta["window"] = [voi[0], voi[1], voi[2]]
        scaled = np.rint(unit * top).astype(dtype)
        if photometric == "MONOCHROME1":
            scaled = (top - scaled).astype(dtype)
        meta.update(window_applied=True, significant_bits=target_bits)
        return scaled
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    stored = pixels.astype(np.int64)
    if signed:
        stored = stored + 2 ** (bits - 1)
        meta["pixel_offset"] = 2 ** (bits - 1)
    stored = np.clip(stored, 0, 2**bits - 1)
    if photometric == "MONOCHROME1":
        stored = (2**bits - 1) - stored
    if "RescaleSlope" in ds or "RescaleIntercept" in ds:
        meta["rescale"] = [float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)]
    meta.update(window_applied=False, significant_bits=bits)
    return (stored << (target_bits - bits)).astype(dtype)
