"""PatchCamelyon: ``camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5``, read in row chunks, never whole."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..storage import Location
from .base import Discovery, LoadedImage, Reject, SourceFormat, SourceItem, describe_error

__all__ = ["PCAM_SPLITS", "PcamSource", "centre_mask"]

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

    stream = src.open(name)
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

    def discover(self, src: Location) -> Discovery:
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
            labels, _shape = self._labels_and_shape(src, x_name, y_name)
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

    def load_many(self, src: Location, items: Sequence[SourceItem]) -> Iterator[LoadedImage | Reject]:
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
                for patch in block:
                    image = np.ascontiguousarray(patch, dtype=np.uint8)
                    yield LoadedImage(image, centre_mask(*image.shape[:2]), {"source_mode": "RGB"})
        finally:
            for handle, stream in opened.values():
                handle.close()
                stream.close()
