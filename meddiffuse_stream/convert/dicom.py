"""DICOM pixels as a PACS viewer shows them, stored at full depth.

* Size first: rows × columns (× the frames kept) is checked against the pixel limit from the header, before any
  pixel is decoded; a deflated data set is inflated no further than its header declares.
* Frames: ``--frames middle`` (the default) keeps frame ``(N - 1) // 2`` of an N-frame file, ``all`` keeps every
  frame as its own sample, ``reject`` refuses multi-frame files.
* Grey (:mod:`.dicom_grey`): the Modality LUT (rescale slope/intercept) and then the first VOI LUT or window are
  applied, as viewers do, and the window's output is mapped onto the full 8 or 16 bits; MONOCHROME1 is inverted.
  A rescale that is not finite or is zero is a reject naming the element. A window a viewer would ignore — width
  below 1 (LINEAR; 0 or less for LINEAR_EXACT and SIGMOID), such as the ``0/0`` many MR exports carry — and one
  that would map every pixel to one grey level are ignored here too and counted in the summary. Without a usable
  VOI the stored values are kept bit-exactly, shifted into the high bits as PNG does (``significant_bits``).
* Enhanced multi-frame files (:mod:`.dicom_groups`): each frame's rescale and window come from its per-frame
  functional group, else the shared one; ``functional_groups`` records which.
* Colour: decoded into RGB once, by pydicom's decoder (YBR_FULL, YBR_FULL_422, YBR_ICT, YBR_RCT); PALETTE COLOR
  through its lookup table — 8-bit when the table's 16-bit entries only repeat 8 bits, else 16-bit; 16-bit RGB is
  kept at 16 bits; more than 16 bits per channel is rejected with that reason.
* Files without the 128-byte preamble (written by old modalities) are read when they hold pixel data.
"""

from __future__ import annotations

import io
import math
import re
import warnings
import zlib
from typing import Any

import numpy as np

from .base import DEFAULT_MAX_PIXELS, LoadedImage, RejectError
from .dicom_colour import colour_pixels
from .dicom_grey import grey_pixels, voi_of, window_unit
from .dicom_groups import frame_view

__all__ = ["dicom_from_bytes", "is_dicom", "voi_of", "window_unit"]

_TAG = re.compile(r"\(([0-9A-Fa-f]{4}),([0-9A-Fa-f]{4})\)")

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
        raise RejectError(_damage(error)) from error


def _damage(error: BaseException) -> str:
    """A pydicom or numpy failure as a reason: the element it happened in (pydicom names its tag), what went
    wrong, and what to do."""
    text = " ".join(str(error).split())[:300]
    found = _TAG.search(text)
    element = ""
    if found:
        from pydicom.datadict import keyword_for_tag

        keyword = keyword_for_tag(int(found.group(1) + found.group(2), 16)) or "a private element"
        element = f" in {keyword} ({found.group(1)},{found.group(2)})"
    return (
        f"damaged DICOM{element} ({type(error).__name__}: {text}); pydicom could read the file but not use this "
        "element: correct or remove it (dcmodify, pydicom), or export the image again"
    )


def _positive(ds: Any, keyword: str, tag: str) -> int:
    """A count the pixel data is laid out by (Rows, Columns): a positive integer, else a reject naming it."""
    value = ds.get(keyword)
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        raise RejectError(
            f"DICOM {keyword} {tag} is {'empty' if value in (None, '') else repr(value)[:20]}: the "
            "pixel data cannot be laid out; correct the element"
        )
    return number


