"""The decode stage: a raw sample's members to arrays — image, label, optional ROI and metadata.

Only known members are decoded: images (``png jpg jpeg webp tif tiff``, 16-bit grey kept), labels (``cls class
label txt``, or a field of the ``json`` member), ``json`` objects, ``roi.png`` masks and ``rois.png`` per-finding
masks; anything else — ``.pyd``,
``.pickle``, whatever its name — is ignored, never unpickled. ``image_key`` and ``label_key`` pick members
where a sample holds several (the conventions of WebDataset data written by others).
"""

from __future__ import annotations

import io
import json
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from ..options import LabelOptions
from ..shardfmt.depth import DEEP_COLOUR_TIFF, is_deep_colour_tiff, png_16_bit_kind
from ..shardfmt.labels import parse_label_vector, sample_findings
from ..shardfmt.members import META, READ_IMAGE_SUFFIXES, READ_LABEL_SUFFIXES, ROI, ROIS, ROIS_MAX_FINDINGS
from ..shardfmt.png import decode_png_16
from ..shardfmt.rois import unpack_finding_rois
from ..shardfmt.safejson import loads_limited
from ..shardfmt.tar import RawSample

__all__ = [
    "IMAGE_SUFFIXES",
    "LABEL_SUFFIXES",
    "MAX_LABEL",
    "DecodeOptions",
    "SampleError",
    "check_member_keys",
    "decode_plain_png",
    "decode_sample",
    "spng_decoder",
]

IMAGE_SUFFIXES = READ_IMAGE_SUFFIXES
LABEL_SUFFIXES = READ_LABEL_SUFFIXES
MAX_LABEL = (1 << 62) - 1  # a class index, where no class count bounds it: fits int64 with room (and the fast path)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

try:  # optional fast path (the "torch" extra installs it)
    import pyspng as _spng
except ImportError:  # pragma: no cover - PIL decodes everything, only slower
    _spng = None
try:  # pyspng.load without its per-call wrapper (a dict and a reshape: ~1 µs of a 64 px image's ~65)
    from pyspng._pyspng_c import SPNG_FMT_AUTO as _AUTO
    from pyspng._pyspng_c import spng_decode_image_bytes as _spng_decode
except ImportError:  # pragma: no cover - another pyspng layout: the public wrapper
    _spng_decode = None


class SampleError(ValueError):
    """A sample that cannot be decoded; the message names the key, ``kind`` buckets it for the counters."""

    def __init__(self, message: str, kind: str = "bad sample") -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class DecodeOptions:
    """What to decode. ``image_key``: the image member's suffix (``"jpg"``, ``"seg.png"``; default the first of
    :data:`IMAGE_SUFFIXES` present). ``label_key``: the label member's suffix, or ``"json:FIELD"`` (a dotted path
    into the ``.json`` member; default the first of :data:`LABEL_SUFFIXES` present). Text labels that are not
    integers are looked up in ``class_names``. ``labels`` says what a label is (:class:`~..options.LabelOptions`):
    a class, a float32 finding vector from ``labels.json`` / ``.npy`` (and its mask, all ones where a sample has
    none), or none at all."""

    num_classes: int | None = None
    with_roi: bool = False
    with_meta: bool = False
    max_pixels: int = 100_000_000
    max_json_bytes: int = 1 << 20
    image_key: str | None = None
    label_key: str | None = None
    class_names: tuple[str, ...] = ()
    labels: LabelOptions = field(default_factory=LabelOptions)


def check_member_keys(image_key: str | None, label_key: str | None) -> None:
    """``ValueError`` for ``image_key``/``label_key`` values no sample could match (checked before any read)."""
    for name, value in (("image_key", image_key), ("label_key", label_key)):
        if value is not None and (not isinstance(value, str) or not value.strip(".") or "/" in value):
            raise ValueError(f"{name}={value!r}: expected a member suffix such as 'png' or 'cls'")
    if label_key is not None and label_key.startswith("json:") and not label_key[5:].strip("."):
        raise ValueError(f"label_key={label_key!r}: name the JSON field, e.g. 'json:label' or 'json:finding.class'")


