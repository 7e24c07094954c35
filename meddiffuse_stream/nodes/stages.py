"""Per-sample stages: decode, and the user's map, image transform and filter — each one in, one out.

A sample that is skipped (bad data with ``on_error="skip"``, or dropped by a filter) travels on as a
:class:`~meddiffuse_stream.nodes.items.Skipped` marker, which the user's functions never see; the batcher counts it
and fills its slot. So a stage's state is its upstream's, and a restored graph yields exactly what was left.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torchdata.nodes import BaseNode

from ..options import OnError
from .decode import DecodeOptions, SampleError, decode_sample
from .errors import LoaderDataError
from .items import PlannedSample, Skipped, as_tensor_sample
from .reading.reader import Skip
from .source import DatasetSource

__all__ = ["Decode", "Filter", "ImageMap", "Map", "decode_planned"]

Sample = dict[str, Any]


class _OneToOne(BaseNode[Any]):
    """A stage whose state is its upstream's: it consumes exactly one item per item it yields."""

    SOURCE_KEY = "source"

    def __init__(self, source: BaseNode[Any]) -> None:
        super().__init__()
        self.source = source

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        self.source.reset(initial_state[self.SOURCE_KEY] if initial_state is not None else None)

    def get_state(self) -> dict[str, Any]:
        return {self.SOURCE_KEY: self.source.state_dict()}

    def next(self) -> Any:
        item = next(self.source)
        return item if isinstance(item, Skipped) else self.apply(item)

    def apply(self, sample: Any) -> Any:
        raise NotImplementedError


class Decode(_OneToOne):
    """Raw samples to ``{"key", "image" (C, H, W) uint8/uint16, "label", "is_padding", "roi"?, "meta"?}``.

    ``on_error="raise"`` raises :class:`LoaderDataError` naming the shard and key; ``"skip"`` passes a
    :class:`Skipped` on, which the batcher counts.
    """

    def __init__(
        self,
        source: BaseNode[PlannedSample],
        dataset: DatasetSource,
        options: DecodeOptions,
        on_error: OnError = "raise",
    ) -> None:
        super().__init__(source)
        self.dataset = dataset
        self.options = options
        self.on_error = on_error

    def apply(self, planned: PlannedSample) -> Sample | Skipped:
        return decode_planned(planned, self.dataset, self.options, self.on_error)


def decode_planned(planned: PlannedSample, dataset: DatasetSource, options: DecodeOptions, on_error: OnError) -> Any:
    """One planned sample decoded (``is_padding`` set), or a :class:`Skipped` naming shard and key; with
    ``on_error="raise"`` a :class:`LoaderDataError` instead."""
    item = planned.item
    try:
        if isinstance(item, Skip):
            raise SampleError(item.reason, item.kind)
        sample = decode_sample(item, options)
    except SampleError as error:
        where = dataset.describe(item.ref[0])
        message = str(error) if str(error).startswith(where) else f"{where}: {error}"
        if on_error == "raise":
            raise LoaderDataError(f"{message} (pass on_error='skip' to skip and count it)") from error
        return Skipped(error.kind, message, getattr(item, "key", None), planned.padding)
    sample["is_padding"] = planned.padding
    return sample


def _checked(result: Any, what: str) -> Sample:
    if not isinstance(result, dict) or "image" not in result or "key" not in result:
        raise TypeError(f"{what} must return the sample dict it was given, with 'image', 'label' and 'key'")
    return result


class Map(_OneToOne):
    """``fn(sample) -> sample`` on each sample, the image a float32 tensor in [0, 1] (as ``transform=`` sees it)."""

    def __init__(self, source: BaseNode[Any], fn: Callable[[Sample], Sample]) -> None:
        super().__init__(source)
        self.fn = fn

    def apply(self, sample: Sample) -> Sample:
        result = _checked(self.fn(as_tensor_sample(sample)), "a Map function (transform=)")
        if "is_padding" not in result:
            result = dict(result, is_padding=sample.get("is_padding", False))
        return result


class ImageMap(_OneToOne):
    """``fn(image) -> image`` on the float32 (C, H, W) image tensor alone: a torchvision-style transform."""

    def __init__(self, source: BaseNode[Any], fn: Callable[[Any], Any]) -> None:
        super().__init__(source)
        self.fn = fn

    def apply(self, sample: Sample) -> Sample:
        sample = as_tensor_sample(sample)
        return dict(sample, image=self.fn(sample["image"]))


class Filter(_OneToOne):
    """Keeps samples for which ``predicate(sample)`` is true; the others become :class:`Skipped` of ``kind``.

    A dropped sample is counted as skipped (``skipped:<kind>``) and its slot filled like any skipped one, so batch
    sizes, batch counts per rank and exact resume are unchanged.
    """

    def __init__(self, source: BaseNode[Any], predicate: Callable[[Sample], bool], kind: str = "filtered") -> None:
        super().__init__(source)
        self.predicate = predicate
        self.kind = kind

    def apply(self, sample: Sample) -> Sample | Skipped:
        if self.predicate(as_tensor_sample(sample)):
            return sample
        return Skipped(
            self.kind,
            f"{sample.get('key')}: dropped by a filter",
            sample.get("key"),
            bool(sample.get("is_padding", False)),
        )
