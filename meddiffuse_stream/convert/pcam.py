"""PatchCamelyon: ``camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5``, read in row chunks, never whole.

The official files hold uint8 patches, stored as they are; uint16 patches are stored at 16 bits. Float patches
(from preprocessed copies) are scaled from their documented value range — the dataset's ``valid_range`` (or
``range``, or ``valid_min``/``valid_max``) attribute, or ``--float-range LO,HI`` — onto 8 bits when that is exact
(floats made from 8-bit values) and 16 bits otherwise; without a documented range, or with values outside it, a
patch is rejected with that reason, never guessed.
"""

from __future__ import annotations

import argparse
import csv
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..storage import Location
from .base import (
    DEFAULT_RULES,
    Discovery,
    LoadedImage,
    ReadRules,
    Reject,
    RejectError,
    SourceFormat,
    SourceItem,
    describe_error,
)
from .scan import stamp_of

__all__ = ["PCAM_SPLITS", "PcamSource", "centre_mask", "patch_to_stored"]

CLASS_NAMES = ["normal", "tumour"]
PCAM_SPLITS = {"train": "train", "valid": "val", "test": "test"}
_PREFIX = "camelyonpatch_level_2_split_"
_CHUNK_ROWS = 256
_PNG_BYTES_ESTIMATE = 20_000  # a 96x96 RGB patch as PNG, for --shard-bytes planning


def centre_mask(height: int, width: int, size: int = 32) -> np.ndarray:
    """PCam's label is about the centre ``size``×``size`` region: that region is the ROI."""
    mask = np.zeros((height, width), dtype=np.uint8)
    top, left = (height - size) // 2, (width - size) // 2
    mask[top : top + size, left : left + size] = 1
    return mask


def _open_dataset(src: Location, name: str, dataset: str) -> tuple[Any, Any]:
    import h5py

    stream = src.open_seekable(name)  # on object stores: ranged GETs, each retried and deadlined
    try:
        handle = h5py.File(stream, "r")
    except OSError as error:
        stream.close()
        raise ValueError(f"{src.display(name)} is not a readable HDF5 file ({error})") from error
    if dataset not in handle:
        handle.close()
        stream.close()
        raise ValueError(f"{src.display(name)} has no dataset {dataset!r}")
    return handle, stream