def _image(data: bytes, key: str, suffix: str, max_pixels: int) -> np.ndarray:
    plain = _plain_8_bit_png(data)  # the common case first: one check per sample
    deep = None if plain else png_16_bit_kind(data)  # 16-bit colour or grey+alpha: Pillow would keep 8 bits
    if deep is not None and _spng is None:
        raise SampleError(
            f"{key}.{suffix}: a 16-bit PNG ({deep}) needs pyspng (pip install 'meddiffuse-stream[torch]');"
            " Pillow would keep only 8 bits of it",
            "unreadable image",
        )
    if _spng is not None and (plain or deep is not None):
        width, height = struct.unpack(">II", data[16:24])
        if width * height > max_pixels:
            raise SampleError(
                f"{key}.{suffix}: {width}x{height} is over the pixel limit ({max_pixels})", "too many pixels"
            )
        try:
            array = decode_png_16(data) if deep is not None else _spng.load(data)  # as the converter decodes it
        except Exception as error:
            raise SampleError(f"{key}.{suffix}: not a readable image ({error})", "unreadable image") from error
        return array[None] if array.ndim == 2 else np.ascontiguousarray(array.transpose(2, 0, 1))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if image.width * image.height > max_pixels:
                    raise SampleError(
                        f"{key}.{suffix}: {image.width}x{image.height} is over the pixel limit ({max_pixels})",
                        "too many pixels",
                    )
                image.load()
                if is_deep_colour_tiff(image):  # refused, as the converter refuses it: never cut to 8 bits
                    raise SampleError(f"{key}.{suffix}: {DEEP_COLOUR_TIFF}", "unsupported image")
                if image.mode == "I":  # 32-bit integers (some TIFFs, 16-bit PNGs): kept if they fit 16 bits
                    wide = np.asarray(image)
                    if wide.size and (wide.min() < 0 or wide.max() > 65535):
                        raise SampleError(
                            f"{key}.{suffix}: values {wide.min()}..{wide.max()} do not fit 16 bits", "unsupported image"
                        )
                    array = wide.astype(np.uint16)
                elif image.mode in ("I;16", "I;16B", "I;16L"):
                    array = np.asarray(image).astype(np.uint16)
                elif image.mode == "F":
                    raise SampleError(
                        f"{key}.{suffix}: floating-point pixels are not read (store 8 or 16 bits)", "unsupported image"
                    )
                elif image.mode in ("L", "RGB"):
                    array = np.asarray(image)
                elif image.mode in ("1", "LA") or (image.mode == "P" and _grey_palette(image)):
                    array = np.asarray(image.convert("L"))
                else:
                    array = np.asarray(image.convert("RGB"))
    except SampleError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise SampleError(f"{key}.{suffix}: image is over the pixel limit ({error})", "too many pixels") from error
    except Exception as error:
        raise SampleError(
            f"{key}.{suffix}: not a readable image ({type(error).__name__}: {error})", "unreadable image"
        ) from error
    return array[None] if array.ndim == 2 else np.ascontiguousarray(array.transpose(2, 0, 1))


def decode_plain_png(data: bytes, max_pixels: int) -> np.ndarray | None:
    """A plain 8-bit grey or RGB PNG (see :func:`_plain_8_bit_png`) as a ``(C, H, W)`` uint8 view, or ``None``
    for anything else — another kind of image, too many pixels, no pyspng, bytes libspng refuses — which
    :func:`decode_sample` then decodes or names. The fused batch stage's fast path: no per-sample dict, no copy."""
    if _spng is None or not _plain_8_bit_png(data):
        return None
    width, height = struct.unpack(">II", data[16:24])
    if width * height > max_pixels:
        return None
    try:
        pixels = _spng_decode(data, _AUTO) if _spng_decode is not None else _spng.load(data)
    except Exception:  # decode_sample decodes it again and names the problem
        return None
    return pixels.transpose(2, 0, 1) if pixels.ndim == 3 else pixels[None]


