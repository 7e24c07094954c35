"""Opening a shard dataset: its ``dataset.json`` (one read, no listing) or a brace pattern of tar URLs."""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..format import DATASET_JSON, FORMAT_VERSION
from ..storage import Location
from .tar import RawSample, iter_samples

__all__ = ["DatasetSource", "ShardInfo", "expand_braces", "open_dataset"]

_BRACE = re.compile(r"\{(\d+)\.\.(\d+)\}")


@dataclass(frozen=True)
class ShardInfo:
    path: str  # relative to the dataset root
    samples: int
    bytes: int | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class DatasetSource:
    """The shards of one split and where they live; picklable, so worker processes open their own streams."""

    location: Location
    split: str
    shards: tuple[ShardInfo, ...]
    class_names: tuple[str, ...] = ()
    has_roi: bool = False

    @property
    def total(self) -> int:
        return sum(s.samples for s in self.shards)

    def __len__(self) -> int:
        """Samples in the split (``len(loader.dataset)``, as with a DataLoader)."""
        return self.total

    def describe(self, index: int) -> str:
        return self.location.display(self.shards[index].path)


def expand_braces(pattern: str) -> list[str]:
    """``train-{000000..000002}.tar`` → the three names (zero padding kept); several ranges multiply."""
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    first, last = match.group(1), match.group(2)
    if int(last) < int(first):
        raise ValueError(f"brace range {{{first}..{last}}} in {pattern!r} runs backwards")
    width = len(first)
    names = []
    for number in range(int(first), int(last) + 1):
        names.extend(expand_braces(pattern[: match.start()] + str(number).zfill(width) + pattern[match.end() :]))
    return names


def open_dataset(source: str, split: str, storage_options: Mapping[str, Any] | None = None) -> DatasetSource:
    """A dataset directory with ``dataset.json``, or a brace pattern of tar URLs (counted by one pass)."""
    if source.endswith(".tar"):
        return _from_pattern(source, split, storage_options)
    location = Location(source, storage_options)
    try:
        info = json.loads(location.read_bytes(DATASET_JSON))
    except FileNotFoundError as error:
        raise FileNotFoundError(
            f"{location.display(DATASET_JSON)} not found: is {source!r} a dataset written by meddiffuse-stream shard?"
        ) from error
    if info.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{location.display(DATASET_JSON)} is format version {info['format_version']}; this meddiffuse-stream "
            f"reads up to {FORMAT_VERSION}: upgrade the package"
        )
    shards = tuple(
        ShardInfo(s["path"], int(s["samples"]), s.get("bytes"), s.get("sha256"))
        for s in info["shards"]
        if s["split"] == split
    )
    if not shards:
        known = sorted({s["split"] for s in info["shards"]})
        raise ValueError(f"{source}: no shards for split {split!r}; the dataset has {known}")
    return DatasetSource(location, split, shards, tuple(info.get("class_names", ())), bool(info.get("has_roi")))


def _from_pattern(pattern: str, split: str, storage_options: Mapping[str, Any] | None) -> DatasetSource:
    urls = expand_braces(pattern)
    root = posixpath.dirname(urls[0])
    if any(posixpath.dirname(u) != root for u in urls):
        raise ValueError(f"{pattern!r}: every shard of a brace pattern must be in one folder")
    location = Location(root, storage_options)
    shards = []
    for url in urls:
        name = posixpath.basename(url)
        with location.open(name) as stream:
            count = sum(1 for item in iter_samples(stream) if isinstance(item, RawSample))
        shards.append(ShardInfo(name, count))
    return DatasetSource(location, split, tuple(shards))
