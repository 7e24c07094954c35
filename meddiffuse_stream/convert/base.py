"""What every source format provides: a discovery of its inputs and a way to load them one by one."""

from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..storage import Location

__all__ = [
    "Discovery",
    "LoadedImage",
    "Reject",
    "RejectError",
    "SourceFormat",
    "SourceItem",
    "printable",
]


def printable(text: str | None) -> str | None:
    """A file name that is not valid UTF-8 (its bytes arrive as surrogates) as text every writer accepts:
    ``caf\\xe9.png`` — what a user sees is still recognisable, and parquet and JSON can store it."""
    if text is None:
        return None
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class RejectError(ValueError):
    """An input that cannot be converted; its message becomes the reason in ``rejects.jsonl``."""


@dataclass(frozen=True)
class SourceItem:
    """One input found in the source, before it is read."""

    key: str
    label: int
    source: str  # the path the user would recognise, relative to SRC
    ref: Any  # what the format's loader needs (a relative path, or a file and a row)
    patient_id: str | None = None
    split: str | None = None  # the dataset's official split, where it has one
    meta: Mapping[str, Any] = field(default_factory=dict)
    size_hint: int = 0  # bytes on disk, to plan shards under --shard-bytes

    def __post_init__(self) -> None:  # ``ref`` keeps the real name to read; what is written must be valid UTF-8
        object.__setattr__(self, "source", printable(self.source))
        object.__setattr__(self, "patient_id", printable(self.patient_id))


@dataclass(frozen=True)
class Reject:
    """An input that was found but not converted."""

    source: str
    reason: str
    key: str | None = None

    def as_row(self) -> dict[str, Any]:
        return {"path": printable(self.source), "reason": printable(self.reason), "key": self.key}


@dataclass
class LoadedImage:
    """Pixels read from one input: ``(H, W)`` uint8/uint16 or ``(H, W, 3)`` uint8, plus an optional ROI mask."""

    image: np.ndarray
    roi: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Discovery:
    """Everything found in a source: inputs to convert and inputs already known to be bad."""

    class_names: list[str]
    items: list[SourceItem]
    rejects: list[Reject]
    official_splits: bool = False
    has_roi: bool = False
    preshuffle: bool = True  # PCam files are shuffled already and read in row order

    @property
    def found(self) -> int:
        return len(self.items) + len(self.rejects)


class SourceFormat(abc.ABC):
    """A dataset layout. Subclasses are small picklable dataclasses so worker processes can load inputs."""

    name: str = ""

    @abc.abstractmethod
    def discover(self, src: Location) -> Discovery:
        """Find every input below ``src``; raise ``ValueError`` naming what is missing if the layout is wrong."""

    def load_one(self, src: Location, item: SourceItem) -> LoadedImage:
        raise NotImplementedError(f"{type(self).__name__} loads inputs in load_many; call that instead")

    def load_many(self, src: Location, items: Sequence[SourceItem]) -> Iterator[LoadedImage | Reject]:
        """One result per item, in order: the pixels, or a reject saying why not."""
        for item in items:
            try:
                yield self.load_one(src, item)
            except Exception as error:  # every decoding library raises its own types: each is a reject
                yield Reject(item.source, describe_error(error), item.key)


def describe_error(error: BaseException) -> str:
    """A one-line reason: RejectError messages as they are, other errors prefixed with their type."""
    text = " ".join(str(error).split()) or "no message"
    return text if isinstance(error, RejectError) else f"{type(error).__name__}: {text}"