def spng_decoder() -> tuple[Callable[[bytes, int], np.ndarray], int] | None:
    """libspng's whole-image decode without pyspng's wrapper, and the format argument that keeps a PNG's own
    channels: ``decode(data, fmt)`` gives ``(H, W, C)`` uint8 for a plain 8-bit PNG. ``None`` without it."""
    return None if _spng_decode is None else (_spng_decode, _AUTO)


def _plain_8_bit_png(data: bytes) -> bool:
    """8-bit grey or RGB, not interlaced: what libspng decodes ~2x faster than PIL (everything else goes to PIL)."""
    return len(data) > 33 and data[:8] == _PNG_SIGNATURE and data[24] == 8 and data[25] in (0, 2) and data[28] == 0


def _grey_palette(image: Image.Image) -> bool:
    palette = np.asarray(image.getpalette() or [0, 0, 0]).reshape(-1, 3)
    return bool((palette == palette[:, :1]).all())


def _member(raw: RawSample, key: str | None, choices: tuple[str, ...]) -> str | None:
    members = raw.members
    if key is not None:
        return key if key in members else None
    if choices[0] in members:  # the common case (png, cls) without a scan
        return choices[0]
    return next((s for s in choices[1:] if s in members), None)


def _json(raw: RawSample, options: DecodeOptions) -> Any:
    text = raw.members.get(META, b"{}")
    if len(text) > options.max_json_bytes:
        raise SampleError(
            f"{raw.key}.json: {len(text)} bytes is over the {options.max_json_bytes}-byte limit", "json too large"
        )
    try:
        return loads_limited(text, max_bytes=options.max_json_bytes)
    except ValueError as error:  # never RecursionError: nesting is limited before parsing
        raise SampleError(f"{raw.key}.json: {error}", "json too deep" if "deep" in str(error) else "bad json") from None


def _label(raw: RawSample, options: DecodeOptions, meta: Any) -> int:
    key = raw.key
    if options.label_key is not None and options.label_key.startswith("json:"):
        field_path = options.label_key[5:]
        value: Any = meta if meta is not None else _json(raw, options)
        for part in field_path.split("."):
            if not isinstance(value, dict) or part not in value:
                raise SampleError(
                    f"{key}.json: no field {field_path!r} (label_key={options.label_key!r})", "missing label"
                )
            value = value[part]
        where = f"{key}.json:{field_path}"
    else:
        suffix = _member(raw, options.label_key, LABEL_SUFFIXES)
        if suffix is None:
            if options.label_key:
                raise SampleError(f"{key}: missing label: no .{options.label_key} member (label_key=)", "missing label")
            raise SampleError(
                f"{key}: missing label: no .cls, .class, .label or .txt member (label_key= picks "
                "another member or a JSON field)",
                "missing label",
            )
        value, where = raw.members[suffix], f"{key}.{suffix}"
    if isinstance(value, (bytes, str)):  # a member's text (the hot path) or a JSON string
        try:
            label = int(value)  # ASCII digits with spaces around: "1", b" 2\n"
        except ValueError:
            label = _class_index(value, where, options)
    elif isinstance(value, int) and not isinstance(value, bool):
        label = value
    else:
        raise SampleError(f"{where}: label {value!r:.40} is not an integer", "bad label")
    top = options.num_classes - 1 if options.num_classes is not None else MAX_LABEL
    if not 0 <= label <= top:  # any width: a label of 300 digits is out of range, never an overflow later
        digits = str(label)
        shown = digits if len(digits) <= 24 else f"{digits[:20]}... ({len(digits)} digits)"
        hint = "" if options.num_classes is not None else " (a class index; num_classes= bounds it tighter)"
        raise SampleError(f"{where}: label {shown} is outside 0..{top}{hint}", "label out of range")
    return label


