"""What every source format provides: a discovery of its inputs and a way to load them one by one."""

from __future__ import annotations

import abc
import argparse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..storage import Location

__all__ = [
    "DEFAULT_MAX_FILE_BYTES",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_RULES",
    "FRAME_CHOICES",
    "ConversionError",
    "Discovery",
    "LoadedImage",
    "ReadRules",
    "Reject",
    "RejectError",
    "SourceFormat",
    "SourceItem",
    "printable",
]

FRAME_CHOICES = ("middle", "all", "reject")
DEFAULT_MAX_PIXELS = 100_000_000  # per input, all kept frames together: above this it is a possible decompression bomb
DEFAULT_MAX_FILE_BYTES = 2 << 30  # per input file; larger files are rejected before they are read


def printable(text: str | None) -> str | None:
    """A file name that is not valid UTF-8 (its bytes arrive as surrogates) as text every writer accepts:
    ``caf\\xe9.png`` — what a user sees is still recognisable, and parquet and JSON can store it."""
    if text is None:
        return None
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class ConversionError(RuntimeError):
    """Nothing could be converted, the source is not the layout its format expects, or OUT cannot be written."""


class RejectError(ValueError):
    """An input that cannot be converted; its message becomes the reason in ``rejects.jsonl``."""


@dataclass(frozen=True)
class SourceItem:
    """One input found in the source, before it is read. A multi-label input has ``label`` -1 and its
    ``findings`` in class order: 1 positive, 0 negative, -1 unknown."""

    key: str
    label: int
    source: str  # the path the user would recognise, relative to SRC
    ref: Any  # what the format's loader needs (a relative path, or a file and a row)
    patient_id: str | None = None
    split: str | None = None  # the dataset's official split, where it has one
    meta: Mapping[str, Any] = field(default_factory=dict)
    size_hint: int = 0  # bytes on disk, to plan shards under --shard-bytes
    stamp: str = ""  # what says the input changed (size and mtime_ns, or an ETag): part of the resume fingerprint
    findings: tuple[int, ...] | None = None  # multi-label: 1 / 0 / -1 (unknown) per class

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


@dataclass(frozen=True)
class ReadRules:
    """What every format applies to every input: frame choice, size limits, and paths that are never inputs."""

    frames: str = "middle"  # multi-frame DICOM and multi-page images: middle frame, every frame, or reject the file
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    exclude: tuple[str, ...] = ()  # filesystem paths (OUT when it lies inside SRC) whose contents are never scanned
    channels: int | None = None  # the channels every sample will have (a format may relax a check for it)

    def __post_init__(self) -> None:
        if self.frames not in FRAME_CHOICES:
            raise ValueError(f"--frames must be one of {', '.join(FRAME_CHOICES)}, got {self.frames!r}")
        if self.max_pixels < 1:
            raise ValueError(f"--max-pixels must be at least 1, got {self.max_pixels}")
        if self.max_file_bytes < 1:
            raise ValueError(f"--max-file-bytes must be at least 1, got {self.max_file_bytes}")


DEFAULT_RULES = ReadRules()


@dataclass
class LoadedImage:
    """Pixels read from one input: ``(H, W)`` uint8/uint16 or ``(H, W, 3)`` uint8/uint16, plus an optional ROI
    (and, for multi-label inputs, optional per-finding ROIs as one bit mask).

    ``frames`` holds every kept frame when an input gives more than one (``--frames all``); ``image`` is then the
    first of them. ``notes`` are short facts counted in the summary (a window ignored, a frame chosen).
    """

    image: np.ndarray
    roi: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    frames: list[np.ndarray] | None = None
    notes: list[str] = field(default_factory=list)
    rois: np.ndarray | None = None  # multi-label: (H, W) uint8, bit k = finding k's pixels (the rois.png member)


@dataclass
class Discovery:
    """Everything found in a source: inputs to convert and inputs already known to be bad."""

    class_names: list[str]
    items: list[SourceItem]
    rejects: list[Reject]
    official_splits: bool = False
    has_roi: bool = False
    preshuffle: bool = True  # PCam files are shuffled already and read in row order
    notes: dict[str, int] = field(default_factory=dict)  # facts of the scan for the summary (links followed, ...)
    task: str = "multi_class"  # or "multi_label": items carry findings, not a class index
    warnings: list[str] = field(default_factory=list)  # said on stderr at once and kept in the summary
    classes_from: str = ""  # where class names were found (not declared): "the folder names", "the label column"

    @property
    def found(self) -> int:
        return len(self.items) + len(self.rejects)

    @property
    def label_mask(self) -> bool:
        """Multi-label samples carry a mask when any input has an unknown finding (then every sample has one)."""
        return any(item.findings is not None and -1 in item.findings for item in self.items)


class SourceFormat(abc.ABC):
    """A dataset layout. Subclasses are small picklable dataclasses so worker processes can load inputs."""

    name: str = ""
    official_split_help: str = ""  # what ``--split official`` keeps, for formats whose release defines splits

    @classmethod
    def add_cli_options(cls, group: argparse._ArgumentGroup) -> None:
        """Add this format's own ``shard`` flags to ``group`` (shown under the format's heading in ``--help``); a
        format without flags of its own adds none."""
        return None

    @classmethod
    def cli_fields(cls, args: argparse.Namespace) -> dict[str, Any]:
        """Constructor arguments from parsed ``shard`` flags (subclasses extend their parent's)."""
        return {}

    @classmethod
    def from_cli(cls, args: argparse.Namespace) -> SourceFormat:
        """The format configured from the command line; ``--split official`` only where the release has splits."""
        if getattr(args, "split", None) == "official" and not cls.official_split_help:
            raise ValueError(
                f"--split official: the {cls.name} format has no official split; give fractions such as "
                "--split train=0.8,val=0.1,test=0.1"
            )
        return cls(**cls.cli_fields(args))

    @abc.abstractmethod
    def discover(self, src: Location, rules: ReadRules = DEFAULT_RULES) -> Discovery:
        """Find every input below ``src``; raise ``ValueError`` naming what is missing if the layout is wrong."""

    def load_one(self, src: Location, item: SourceItem, rules: ReadRules = DEFAULT_RULES) -> LoadedImage:
        raise NotImplementedError(f"{type(self).__name__} loads inputs in load_many; call that instead")

    def load_many(
        self, src: Location, items: Sequence[SourceItem], rules: ReadRules = DEFAULT_RULES
    ) -> Iterator[LoadedImage | Reject]:
        """One result per item, in order: the pixels, or a reject saying why not."""
        for item in items:
            try:
                yield self.load_one(src, item, rules)
            except Exception as error:  # every decoding library raises its own types: each is a reject
                yield Reject(item.source, describe_error(error), item.key)


def describe_error(error: BaseException) -> str:
    """A one-line reason: RejectError messages as they are, other errors prefixed with their type."""
    text = " ".join(str(error).split()) or "no message"
    return text if isinstance(error, RejectError) else f"{type(error).__name__}: {text}"
