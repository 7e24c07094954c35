"""Building one shard: load each input, unify channels and size on request (``--resize N --resize-mode``: the
loader's geometry, ROI masks following their image), encode, write; every input ends up as sample rows or one
reject row.

The fields the pipeline writes (``key``, ``split``, ``label``, ``shard``, ``offset``, ``height``, ...) always win
over a format's own metadata of the same name, so no source column can make ``index.parquet`` lie.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..geometry import GeometryMode
from ..shardfmt.writer import ShardWriter, encode_sample, make_key, shard_name
from ..storage import Location, atomic_write
from .base import LoadedImage, ReadRules, Reject, SourceFormat, SourceItem, describe_error
from .images import resize_square, to_channels

__all__ = ["RESERVED_FIELDS", "ShardResult", "ShardTask", "build_shard"]

RESERVED_FIELDS = (
    "key",
    "split",
    "label",
    "class_name",
    "labels",
    "findings",
    "patient_id",
    "source",
    "height",
    "width",
    "channels",
    "bit_depth",
    "shard",
    "offset",
    "dataset",
)


@dataclass(frozen=True)
class ShardTask:
    split: str
    index: int
    items: tuple[SourceItem, ...]
    fingerprint: str
    label_mask: bool = False  # multi-label datasets with unknown findings: every sample gets a label mask

    @property
    def name(self) -> str:
        return shard_name(self.split, self.index)


@dataclass
class ShardResult:
    """What building one shard produced; stored as its progress record."""

    name: str
    split: str
    fingerprint: str
    samples: int
    bytes: int
    sha256: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    rejects: list[dict[str, Any]] = field(default_factory=list)
    inputs: int = -1  # inputs converted (an input with every frame kept gives several samples); -1: as samples
    notes: dict[str, int] = field(default_factory=dict)

    @property
    def converted_inputs(self) -> int:
        return self.samples if self.inputs < 0 else self.inputs


def build_shard(
    source: SourceFormat,
    src: Location,
    out: Location,
    task: ShardTask,
    class_names: list[str],
    resize: int | None,
    rules: ReadRules,
    resize_mode: GeometryMode = "crop",
) -> ShardResult:
    """Load, encode and write one shard."""
    rows: list[dict[str, Any]] = []
    rejects: list[dict[str, Any]] = []
    notes: Counter[str] = Counter()
    inputs = 0
    with atomic_write(out, task.name) as stream:
        writer = ShardWriter(stream)
        for item, loaded in zip(task.items, source.load_many(src, task.items, rules), strict=True):
            if isinstance(loaded, Reject):
                rejects.append(loaded.as_row())
                continue
            try:
                samples = _samples(source.name, item, loaded, task, class_names, (resize, resize_mode), rules.channels)
            except Exception as error:
                rejects.append(Reject(item.source, describe_error(error), item.key).as_row())
                continue
            for sample, fields in samples:
                offset = writer.add(sample)
                rows.append({**item.meta, **fields, "shard": task.name, "offset": offset})
            inputs += 1
            notes.update(loaded.notes)
            if rules.channels and any(c["channels"] != _channels_of(loaded.image) for _, c in samples):
                notes[f"converted to {rules.channels} channel(s) (--channels)"] += 1
        size, sha256 = writer.close()
    if not rows:
        out.remove(task.name)
        size, sha256 = 0, ""
    return ShardResult(
        task.name, task.split, task.fingerprint, len(rows), size, sha256, rows, rejects, inputs, dict(notes)
    )


def _channels_of(image: np.ndarray) -> int:
    return 1 if image.ndim == 2 else int(image.shape[2])


def _samples(
    dataset: str,
    item: SourceItem,
    loaded: LoadedImage,
    task: ShardTask,
    class_names: list[str],
    resize: tuple[int | None, GeometryMode],
    channels: int | None,
) -> list[tuple[Any, dict[str, Any]]]:
    """Every sample of one input, encoded, before any is written: an input is converted whole or rejected."""
    frames = loaded.frames or [loaded.image]
    side, mode = resize
    encoded = []
    for index, frame in enumerate(frames):
        image, roi, rois = frame, loaded.roi, loaded.rois
        if channels:
            image = to_channels(image, channels)
        if side:
            image = resize_square(image, side, mode=mode)
            roi = None if roi is None else resize_square(roi, side, nearest=True, mode=mode)
            rois = None if rois is None else resize_square(rois, side, nearest=True, mode=mode)
        key = item.key if len(frames) == 1 else make_key(item.key, f"f{index:04d}")
        columns = _columns(item, key, task.split, class_names, image)
        frame_meta = {"frame_index": index} if len(frames) > 1 else {}
        meta = {**item.meta, **loaded.meta, **frame_meta, **columns, "dataset": dataset}
        label = item.label if item.findings is None else None
        sample = encode_sample(
            key, image, label, meta, roi, findings=item.findings, label_mask=task.label_mask, rois=rois
        )
        encoded.append((sample, {**frame_meta, **columns}))
    return encoded


def _label_columns(item: SourceItem, class_names: list[str]) -> dict[str, Any]:
    """``label`` and ``class_name``; multi-label: ``labels`` (1 / 0 / -1 per class) and the positive ``findings``."""
    if item.findings is None:
        return {"label": item.label, "class_name": class_names[item.label]}
    if len(item.findings) != len(class_names):
        raise ValueError(f"{len(item.findings)} findings for {len(class_names)} classes")
    positive = [name for name, value in zip(class_names, item.findings, strict=True) if value == 1]
    return {"labels": list(item.findings), "findings": positive}


def _columns(item: SourceItem, key: str, split: str, class_names: list[str], image: np.ndarray) -> dict[str, Any]:
    return {
        "key": key,
        "split": split,
        **_label_columns(item, class_names),
        "patient_id": item.patient_id,
        "source": item.source,
        "height": int(image.shape[0]),
        "width": int(image.shape[1]),
        "channels": _channels_of(image),
        "bit_depth": 16 if image.dtype == np.uint16 else 8,
    }