def _findings(raw: RawSample, options: DecodeOptions, meta: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """A multi-label sample's vector and mask (see :func:`~meddiffuse_stream.shardfmt.labels.sample_findings`); a
    ``json:FIELD`` label_key takes a list of numbers or finding names from the ``.json`` member."""
    try:
        if options.label_key is not None and options.label_key.startswith("json:"):
            field_path = options.label_key[5:]
            value: Any = meta if meta is not None else _json(raw, options)
            for part in field_path.split("."):
                if not isinstance(value, dict) or part not in value:
                    raise SampleError(f"{raw.key}.json: no field {field_path!r} (label_key=)", "missing label")
                value = value[part]
            data = json.dumps(value).encode()
            return parse_label_vector(data, "json", options.class_names, f"{raw.key}.json:{field_path}"), None
        return sample_findings(raw.members, raw.key, options.class_names, options.label_key)
    except SampleError:
        raise
    except ValueError as error:
        kind = "missing label" if "missing label" in str(error) else "bad label"
        raise SampleError(str(error), kind) from None


def _class_index(text: bytes | str, where: str, options: DecodeOptions) -> int:
    """A label that is not an integer: its position in ``class_names``, or a "bad label" error."""
    name = (text.decode("utf-8", "replace") if isinstance(text, bytes) else text).strip()
    if name in options.class_names:
        return options.class_names.index(name)
    suffix = " nor a class name" if options.class_names else ""
    raise SampleError(f"{where}: label {text[:20]!r} is not an integer{suffix}", "bad label")


def decode_sample(raw: RawSample, options: DecodeOptions) -> dict[str, Any]:
    """``{"key", "image" (C, H, W) uint8/uint16, "label", "roi"?, "meta"?}``; :class:`SampleError` if unusable."""
    key = raw.key
    suffix = _member(raw, options.image_key, IMAGE_SUFFIXES)
    if suffix is None:
        wanted = f".{options.image_key}" if options.image_key else "(." + ", .".join(IMAGE_SUFFIXES) + ")"
        raise SampleError(f"{key}: no image member {wanted} among {sorted(raw.members)}", "no image")
    meta = None
    if options.with_meta:
        meta = _json(raw, options)
        if not isinstance(meta, dict):
            raise SampleError(f"{key}.json: expected an object, got {type(meta).__name__}", "json not an object")
    sample: dict[str, Any] = {"key": key}
    if options.labels.kind == "class":
        sample["label"] = _label(raw, options, meta)
    elif options.labels.kind == "findings":
        sample["label"], mask = _findings(raw, options, meta)
        if options.labels.mask:
            sample["label_mask"] = mask if mask is not None else np.ones_like(sample["label"])
    sample["image"] = _image(raw.members[suffix], key, suffix, options.max_pixels)
    if options.with_roi and ROI in raw.members:
        roi = _image(raw.members[ROI], key, ROI, options.max_pixels)
        if roi.shape[1:] != sample["image"].shape[1:]:
            raise SampleError(
                f"{key}.roi.png: mask {roi.shape[1:]} does not match image {sample['image'].shape[1:]}", "roi mismatch"
            )
        sample["roi"] = (roi[:1] > 0).astype(np.uint8)
    if options.with_roi and ROIS in raw.members:  # per-finding ROIs (multi-label): (C, H, W) 0/1
        bits = _image(raw.members[ROIS], key, ROIS, options.max_pixels)
        if bits.shape != (1, *sample["image"].shape[1:]):
            raise SampleError(
                f"{key}.{ROIS}: mask {bits.shape} does not match image {sample['image'].shape[1:]}", "roi mismatch"
            )
        try:
            findings = len(options.class_names) or ROIS_MAX_FINDINGS
            sample["rois"] = unpack_finding_rois(bits[0], findings, f"{key}.{ROIS}")
        except ValueError as error:
            raise SampleError(str(error), "roi mismatch") from None
    if meta is not None:
        sample["meta"] = meta
    return sample
