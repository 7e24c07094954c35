"""The typed ``dataset.json``: its constants, :class:`Manifest`, :class:`ShardInfo`, :class:`SplitStats` and
:class:`ManifestError` — what :mod:`.manifest_parse` builds from bytes and :mod:`.manifest` writes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .labels import LabelCounts

__all__ = [
    "DATASET_JSON",
    "FORMAT_VERSION",
    "INDEX_PARQUET",
    "MAX_MANIFEST_BYTES",
    "MAX_SPLIT_SAMPLES",
    "MIN_SAMPLE_BYTES",
    "REJECTS_JSONL",
    "TASKS",
    "Manifest",
    "ManifestError",
    "ShardInfo",
    "SplitStats",
]

FORMAT_VERSION = 1
DATASET_JSON = "dataset.json"
INDEX_PARQUET = "index.parquet"
REJECTS_JSONL = "rejects.jsonl"
MAX_MANIFEST_BYTES = 256 << 20
MAX_SPLIT_SAMPLES = 2**31 - 1  # the epoch plan holds an entry per sample: beyond this it is an error, not a hang
MIN_SAMPLE_BYTES = 512  # every sample has at least one tar header


class ManifestError(ValueError):
    """A ``dataset.json`` or shard index that breaks the format; the message names the file and the field."""


@dataclass(frozen=True)
class ShardInfo:
    """One shard: its path below the dataset root, sample count and, where known, size, sha256 and split."""

    path: str
    samples: int
    bytes: int | None = None
    sha256: str | None = None
    split: str | None = None


TASKS = ("multi_class", "multi_label")


@dataclass(frozen=True)
class SplitStats:
    """What ``dataset.json`` records of one split: samples, patients, shards and samples per class — or, for a
    multi-label dataset, per class its positive / negative / unknown samples (``labels``)."""

    samples: int | None = None
    patients: int | None = None
    shards: int | None = None
    classes: Mapping[str, int] | None = None
    labels: Mapping[str, LabelCounts] | None = None

    def to_document(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"samples": self.samples, "patients": self.patients, "shards": self.shards}
        if self.classes is not None:
            entry["classes"] = dict(self.classes)
        if self.labels is not None:
            entry["labels"] = {name: counts.to_document() for name, counts in self.labels.items()}
        return {k: v for k, v in entry.items() if v is not None}


@dataclass(frozen=True)
class Manifest:
    """A validated ``dataset.json``: the one typed schema every writer builds and every reader gets.

    Build one with :func:`build_manifest`, change one with :func:`dataclasses.replace`, write it with
    :func:`write_manifest`; ``extra`` keeps fields this version does not know (a newer writer's, or a job's such as
    ``subset_of``) so an edit never drops them.
    """

    where: str
    shards: tuple[ShardInfo, ...]
    class_names: tuple[str, ...] = ()
    has_roi: bool = False
    task: str = "multi_class"
    label_mask: bool = False  # multi-label samples carry a mask (some findings are unknown)
    split_stats: Mapping[str, SplitStats] = field(default_factory=dict)
    name: str | None = None
    source_format: str | None = None
    created_by: str | None = None
    official_splits: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)
    counts: Mapping[str, int] = field(default_factory=dict)
    notes: Mapping[str, int] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def splits(self) -> list[str]:
        return list(dict.fromkeys(s.split for s in self.shards if s.split is not None))

    def shards_of(self, split: str) -> tuple[ShardInfo, ...]:
        return tuple(s for s in self.shards if s.split == split)

    def class_counts(self, split: str) -> list[int] | None:
        """Samples per class (in ``class_names`` order) of ``split``, when ``dataset.json`` records them (a
        multi-label dataset records :meth:`label_counts` instead)."""
        stats = self.split_stats.get(split)
        if stats is None or stats.classes is None:
            return None
        return [int(stats.classes.get(name, 0)) for name in self.class_names]

    def label_counts(self, split: str) -> list[LabelCounts] | None:
        """Multi-label: per class (in ``class_names`` order) the positive / negative / unknown samples of ``split``."""
        stats = self.split_stats.get(split)
        if stats is None or stats.labels is None:
            return None
        return [stats.labels[name] for name in self.class_names]

    def to_document(self) -> dict[str, Any]:
        """The JSON object written as ``dataset.json``."""
        document: dict[str, Any] = {
            **self.extra,
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "source_format": self.source_format,
            "created_by": self.created_by,
            "task": self.task,
            "class_names": list(self.class_names),
            "num_classes": len(self.class_names),
            "has_roi": self.has_roi,
            "label_mask": self.label_mask,
            "official_splits": self.official_splits,
            "options": dict(self.options),
            "counts": dict(self.counts),
            "notes": dict(sorted(self.notes.items())),
            "warnings": list(self.warnings),
            "splits": {name: stats.to_document() for name, stats in self.split_stats.items()},
            "shards": [
                {"path": s.path, "split": s.split, "samples": s.samples, "bytes": s.bytes, "sha256": s.sha256}
                for s in self.shards
            ],
        }
        return document
