"""Opening a shard dataset for the loader: the shards of one split, where they live, and what the dataset says.

Finding the shards (``dataset.json``, a shard index, a folder, glob, brace pattern or URL list) is the shard
format's business (:mod:`meddiffuse_stream.shardfmt.sources`); here a split is chosen. ``split=None`` means
``"train"`` where every shard has a split (recorded, or named in its path: ``train/…``, ``x-val-0.tar``), every
shard where none has one, and the one split of named shards (a glob, brace pattern or URL list); a source that
would mix splits — shards with a split beside shards without, or named shards of several splits — is refused,
naming the splits it saw. Naming a split of a source whose shards carry none is an error, not ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..shardfmt.manifest import ShardInfo
from ..shardfmt.sources import ShardSet, find_shards
from ..storage import Location, RetryPolicy

__all__ = ["DatasetSource", "ShardInfo", "open_dataset"]


@dataclass(frozen=True)
class DatasetSource:
    """The shards of one split and where they live; picklable, so worker processes open their own streams."""

    location: Location
    split: str | None
    shards: tuple[ShardInfo, ...]
    class_names: tuple[str, ...] = ()
    has_roi: bool = False
    class_counts: tuple[int, ...] | None = None  # samples per class in this split, where dataset.json has them
    origin: str = "dataset.json"
    task: str = "multi_class"  # dataset.json's: "multi_label" samples carry finding vectors
    label_mask: bool = False  # multi-label samples carry masks (some findings are unknown)
    confined: bool = True  # listed by a manifest: a local shard must not be a link out of the root (checked on open)

    @property
    def total(self) -> int:
        return sum(s.samples for s in self.shards)

    def __len__(self) -> int:
        """Samples in the split (``len(loader.dataset)``, as with a DataLoader)."""
        return self.total

    def describe(self, index: int) -> str:
        return self.location.display(self.shards[index].path)


def open_dataset(
    source: str | Sequence[str],
    split: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    *,
    retry: RetryPolicy | None = None,
    on_retry: Callable[[BaseException], None] | None = None,
    link_root: str | None = None,
) -> DatasetSource:
    """The shards of ``split`` of ``source`` (see :func:`~meddiffuse_stream.shardfmt.sources.find_shards`)."""
    found = find_shards(source, storage_options, retry=retry, on_retry=on_retry, link_root=link_root)
    splits = found.splits
    unsplit = [s for s in found.shards if s.split is None]
    if split is not None:
        shards = tuple(s for s in found.shards if s.split == split)
        if not splits:
            why = (
                "a glob, brace pattern or list of URLs that names shards without a split in their names"
                if found.named
                else "its shards carry no split (no train/, val/ folders, no train or val in their names, no split "
                "in its index)"
            )
            raise ValueError(
                f"split={split!r} has no meaning for {found.where}: {why}; leave split= out to read "
                "every shard, or point at the split's own shards"
            )
        if not shards:
            raise ValueError(f"{found.where}: no shards for split {split!r}; the dataset has {splits}")
        return _chosen(found, split, shards)
    if not splits:
        return DatasetSource(
            found.location,
            None,
            found.shards,
            found.class_names,
            found.has_roi,
            None,
            found.origin,
            *_labels(found),
            confined=found.confined,
        )
    if unsplit or (found.named and len(splits) > 1):
        other = f" and {len(unsplit)} shard(s) without one (e.g. {unsplit[0].path})" if unsplit else ""
        raise ValueError(
            f"{found.where} holds shards of the splits {splits}{other}: split=None would read them as one set "
            f"(validation data in training). Pass split= one of {splits}, or name only the shards you mean"
        )
    if found.named:  # the user named shards of one split: all of them
        return _chosen(found, splits[0], found.shards, named=True)
    chosen = "train"
    shards = tuple(s for s in found.shards if s.split == chosen)
    if not shards:
        raise ValueError(f"{found.where}: no shards for split {chosen!r}; the dataset has {splits}")
    return _chosen(found, chosen, shards)


def _chosen(found: ShardSet, split: str, shards: tuple[ShardInfo, ...], named: bool = False) -> DatasetSource:
    counts = found.manifest.class_counts(split) if found.manifest is not None and not named else None
    return DatasetSource(
        found.location,
        split,
        shards,
        found.class_names,
        found.has_roi,
        tuple(counts) if counts is not None else None,
        found.origin,
        *_labels(found),
        confined=found.confined,
    )


def _labels(found: ShardSet) -> tuple[str, bool]:
    manifest = found.manifest
    return (manifest.task, manifest.label_mask) if manifest is not None else ("multi_class", False)
