"""The default chain's fused stage: a worker's planned samples decoded straight into their batch's buffer.

``Decode → [Conform] → Batch`` for the common case (no per-sample user stages, the default collation) in one
node: each image goes from the decoder into its slot of the batch array, converted to the delivery ``dtype`` in
the same pass (see :mod:`~meddiffuse_stream.nodes.pixels`), and that array is allocated where the loader will read
it (a shared segment in a worker process: nothing is stacked, pickled or copied again). Skips, padding, counters
and state are :class:`~meddiffuse_stream.nodes.batch.Batch`'s: a skipped slot holds a copy of the last good
sample of the worker, marked ``is_padding``. Samples of plain shards come from the reader as rows
(:mod:`~meddiffuse_stream.nodes.reading.plain_rows`): their headers and labels were checked once per shard, so a plain
row costs its decode and its copy into the batch and little else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import islice
from typing import Any

import numpy as np
from torchdata.nodes import BaseNode

from ..counters import Counters
from ..options import Dtype, OnError
from ..shardfmt.members import IMAGE, LABEL
from ..shardfmt.tar import RawSample
from .chunked import ChunkNode
from .collate import stack_labels
from .decode import MAX_LABEL, DecodeOptions, decode_plain_png, spng_decoder
from .errors import LoaderDataError
from .items import PlannedSample, Skipped
from .pixels import write_image
from .reading.plain_rows import Row, build_row
from .source import DatasetSource
from .stages import decode_planned

__all__ = ["Allocate", "DecodeBatch", "takes_plain_samples"]

Allocate = Callable[[tuple[int, ...], Any], np.ndarray]  # (shape, dtype) -> an uninitialised array
Sample = dict[str, Any]


def takes_plain_samples(options: DecodeOptions, conforms: bool) -> bool:
    """Whether the stage decodes a plain sample (a ``.png`` and an integer ``.cls``, nothing else asked for) straight
    into its slot, skipping the per-sample dict — and so whether its reader should hand plain shards over as rows."""
    return (
        options.image_key in (None, IMAGE)
        and options.label_key in (None, LABEL)
        and options.labels.kind == "class"
        and not options.with_roi
        and not options.with_meta
        and not conforms
    )


class DecodeBatch(ChunkNode[dict[str, Any]]):
    """Yields ``{"image" (B, C, H, W) of dtype, "label" int64, "key", "is_padding" bool, "roi"?, "meta"?}`` per
    ``batch_size`` planned samples of ``source`` (a :class:`~meddiffuse_stream.nodes.read.ReadSamples`).

    ``conform(sample) -> sample`` brings each decoded sample to the batch's size and channels (``resize=``,
    ``channels=``); ``allocate`` makes the image and ROI arrays. State: the upstream's after the last chunk.
    """

    def __init__(
        self,
        source: BaseNode[Any],
        dataset: DatasetSource,
        options: DecodeOptions,
        batch_size: int,
        *,
        dtype: Dtype = "float32",
        on_error: OnError = "raise",
        conform: Callable[[Sample], Sample] | None = None,
        allocate: Allocate | None = None,
        counters: Counters | None = None,
        where: str = "this worker",
    ) -> None:
        super().__init__(source)
        self.dataset = dataset
        self.options = options
        self.batch_size = batch_size
        self.dtype = np.dtype(dtype)
        self.on_error = on_error
        self.conform = conform
        self.allocate: Allocate = allocate if allocate is not None else np.empty
        self.counters = counters if counters is not None else Counters()
        self.where = where
        self._plain = takes_plain_samples(options, conform is not None)

    def _generate(self) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        waiting: list[tuple[_Builder, dict[str, Any]]] = []  # all-skipped chunks before a good sample
        stand_in: Sample | None = None  # a copy of the last good sample: what fills a skipped slot
        take = getattr(self.source, "take_rows", None)  # ReadSamples hands a batch's samples over in one call
        while True:
            if take is not None:
                items, padding = take(self.batch_size)
            else:
                planned = list(islice(self.source, self.batch_size))
                items, padding = [p.item for p in planned], [p.padding for p in planned]
            if not items:
                break
            builder = self._decode(items, padding)
            state = self.source.state_dict()
            if builder.last_good is not None:
                last = builder.last_good
                stand_in = {**last, "image": last["image"].copy()}  # the chunk's memory leaves this worker
            if stand_in is None:
                waiting.append((builder, state))
                continue
            for earlier, earlier_state in waiting:
                yield earlier.finish(stand_in, self.counters), earlier_state
            waiting.clear()
            yield builder.finish(stand_in, self.counters), state
        if waiting:
            raise LoaderDataError(
                f"{self.where}: every one of its samples this epoch was skipped, so none can stand in "
                "(see loader.counters for the reasons)"
            )

    def _decode(self, items: list[Any], padding: list[bool]) -> _Builder:
        builder = _Builder(len(items), self.dtype, self.allocate, self.options)
        good = 0
        plain = self._plain
        place_row = builder.place_row
        for slot, item in enumerate(items):
            if type(item) is tuple:  # a plain shard's row (see plain_rows)
                if plain and place_row(slot, item, padding[slot]):
                    good += 1
                    continue
                item = build_row(item)
            planned = PlannedSample(item, padding[slot])
            if plain and builder.place_plain(slot, planned):
                good += 1
                continue
            sample = decode_planned(planned, self.dataset, self.options, self.on_error)
            if isinstance(sample, Skipped):
                self.counters.skip(sample.kind)
                builder.skipped.append(slot)
                continue
            good += 1
            if self.conform is not None:
                sample = self.conform(sample)
            builder.place(slot, sample)
        self.counters["yielded"] += good
        return builder


class _Builder:
    """One batch being filled: the image (and ROI) arrays made on its first good sample, the rest as lists."""

    def __init__(self, count: int, dtype: np.dtype, allocate: Allocate, options: DecodeOptions) -> None:
        self.count = count
        self.dtype = dtype
        self.allocate = allocate
        self.images: np.ndarray | None = None
        self.roi: np.ndarray | None = None
        self.rois: np.ndarray | None = None  # per-finding ROIs (B, C, H, W), where samples have them
        self.options = options
        self.with_meta = options.with_meta
        self.labels: list[Any] = [0] * count
        self.label_masks: list[Any] = [None] * count
        self.keys: list[Any] = [""] * count
        self.padding = [False] * count
        self.meta: list[Any] = [{}] * count
        self.skipped: list[int] = []
        self._last_sample: Sample | None = None  # the last good sample placed by place()...
        self._last_plain: int | None = None  # ...or the slot of the last placed by place_plain()
        self._shape: tuple[int, ...] = ()
        self._first_key: Any = None
        self._classes = options.num_classes if options.num_classes is not None else MAX_LABEL + 1
        self._decoder = spng_decoder()

    @property
    def last_good(self) -> Sample | None:
        """The last good sample placed (its image a view of its slot when it came through :meth:`place_plain`)."""
        slot = self._last_plain
        if slot is None:
            return self._last_sample
        assert self.images is not None
        return {
            "image": self.images[slot],
            "label": self.labels[slot],
            "key": self.keys[slot],
            "is_padding": self.padding[slot],
        }

    def place_plain(self, slot: int, planned: PlannedSample) -> bool:
        """Decode and place a plain sample — a plain 8-bit ``.png`` and an in-range integer ``.cls`` — straight
        into ``slot``; False (nothing placed) for any other, which :meth:`place` takes after the full decode
        (and which raises or skips with the reason there)."""
        raw = planned.item
        if type(raw) is not RawSample:
            return False
        members = raw.members
        data, text = members.get(IMAGE), members.get(LABEL)
        if data is None or text is None:
            return False
        try:
            label = int(text)
        except ValueError:  # a class name, or not a label: decode_sample decides
            return False
        options = self.options
        if label < 0 or label >= self._classes:  # out of range, any width: the full decode names it
            return False
        image = decode_plain_png(data, options.max_pixels)
        return image is not None and self._put_plain(slot, image, label, raw.key, planned.padding)

    def place_row(self, slot: int, row: Row, padding: bool) -> bool:
        """:meth:`place_plain` for a row of a plain shard: its header and label were checked once for the shard
        (:func:`~meddiffuse_stream.nodes.reading.plain_rows.png_columns`), so only the decode is left per sample; False
        (nothing placed) where the row is not plain, which then takes the way of any other sample."""
        rows, index, _ = row
        label, pixels = rows.labels[index], rows.pixels[index]
        decoder = self._decoder
        if label < 0 or label >= self._classes or not 0 < pixels <= self.options.max_pixels or decoder is None:
            return False
        try:
            image = decoder[0](rows.data[rows.starts[index] : rows.ends[index]], decoder[1]).transpose(2, 0, 1)
        except Exception:  # the full decode decodes it again and names the problem
            return False
        return self._put_plain(slot, image, label, rows.keys[index], padding)

    def _put_plain(self, slot: int, image: np.ndarray, label: int, key: Any, padding: bool) -> bool:
        """A decoded plain image into ``slot``; False (nothing placed) where its shape is not the batch's."""
        if self.images is None:
            self.images = self.allocate((self.count, *image.shape), self.dtype)
            self._shape, self._first_key = image.shape, key
        elif image.shape != self._shape:
            return False  # place() raises the error naming both samples
        write_image(self.images[slot], image, key)
        self.labels[slot] = label
        self.keys[slot] = key
        self.padding[slot] = padding
        self._last_plain, self._last_sample = slot, None
        return True

    def place(self, slot: int, sample: Sample) -> None:
        image = sample["image"]
        if self.images is None:
            self.images = self.allocate((self.count, *image.shape), self.dtype)
            self._shape, self._first_key = image.shape, sample["key"]
        if image.shape != self._shape:
            raise ValueError(
                f"samples {self._first_key} {tuple(self._shape)} and {sample['key']} {tuple(image.shape)} differ in "
                "shape: pass resize= (and channels= where grey and colour images mix) to MedDiffuseLoader, or "
                "convert with --resize"
            )
        write_image(self.images[slot], image, sample["key"])
        self.labels[slot] = sample.get("label", 0)
        self.label_masks[slot] = sample.get("label_mask")
        self.keys[slot] = sample["key"]
        self.padding[slot] = sample.get("is_padding", False)
        if "roi" in sample:
            if self.roi is None:
                self.roi = self.allocate((self.count, *sample["roi"].shape), np.uint8)
                self.roi[:] = 0  # samples without a mask have an empty one
            self.roi[slot] = sample["roi"]
        if "rois" in sample:
            if self.rois is None:
                self.rois = self.allocate((self.count, *sample["rois"].shape), np.uint8)
                self.rois[:] = 0
            self.rois[slot] = sample["rois"]
        if self.with_meta:
            self.meta[slot] = sample.get("meta", {})
        self._last_sample, self._last_plain = sample, None

    def finish(self, stand_in: Sample, counters: Counters) -> dict[str, Any]:
        """The chunk, each skipped slot holding ``stand_in`` marked as padding."""
        for slot in self.skipped:
            self.place(slot, stand_in)
            self.padding[slot] = True
        counters["padded"] += len(self.skipped)
        chunk: dict[str, Any] = {"image": self.images}
        kind = self.options.labels.kind
        if kind != "none":
            chunk["label"] = (
                np.array(self.labels, np.int64) if kind == "class" else stack_labels(self.labels, self.keys)
            )
        if self.options.labels.mask:
            chunk["label_mask"] = stack_labels(self.label_masks, self.keys)
        chunk["key"] = self.keys
        chunk["is_padding"] = np.array(self.padding, dtype=bool)
        if self.roi is not None:
            chunk["roi"] = self.roi
        if self.rois is not None:
            chunk["rois"] = self.rois
        if self.with_meta:
            chunk["meta"] = self.meta
        return chunk