@dataclass(frozen=True)
class PcamSource(SourceFormat):
    """SRC is the folder with the six .h5 files (decompressed); optional ``*_meta.csv`` gives the slide ids."""

    name = "pcam"
    official_split_help = "the release's train, valid (as val) and test files"
    float_range: tuple[float, float] | None = None  # the value range of float patches, when the files do not say

    @classmethod
    def add_cli_options(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--float-range", help="pcam: value range LO,HI of float patches, e.g. 0,1")

    @classmethod
    def cli_fields(cls, args: argparse.Namespace) -> dict[str, Any]:
        return {**super().cli_fields(args), "float_range": parse_float_range(args.float_range)}

    def discover(self, src: Location, rules: ReadRules = DEFAULT_RULES) -> Discovery:
        present = set(src.list_files())
        items: list[SourceItem] = []
        rejects: list[Reject] = []
        for official, split in PCAM_SPLITS.items():
            x_name, y_name = f"{_PREFIX}{official}_x.h5", f"{_PREFIX}{official}_y.h5"
            if x_name not in present and y_name not in present:
                if f"{x_name}.gz" in present:
                    raise ValueError(f"{src.display(x_name)}.gz is compressed: run gunzip on the .h5.gz files first")
                continue
            if x_name not in present or y_name not in present:
                missing = x_name if x_name not in present else y_name
                raise ValueError(f"{src.display(missing)} is missing; PCam needs the _x and _y file of each split")
            labels, shape = self._labels_and_shape(src, x_name, y_name)
            if shape[1] * shape[2] > rules.max_pixels:
                raise ValueError(
                    f"{src.display(x_name)}: patches of {shape[2]}x{shape[1]} pixels are over the limit "
                    f"of {rules.max_pixels} (--max-pixels)"
                )
            stamp = f"{stamp_of(src, src.path(x_name))}/{stamp_of(src, src.path(y_name))}"
            slides = self._slides(src, f"{_PREFIX}{official}_meta.csv", present)
            for row, value in enumerate(labels):
                source = f"{x_name}#{row}"
                if value not in (0, 1):
                    rejects.append(Reject(source, f"label {value} is not 0 or 1"))
                    continue
                meta = {"row": row}
                items.append(
                    SourceItem(
                        f"pcam_{split}_{row:07d}",
                        int(value),
                        source,
                        (x_name, row),
                        slides.get(row),
                        split,
                        meta,
                        _PNG_BYTES_ESTIMATE,
                        stamp,
                    )
                )
        if not items and not rejects:
            raise ValueError(f"{src.display()}: no {_PREFIX}*_x.h5 / _y.h5 pairs found")
        return Discovery(CLASS_NAMES, items, rejects, official_splits=True, has_roi=True, preshuffle=False)

    def _labels_and_shape(self, src: Location, x_name: str, y_name: str) -> tuple[np.ndarray, tuple[int, ...]]:
        handle, stream = _open_dataset(src, y_name, "y")
        with stream, handle:
            labels = np.asarray(handle["y"]).reshape(-1)
        handle, stream = _open_dataset(src, x_name, "x")
        with stream, handle:
            shape = tuple(handle["x"].shape)
        if len(shape) != 4 or shape[3] != 3 or shape[0] != len(labels):
            raise ValueError(
                f"{src.display(x_name)}: x has shape {shape} but y has {len(labels)} rows; expected (N, H, W, 3)"
            )
        return labels, shape

    def _slides(self, src: Location, name: str, present: set[str]) -> dict[int, str]:
        if name not in present:
            return {}
        reader = csv.DictReader(io.StringIO(src.read_bytes(name).decode("utf-8-sig")))
        return {row: r["wsi"] for row, r in enumerate(reader) if r.get("wsi")}

    def load_many(
        self, src: Location, items: Sequence[SourceItem], rules: ReadRules = DEFAULT_RULES
    ) -> Iterator[LoadedImage | Reject]:
        """Read contiguous rows in chunks of 256: one HDF5 read per chunk, never a patch at a time."""
        opened: dict[str, tuple[Any, Any]] = {}
        try:
            position = 0
            while position < len(items):
                x_name, first = items[position].ref
                end = position + 1
                while (
                    end < len(items)
                    and end - position < _CHUNK_ROWS
                    and items[end].ref == (x_name, first + end - position)
                ):
                    end += 1
                batch = items[position:end]
                position = end
                try:
                    if x_name not in opened:
                        opened[x_name] = _open_dataset(src, x_name, "x")
                    block = np.asarray(opened[x_name][0]["x"][first : first + len(batch)])
                except Exception as error:
                    reason = describe_error(error)
                    yield from (Reject(item.source, reason, item.key) for item in batch)
                    continue
                bad_range: _BadRange | None = None
                try:
                    value_range = self.float_range or _documented_range(opened[x_name][0]["x"])
                except _BadRange as error:
                    value_range, bad_range = None, error
                for item, patch in zip(batch, block, strict=True):
                    try:
                        if bad_range is not None and np.issubdtype(patch.dtype, np.floating):
                            raise bad_range
                        image, meta = patch_to_stored(patch, value_range)
                    except RejectError as error:
                        yield Reject(item.source, str(error), item.key)
                        continue
                    yield LoadedImage(image, centre_mask(*image.shape[:2]), {"source_mode": "RGB", **meta})
        finally:
            for handle, stream in opened.values():
                handle.close()
                stream.close()


def _documented_range(dataset: Any) -> tuple[float, float] | None:
    """The value range the HDF5 dataset documents, checked where it is read: ``RejectError`` (each patch a reject)
    when it is not two finite numbers."""
    attrs = dataset.attrs
    for name in ("valid_range", "range"):
        if name in attrs and np.size(attrs[name]) == 2:
            low, high = (float(v) for v in np.ravel(attrs[name]))
            return _finite_range(low, high, f"the HDF5 attribute {name}")
    if "valid_min" in attrs and "valid_max" in attrs:
        low, high = float(np.ravel(attrs["valid_min"])[0]), float(np.ravel(attrs["valid_max"])[0])
        return _finite_range(low, high, "the HDF5 attributes valid_min / valid_max")
    return None


class _BadRange(RejectError):
    """A documented range that cannot scale a patch: every float patch of the file is rejected with it."""


def _finite_range(low: float, high: float, what: str) -> tuple[float, float]:
    if not (np.isfinite(low) and np.isfinite(high)):
        raise _BadRange(
            f"{what} give(s) {low:g},{high:g}, which is not finite: pass the real range with --float-range LO,HI"
        )
    return low, high


def patch_to_stored(patch: np.ndarray, value_range: tuple[float, float] | None) -> tuple[np.ndarray, dict[str, Any]]:
    """A patch as the shard format stores it: uint8 / uint16 as they are, floats scaled from their range."""
    if patch.dtype == np.uint8:
        return np.ascontiguousarray(patch), {}
    if patch.dtype == np.uint16:
        return np.ascontiguousarray(patch), {"bit_depth_source": 16}
    if not np.issubdtype(patch.dtype, np.floating):
        raise RejectError(f"{patch.dtype} patches: the shard format stores uint8 or uint16; convert the file first")
    if value_range is None:
        raise RejectError(
            f"{patch.dtype} patch without a documented value range: pass --float-range LO,HI (e.g. 0,1 or 0,255) "
            "or give the HDF5 dataset a valid_range attribute"
        )
    low, high = _finite_range(*value_range, "the float range")
    if not high > low or not np.isfinite(high - low):
        raise RejectError(f"float range {low:g},{high:g} is empty or too wide: the high end must be above the low end")
    values = patch.astype(np.float64)
    tolerance = (high - low) * 1e-6
    if not np.isfinite(values).all() or values.min() < low - tolerance or values.max() > high + tolerance:
        raise RejectError(
            f"{patch.dtype} patch has values {np.nanmin(values):g}..{np.nanmax(values):g} (or NaN) outside its "
            f"documented range {low:g}..{high:g}"
        )
    unit = np.clip((values - low) / (high - low), 0.0, 1.0)
    as_8_bit = unit * 255
    if np.abs(as_8_bit - np.rint(as_8_bit)).max() < 1e-3:  # floats made from 8-bit values: exact at 8 bits
        stored: np.ndarray = np.rint(as_8_bit).astype(np.uint8)
    else:
        stored = np.rint(unit * 65535).astype(np.uint16)
    if stored.min() == stored.max() and values.min() != values.max():
        raise RejectError(
            f"{patch.dtype} patch has values {values.min():g}..{values.max():g}, but its documented range "
            f"{low:g}..{high:g} is so wide that every pixel would be one grey level: pass the real range with "
            "--float-range LO,HI"
        )
    return stored, {"float_range": [low, high]}


def parse_float_range(text: str | None) -> tuple[float, float] | None:
    """``--float-range LO,HI`` → ``(LO, HI)``; ``None`` when not given."""
    if not text:
        return None
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"--float-range {text!r}: expected LO,HI such as 0,1") from None
    if not (np.isfinite(low) and np.isfinite(high) and np.isfinite(high - low)) or not high > low:
        raise ValueError(f"--float-range {text!r}: expected two finite numbers LO < HI, such as 0,1")
    return low, high
