"""``dataset.json``: the schema of a shard dataset, read, validated and written in one place.

Everything a loader trusts about a dataset comes from here, so it is checked on open, field by field, with an
error naming the file and the field: types, sane non-negative counts (a shard cannot hold more samples than it has
512-byte headers), unique shard paths that stay inside the dataset root (no absolute path, no ``..``, no other
bucket or scheme), known splits, unique class names, and split totals that agree with the shards.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from .labels import count_findings
from .manifest_parse import check_relative_path, check_split_name, parse_manifest
from .manifest_types import (
    DATASET_JSON,
    FORMAT_VERSION,
    INDEX_PARQUET,
    MAX_MANIFEST_BYTES,
    MAX_SPLIT_SAMPLES,
    MIN_SAMPLE_BYTES,
    REJECTS_JSONL,
    TASKS,
    Manifest,
    ManifestError,
    ShardInfo,
    SplitStats,
)

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
    "build_manifest",
    "check_relative_path",
    "check_split_name",
    "dump_manifest",
    "parse_manifest",
    "read_manifest",
    "split_stats",
    "write_manifest",
]


def build_manifest(shards: Sequence[ShardInfo], **fields_: Any) -> Manifest:
    """A new :class:`Manifest` for a writer (validated when written); ``where`` is set from where it is written."""
    return Manifest(where="(not yet written)", shards=tuple(shards), **fields_)


def split_stats(
    rows: Sequence[Mapping[str, Any]],
    shards: Sequence[ShardInfo],
    class_names: Sequence[str],
    task: str = "multi_class",
) -> dict[str, SplitStats]:
    """Per-split statistics from ``index.parquet`` rows (``split``, ``class_name`` or, multi-label, ``labels`` of
    1 / 0 / -1, ``patient_id``, ``source``)."""
    stats: dict[str, SplitStats] = {}
    for split in dict.fromkeys(s.split for s in shards if s.split is not None):
        in_split = [row for row in rows if row["split"] == split]
        classes, labels = None, None
        if task == "multi_label":
            labels = count_findings([row["labels"] for row in in_split], class_names)
        else:
            counts = Counter(row["class_name"] for row in in_split)
            classes = {c: counts.get(c, 0) for c in class_names}
        stats[split] = SplitStats(
            samples=len(in_split),
            # frames of one file share a source; a sample without patient or source is its own patient
            patients=len({row.get("patient_id") or row.get("source") or row["key"] for row in in_split}),
            shards=sum(1 for s in shards if s.split == split),
            classes=classes,
            labels=labels,
        )
    return stats


def read_manifest(location: Any) -> Manifest:
    """The validated ``dataset.json`` of a dataset :class:`~meddiffuse_stream.storage.location.Location`."""
    return parse_manifest(location.read_bytes(DATASET_JSON), location.display(DATASET_JSON))


def dump_manifest(document: Mapping[str, Any]) -> bytes:
    """The bytes written for ``document`` (sorted keys, one space indent: diff-friendly and reproducible)."""
    return (json.dumps(document, indent=1, sort_keys=True) + "\n").encode()


def write_manifest(location: Any, manifest: Manifest | Mapping[str, Any]) -> Manifest:
    """Validate ``manifest`` as a reader would, then write it as ``dataset.json`` (atomically); returns it as read
    back. A plain mapping is accepted for documents built by hand (tests, repairs)."""
    document = manifest.to_document() if isinstance(manifest, Manifest) else manifest
    data = dump_manifest(document)
    manifest = parse_manifest(data, location.display(DATASET_JSON))
    location.write_bytes(DATASET_JSON, data)
    return manifest
