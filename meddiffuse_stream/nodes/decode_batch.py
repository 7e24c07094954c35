"""The default chain's fused stage: a worker's planned samples decoded straight into their batch's buffer.

``Decode → [Conform] → Batch`` for the common case (no per-sample user stages, the default collation) in one
node: each image goes from the decoder into its slot of the batch array, converted to the delivery ``dtype`` in
the same pass (see :mod:`~meddiffuse_stream.nodes.pixels`), and that array is allocated where the loader will read
it (a shared segment in a worker process: nothing is stacked, pickled or copied again). Skips, padding, counters
and state are :class:`~meddiffuse_stream.nodes.batch.Batch`'s: a skipped slot holds a copy of the last good
sample of the worker, marked ``is_padding``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import islice
from typing import Any

import numpy as np
from torchdata.nodes import BaseNode

from ..counters import Counters
from .decode import DecodeOptions
from .errors import LoaderDataError
from .items import Skipped
from .pixels import write_image
from .source import DatasetSource
from .stages import decode_planned

__all__ = ["Allocate", "DecodeBatch"]

Allocate = Callable[[tuple[int, ...], Any], np.ndarray]  # (shape, dtype) -> an uninitialised array
Sample = dict[str, Any]


class DecodeBatch(BaseNode[dict[str, Any]]):
    """Yields ``{"image" (B, C, H, W) of dtype, "label" int64, "key", "is_padding" bool, "roi"?, "meta"?}`` per
    ``batch_size`` planned samples of ``source`` (a :class:`~meddiffuse_stream.nodes.read.ReadSamples`).

    ``conform(sample) -> sample`` brings each decoded sample to the batch's size and channels (``resize=``,
    ``channels=``); ``allocate`` makes the image and ROI arrays. State: the upstream's after the last chunk.
    """

    SOURCE_KEY = "source"

    def __init__(
        self,
        source: BaseNode[Any],
        dataset: DatasetSource,
        options: DecodeOptions,
        batch_size: int,
        *,
        dtype: str = "float32",
        on_error: str = "raise",
        conform: Callable[[Sample], Sample] | None = None,
        allocate: Allocate | None = None,
        counters: Counters | None = None,
        where: str = "this worker",
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.source = source
        self.dataset = dataset
        self.options = options
        self.batch_size = batch_size
        self.dtype = np.dtype(dtype)
        self.on_error = on_error
        self.conform = conform
        self.allocate: Allocate = allocate if allocate is not None else np.empty
        self.counters = counters if counters is not None else Counters()
        self.where = where
        self._chunks: Iterator[tuple[dict[str, Any], dict[str, Any]]] = iter(())
        self._state: dict[str, Any] = {}

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        self.source.reset(initial_state[self.SOURCE_KEY] if initial_state is not None else None)
        self._state = self.source.state_dict()
        self._chunks = self._generate()

    def get_state(self) -> dict[str, Any]:
        return {self.SOURCE_KEY: self._state}

    def next(self) -> dict[str, Any]:
        chunk, self._state = next(self._chunks)
        return chunk

    def _generate(self) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        waiting: list[tuple[list[Skipped], dict[str, Any]]] = []  # all-skipped chunks before a good sample
        stand_in: Sample | None = None  # a copy of the last good sample: what fills a skipped slot
        while True:
            planned = list(islice(self.source, self.batch_size))
            if not planned:
                break
            chunk, skipped, last_good = self._decode(planned)
            state = self.source.state_dict()
            if last_good is not None:
                stand_in = {**last_good, "image": last_good["image"].copy()}  # the chunk's memory leaves
            if stand_in is None:
                waiting.append((skipped, state))
                continue
            for earlier, earlier_state in waiting:
                yield self._filled(earlier, stand_in), earlier_state
            waiting.clear()
            if chunk is None:
                chunk = self._filled(skipped, stand_in)
            else:
                self._fill(chunk, skipped, stand_in)
            yield chunk, state
        if waiting:
            raise LoaderDataError(
                f"{self.where}: every one of its samples this epoch was skipped, so none can stand in "
                "(see loader.counters for the reasons)"
            )

    def _decode(self, planned: list[Any]) -> tuple[dict[str, Any] | None, list[Any], Sample | None]:
        """The chunk (None if every sample was skipped), its skipped slots ``[(slot, Skipped)]`` and its last
        good sample."""
        chunk: dict[str, Any] | None = None
        skipped: list[Any] = []
        last_good: Sample | None = None
        first_key = None
        for slot, item in enumerate(planned):
            sample = decode_planned(item, self.dataset, self.options, self.on_error)
            if isinstance(sample, Skipped):
                self.counters.skip(sample.kind)
                skipped.append((slot, sample))
                continue
            self.counters["yielded"] += 1
            if self.conform is not None:
                sample = self.conform(sample)
            if chunk is None:
                chunk = self._new_chunk(len(planned), sample)
                first_key = sample["key"]
            self._place(chunk, slot, sample, first_key)
            last_good = sample
        return chunk, skipped, last_good

    def _new_chunk(self, count: int, first: Sample) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "image": self.allocate((count, *first["image"].shape), self.dtype),
            "label": np.zeros(count, dtype=np.int64),
            "key": [""] * count,
            "is_padding": np.zeros(count, dtype=bool),
        }
        if self.options.with_roi:
            chunk["roi"] = None  # made by the first sample that has one
        if self.options.with_meta:
            chunk["meta"] = [{} for _ in range(count)]
        return chunk

    def _place(self, chunk: dict[str, Any], slot: int, sample: Sample, first_key: Any) -> None:
        images = chunk["image"]
        image = sample["image"]
        if image.shape != images.shape[1:]:
            raise ValueError(
                f"samples {first_key} {tuple(images.shape[1:])} and {sample['key']} {tuple(image.shape)} differ in "
                "shape: pass resize= (and channels= where grey and colour images mix) to MedDiffuseLoader, or "
                "convert with --resize"
            )
        write_image(images[slot], image, sample["key"])
        chunk["label"][slot] = sample["label"]
        chunk["key"][slot] = sample["key"]
        chunk["is_padding"][slot] = bool(sample.get("is_padding", False))
        if "roi" in sample:
            if chunk.get("roi") is None:
                chunk["roi"] = self.allocate((len(images), *sample["roi"].shape), np.uint8)
                chunk["roi"][:] = 0  # samples without a mask have an empty one
            chunk["roi"][slot] = sample["roi"]
        if "meta" in chunk:
            chunk["meta"][slot] = sample.get("meta", {})

    def _fill(self, chunk: dict[str, Any], skipped: list[Any], stand_in: Sample) -> None:
        for slot, _ in skipped:
            self._place(chunk, slot, stand_in, stand_in["key"])
            chunk["is_padding"][slot] = True
        self.counters["padded"] += len(skipped)
        if chunk.get("roi", 0) is None:
            del chunk["roi"]  # no sample of the batch had a mask

    def _filled(self, skipped: list[Any], stand_in: Sample) -> dict[str, Any]:
        chunk = self._new_chunk(len(skipped), stand_in)
        self._fill(chunk, skipped, stand_in)
        return chunk
