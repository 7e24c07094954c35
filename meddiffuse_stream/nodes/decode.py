"""The decode stage: a raw sample's members to arrays — image, label, optional ROI and metadata.

Only known members are decoded (``png``/``jpg`` images, ``cls`` labels, ``json`` objects, ``roi.png`` masks);
anything else — ``.pyd``, ``.pickle``, whatever its name — is ignored, never unpickled.
"""

from __future__ import annotations

import io
import json
import struct
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from .tar import RawSample

__all__ = ["DecodeOptions", "SampleError", "decode_sample"]

_IMAGE_SUFFIXES = ("png", "jpg", "jpeg")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

try:  # optional fast path (the "torch" extra installs it)
    import pyspng as _spng
except ImportError:  # pragma: no cover - PIL decodes everything, only slower
    _spng = None


class SampleError(ValueError):
    """A sample that cannot be decoded; the message names the key, ``kind`` buckets it for the counters."""

    def __init__(self, message: str, kind: str = "bad sample") -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class DecodeOptions:
    num_classes: int | None = None
    with_roi: bool = False
    with_meta: bool = False
    max_pixels: int = 100_000_000
    max_json_bytes: int = 1 << 20


def _reject_constant(name: str) -> float:
    raise ValueError(f"non-finite number {name} in JSON")


def _image(data: bytes, key: str, suffix: str, max_pixels: int) -> np.ndarray:
    deep_colour = _deep_colour_png(data)
    if deep_colour and _spng is None:
        raise SampleError(f"{key}.{suffix}: a 16-bit colour PNG needs pyspng (pip install 'meddiffuse-stream[torch]');"
                          " Pillow would keep only 8 bits of it", "unreadable image")  # fmt: skip
    if _spng is not None and (deep_colour or _plain_8_bit_png(data)):
        width, height = struct.unpack(">II", data[16:24])
        if width * height > max_pixels:
            raise SampleError(f"{key}.{suffix}: {width}x{height} is over the pixel limit ({max_pixels})",
                              "too many pixels")  # fmt: skip
        try:
            array = _spng.load(data)
        except Exception as error:
            raise SampleError(f"{key}.{suffix}: not a readable image ({error})", "unreadable image") from error
        if deep_colour:
            array = array[..., :3]  # libspng returns 16-bit colour as RGBA16
        return array[None] if array.ndim == 2 else np.ascontiguousarray(array.transpose(2, 0, 1))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if image.width * image.height > max_pixels:
                    raise SampleError(f"{key}.{suffix}: {image.width}x{image.height} is over the pixel limit "
                                      f"({max_pixels})", "too many pixels")  # fmt: skip
                image.load()
                if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                    array = np.asarray(image).astype(np.uint16)
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


def _plain_8_bit_png(data: bytes) -> bool:
    """8-bit grey or RGB, not interlaced: what libspng decodes ~2x faster than PIL (everything else goes to PIL)."""
    return len(data) > 33 and data[:8] == _PNG_SIGNATURE and data[24] == 8 and data[25] in (0, 2) and data[28] == 0


def _deep_colour_png(data: bytes) -> bool:
    """16-bit RGB or RGBA: Pillow reads these as 8-bit RGB, so they go to libspng."""
    return len(data) > 33 and data[:8] == _PNG_SIGNATURE and data[24] == 16 and data[25] in (2, 6)


def _grey_palette(image: Image.Image) -> bool:
    palette = np.asarray(image.getpalette() or [0, 0, 0]).reshape(-1, 3)
    return bool((palette == palette[:, :1]).all())


def decode_sample(raw: RawSample, options: DecodeOptions) -> dict[str, Any]:
    """``{"key", "image" (C, H, W) uint8/uint16, "label", "roi"?, "meta"?}``; :class:`SampleError` if unusable."""
    key = raw.key
    suffix = next((s for s in _IMAGE_SUFFIXES if s in raw.members), None)
    if suffix is None:
        raise SampleError(f"{key}: no image member (.png or .jpg) among {sorted(raw.members)}", "no image")
    if "cls" not in raw.members:
        raise SampleError(f"{key}: missing .cls label member", "missing label")
    try:
        label = int(raw.members["cls"].decode("ascii").strip())
    except (UnicodeDecodeError, ValueError) as error:
        raise SampleError(f"{key}.cls: label {raw.members['cls'][:20]!r} is not an integer", "bad label") from error
    if label < 0 or (options.num_classes is not None and label >= options.num_classes):
        raise SampleError(
            f"{key}.cls: label {label} is outside 0..{(options.num_classes or 1) - 1}", "label out of range"
        )
    sample: dict[str, Any] = {
        "key": key,
        "label": label,
        "image": _image(raw.members[suffix], key, suffix, options.max_pixels),
    }
    if options.with_roi and "roi.png" in raw.members:
        roi = _image(raw.members["roi.png"], key, "roi.png", options.max_pixels)
        if roi.shape[1:] != sample["image"].shape[1:]:
            raise SampleError(
                f"{key}.roi.png: mask {roi.shape[1:]} does not match image {sample['image'].shape[1:]}", "roi mismatch"
            )
        sample["roi"] = (roi[:1] > 0).astype(np.uint8)
    if options.with_meta:
        text = raw.members.get("json", b"{}")
        if len(text) > options.max_json_bytes:
            raise SampleError(
                f"{key}.json: {len(text)} bytes is over the {options.max_json_bytes}-byte limit", "json too large"
            )
        try:
            meta = json.loads(text, parse_constant=_reject_constant)
        except (ValueError, UnicodeDecodeError) as error:
            raise SampleError(f"{key}.json: not valid JSON ({error})", "bad json") from error
        if not isinstance(meta, dict):
            raise SampleError(f"{key}.json: expected an object, got {type(meta).__name__}", "json not an object")
        sample["meta"] = meta
    return sample