def _decode(data: bytes, apply_window: bool, frames: str, max_pixels: int) -> LoadedImage:
    ds = _read(data, max_pixels)
    if "PixelData" not in ds:
        for tag, keyword in ((0x7FE00008, "FloatPixelData"), (0x7FE00009, "DoubleFloatPixelData")):
            if tag in ds:
                raise RejectError(
                    f"DICOM with {keyword} ({tag >> 16:04X},{tag & 0xFFFF:04X}): float pixels (a parametric map, "
                    "say) — the shard format stores 8- or 16-bit integers; export the image with integer PixelData "
                    "(7FE0,0010)"
                )
        kind = getattr(ds.get("SOPClassUID"), "name", "")
        if "Image Storage" in kind:
            raise RejectError(
                f"DICOM without pixel data (PixelData element missing) although its SOP class is {kind}: the pixels "
                "were stripped or the file is cut short; copy or export it again"
            )
        what = f"a {kind}, not an image" if kind else "PixelData element missing"
        raise RejectError(f"DICOM without pixel data ({what})")
    if "Rows" not in ds or "Columns" not in ds:
        raise RejectError("DICOM pixel data without Rows / Columns")
    rows, columns = _positive(ds, "Rows", "(0028,0010)"), _positive(ds, "Columns", "(0028,0011)")
    count = _frame_count(ds)
    if rows * columns > max_pixels:
        raise RejectError(f"DICOM of {columns}x{rows} pixels is over the limit of {max_pixels} (--max-pixels)")
    _check_native_length(ds, rows, columns, count)
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
    settings = []
    for index in indices:
        pixels, decoded_as = _pixels(ds, syntax, index if count > 1 else None)
        if decoded_as in ("MONOCHROME1", "MONOCHROME2"):
            view, groups = frame_view(ds, index if count > 1 else None)
            frame_meta = dict(meta)
            images.append(grey_pixels(view, pixels, decoded_as, apply_window, frame_meta, notes))
            if groups is not None:
                frame_meta["functional_groups"] = groups
                notes.append(f"Enhanced DICOM: rescale and window from the {groups} functional groups")
            settings.append({k: frame_meta[k] for k in ("rescale", "window") if k in frame_meta})
            meta.update(frame_meta)
        else:
            images.append(colour_pixels(ds, pixels, decoded_as, meta, notes))
    if len(settings) > 1 and any(s != settings[0] for s in settings):  # frames that differ: each one's, in order
        meta.pop("rescale", None)
        meta.pop("window", None)
        meta["frame_settings"] = settings
    return LoadedImage(images[0], meta=meta, frames=images if len(images) > 1 else None, notes=sorted(set(notes)))


def _frame_count(ds: Any) -> int:
    value = ds.get("NumberOfFrames", 1)
    if value in (None, ""):
        return 1
    try:
        count = int(value)
    except (TypeError, ValueError):
        raise RejectError(f"DICOM NumberOfFrames (0028,0008) {str(value)[:20]!r} is not a number") from None
    if count < 1:
        raise RejectError(f"DICOM NumberOfFrames (0028,0008) is {count}: correct the element")
    return count


def _check_native_length(ds: Any, rows: int, columns: int, count: int) -> None:
    """Uncompressed pixel data must hold every frame its header declares: missing frames are named as such."""
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is None or getattr(syntax, "is_compressed", True):
        return
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples == 3 and str(ds.get("PhotometricInterpretation", "")).strip() == "YBR_FULL_422":
        samples = 2  # two chroma samples shared by each pair of pixels
    bits = int(ds.get("BitsAllocated", 0) or 0)
    if bits < 1:
        return  # the decoder names the missing element
    need = math.ceil(rows * columns * samples * count * bits / 8)
    have = len(ds.PixelData or b"")
    if have < need:
        frames = f"NumberOfFrames {count} x " if count > 1 else ""
        raise RejectError(
            f"DICOM PixelData holds {have} bytes but {frames}Rows {rows} x Columns {columns} x {samples} "
            f"sample(s) x {bits} bits need {need}: {'frames are missing' if count > 1 else 'the pixels are cut short'}"
            " (a truncated file, or a wrong NumberOfFrames / Rows / Columns); export the image again"
        )


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
                with warnings.catch_warnings(record=True) as heard:
                    warnings.simplefilter("always")
                    ds = pydicom.dcmread(io.BytesIO(data))
                if "PixelData" not in ds and any("End of file reached" in str(w.message) for w in heard):
                    raise RejectError(
                        "DICOM cut short: the file ends inside an element, before its pixel data; copy or export it "
                        "again"
                    )
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
