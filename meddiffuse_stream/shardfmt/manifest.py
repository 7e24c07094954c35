"""``dataset.json``: the schema of a shard dataset, read, validated and written in one place.

Everything a loader trusts about a dataset comes from here, so it is checked on open, field by field, with an
error naming the file and the field: types, sane non-negative counts (a shard cannot hold more samples than it has
512-byte headers), unique shard paths that stay inside the dataset root (no absolute path, no ``..``, no other
bucket or scheme), known splits, unique class names, and split totals that agree with the shards.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .safejson import loads_limited

__all__ = [
    "DATASET_JSON",
    "FORMAT_VERSION",
    "INDEX_PARQUET",
    "MAX_MANIFEST_BYTES",
    "MAX_SPLIT_SAMPLES",
    "REJECTS_JSONL",
    "Manifest",
    "ManifestError",
    "ShardInfo",
    "check_relative_path",
    "check_split_name",
    "dump_manifest",
    "parse_manifest",
    "read_manifest",
    "write_manifest",
]

FORMAT_VERSION = 1
DATASET_JSON = "dataset.json"
INDEX_PARQUET = "index.parquet"
REJECTS_JSONL = "rejects.jsonl"
MAX_MANIFEST_BYTES = 256 << 20
MAX_SPLIT_SAMPLES = 2**31 - 1  # the epoch plan holds an entry per sample: beyond this it is an error, not a hang
MIN_SAMPLE_BYTES = 512  # every sample has at least one tar header
_SPLIT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


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


@dataclass(frozen=True)
class Manifest:
    """A validated ``dataset.json``; ``document`` is the whole parsed file (for fields only some jobs read)."""

    where: str
    shards: tuple[ShardInfo, ...]
    class_names: tuple[str, ...] = ()
    has_roi: bool = False
    document: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def splits(self) -> list[str]:
        return list(dict.fromkeys(s.split for s in self.shards if s.split is not None))

    def shards_of(self, split: str) -> tuple[ShardInfo, ...]:
        return tuple(s for s in self.shards if s.split == split)

    def class_counts(self, split: str) -> list[int] | None:
        """Samples per class (in ``class_names`` order) of ``split``, when ``dataset.json`` records them."""
        classes = (self.document.get("splits") or {}).get(split, {}).get("classes")
        if classes is None:
            return None
        return [int(classes.get(name, 0)) for name in self.class_names]


def _fail(where: str, field_name: str, message: str) -> ManifestError:
    return ManifestError(f"{where}: {field_name}: {message}")


def _count(value: Any, where: str, field_name: str, *, optional: bool = False, limit: int | None = None) -> Any:
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise _fail(where, field_name, f"expected a non-negative integer, got {value!r:.60}")
    if value < 0:
        raise _fail(where, field_name, f"must not be negative, got {value}")
    if limit is not None and value > limit:
        raise _fail(where, field_name, f"{value} is more than the {limit} this format allows")
    return value


def check_relative_path(path: Any, where: str, field_name: str) -> str:
    """A shard path that stays below the dataset root: relative, ``/``-separated, no ``..``, no scheme."""
    if not isinstance(path, str) or not path:
        raise _fail(where, field_name, f"expected a relative path, got {path!r:.80}")
    problem = None
    if path.startswith("/") or _SCHEME.match(path):
        problem = "absolute paths and URLs are refused: shard paths are relative to the dataset root"
    elif "\\" in path or "\0" in path or any(ord(c) < 32 for c in path):
        problem = "backslashes and control characters are refused"
    elif any(part in ("", ".", "..") for part in path.split("/")):
        problem = "empty, '.' and '..' path segments are refused: a shard must stay inside the dataset root"
    elif len(path) > 1024:
        problem = "longer than 1024 characters"
    if problem is not None:
        raise _fail(where, field_name, f"{path!r:.120}: {problem}")
    return path


def check_split_name(split: Any, where: str, field_name: str) -> str:
    if not isinstance(split, str) or not _SPLIT.match(split):
        raise _fail(where, field_name, f"expected a split name ([A-Za-z0-9_.-], up to 64), got {split!r:.80}")
    return split


def _shard(entry: Any, where: str, index: int) -> ShardInfo:
    name = f"shards[{index}]"
    if not isinstance(entry, dict):
        raise _fail(where, name, f"expected an object, got {type(entry).__name__}")
    for required in ("path", "split", "samples"):
        if required not in entry:
            raise _fail(where, f"{name}.{required}", "missing")
    path = check_relative_path(entry["path"], where, f"{name}.path")
    split = check_split_name(entry["split"], where, f"{name}.split")
    size = _count(entry.get("bytes"), where, f"{name}.bytes", optional=True)
    samples = _count(entry["samples"], where, f"{name}.samples", limit=MAX_SPLIT_SAMPLES)
    if size is not None and samples * MIN_SAMPLE_BYTES > size:
        raise _fail(where, f"{name}.samples", f"{samples} samples cannot fit in a shard of {size} bytes")
    sha256 = entry.get("sha256")
    if sha256 is not None and (not isinstance(sha256, str) or not _SHA256.match(sha256)):
        raise _fail(where, f"{name}.sha256", f"expected 64 lowercase hex digits or null, got {sha256!r:.80}")
    return ShardInfo(path, samples, size, sha256, split)


def _class_names(document: Mapping[str, Any], where: str) -> tuple[str, ...]:
    names = document.get("class_names", [])
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise _fail(where, "class_names", "expected a list of non-empty strings")
    if len(set(names)) != len(names):
        raise _fail(where, "class_names", f"names repeat: {sorted({n for n in names if names.count(n) > 1})}")
    if "num_classes" in document and document["num_classes"] != len(names):
        raise _fail(where, "num_classes", f"{document['num_classes']!r} but class_names has {len(names)}")
    return tuple(names)


def _check_splits(document: Mapping[str, Any], shards: tuple[ShardInfo, ...], names: tuple[str, ...], where: str):
    stats = document.get("splits")
    if stats is None:
        return
    if not isinstance(stats, dict):
        raise _fail(where, "splits", f"expected an object, got {type(stats).__name__}")
    totals: dict[str, int] = {}
    for index, shard in enumerate(shards):
        if shard.split not in stats:
            raise _fail(where, f"shards[{index}].split", f"{shard.split!r} is not among splits {sorted(stats)}")
        totals[shard.split] = totals.get(shard.split, 0) + shard.samples  # type: ignore[index]
    for split, entry in stats.items():
        check_split_name(split, where, f"splits.{split}")
        if not isinstance(entry, dict):
            raise _fail(where, f"splits.{split}", f"expected an object, got {type(entry).__name__}")
        samples = _count(entry.get("samples"), where, f"splits.{split}.samples", optional=True)
        if samples is not None and samples != totals.get(split, 0):
            raise _fail(where, f"splits.{split}.samples", f"{samples}, but its shards hold {totals.get(split, 0)}")
        classes = entry.get("classes")
        if classes is None:
            continue
        if not isinstance(classes, dict):
            raise _fail(where, f"splits.{split}.classes", "expected an object of class name to count")
        for name, count in classes.items():
            if names and name not in names:
                raise _fail(where, f"splits.{split}.classes", f"{name!r} is not among class_names")
            _count(count, where, f"splits.{split}.classes.{name}")
        if samples is not None and sum(classes.values()) != samples:
            raise _fail(where, f"splits.{split}.classes", f"add up to {sum(classes.values())}, not {samples}")


def parse_manifest(data: bytes, where: str) -> Manifest:
    """A validated :class:`Manifest` from the bytes of ``dataset.json``; :class:`ManifestError` if it is bad."""
    try:
        document = loads_limited(data, max_bytes=MAX_MANIFEST_BYTES)
    except ValueError as error:
        raise ManifestError(f"{where}: not a readable dataset.json: {error}") from None
    if not isinstance(document, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(document).__name__}")
    version = document.get("format_version")
    if version is None:
        raise _fail(where, "format_version", "missing: is this a dataset written by meddiffuse-stream shard?")
    _count(version, where, "format_version")
    if version > FORMAT_VERSION:
        raise _fail(
            where,
            "format_version",
            f"{version}; this meddiffuse-stream reads up to {FORMAT_VERSION}: upgrade the package",
        )
    if "shards" not in document:
        raise _fail(where, "shards", "missing")
    if not isinstance(document["shards"], list):
        raise _fail(where, "shards", f"expected a list, got {type(document['shards']).__name__}")
    shards = tuple(_shard(entry, where, index) for index, entry in enumerate(document["shards"]))
    seen: dict[str, int] = {}
    for index, shard in enumerate(shards):
        if shard.path in seen:
            other = seen[shard.path]
            raise _fail(where, f"shards[{index}].path", f"{shard.path!r} is listed twice (also shards[{other}])")
        seen[shard.path] = index
    for split in dict.fromkeys(s.split for s in shards):
        total = sum(s.samples for s in shards if s.split == split)
        if total > MAX_SPLIT_SAMPLES:
            raise _fail(where, "shards", f"split {split!r} lists {total} samples, more than {MAX_SPLIT_SAMPLES}")
    names = _class_names(document, where)
    _check_splits(document, shards, names, where)
    has_roi = document.get("has_roi", False)
    if not isinstance(has_roi, bool):
        raise _fail(where, "has_roi", f"expected true or false, got {has_roi!r:.40}")
    return Manifest(where, shards, names, has_roi, document)


def read_manifest(location: Any) -> Manifest:
    """The validated ``dataset.json`` of a dataset :class:`~meddiffuse_stream.storage.location.Location`."""
    return parse_manifest(location.read_bytes(DATASET_JSON), location.display(DATASET_JSON))


def dump_manifest(document: Mapping[str, Any]) -> bytes:
    """The bytes written for ``document`` (sorted keys, one space indent: diff-friendly and reproducible)."""
    return (json.dumps(document, indent=1, sort_keys=True) + "\n").encode()


def write_manifest(location: Any, document: Mapping[str, Any]) -> Manifest:
    """Validate ``document`` as a reader would, then write it as ``dataset.json`` (atomically)."""
    data = dump_manifest(document)
    manifest = parse_manifest(data, location.display(DATASET_JSON))
    location.write_bytes(DATASET_JSON, data)
    return manifest
