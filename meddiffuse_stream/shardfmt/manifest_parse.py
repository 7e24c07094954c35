"""Reading ``dataset.json``: every field checked, with an error naming the file and the field (see
:mod:`.manifest` for what is checked and why)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .labels import parse_label_counts
from .manifest_types import (
    FORMAT_VERSION,
    MAX_MANIFEST_BYTES,
    MAX_SPLIT_SAMPLES,
    MIN_SAMPLE_BYTES,
    TASKS,
    Manifest,
    ManifestError,
    ShardInfo,
    SplitStats,
)
from .safejson import loads_limited

__all__ = ["check_relative_path", "check_split_name", "parse_manifest"]

_SPLIT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


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


def _split_stats(
    document: Mapping[str, Any], shards: tuple[ShardInfo, ...], names: tuple[str, ...], task: str, where: str
) -> dict[str, SplitStats]:
    stats = document.get("splits")
    if stats is None:
        return {}
    if not isinstance(stats, dict):
        raise _fail(where, "splits", f"expected an object, got {type(stats).__name__}")
    totals: dict[str, int] = {}
    for index, shard in enumerate(shards):
        if shard.split not in stats:
            raise _fail(where, f"shards[{index}].split", f"{shard.split!r} is not among splits {sorted(stats)}")
        totals[str(shard.split)] = totals.get(str(shard.split), 0) + shard.samples  # every parsed shard has one
    typed: dict[str, SplitStats] = {}
    for split, entry in stats.items():
        check_split_name(split, where, f"splits.{split}")
        if not isinstance(entry, dict):
            raise _fail(where, f"splits.{split}", f"expected an object, got {type(entry).__name__}")
        samples = _count(entry.get("samples"), where, f"splits.{split}.samples", optional=True)
        if samples is not None and samples != totals.get(split, 0):
            raise _fail(where, f"splits.{split}.samples", f"{samples}, but its shards hold {totals.get(split, 0)}")
        patients = _count(entry.get("patients"), where, f"splits.{split}.patients", optional=True)
        shard_count = _count(entry.get("shards"), where, f"splits.{split}.shards", optional=True)
        classes, labels = entry.get("classes"), entry.get("labels")
        if (classes if task == "multi_label" else labels) is not None:
            wrong = "classes" if task == "multi_label" else "labels"
            raise _fail(where, f"splits.{split}.{wrong}", f"does not belong to a {task} dataset")
        if labels is not None:
            try:
                labels = parse_label_counts(labels, names, samples, f"splits.{split}.labels")
            except ValueError as error:
                raise ManifestError(f"{where}: {error}") from None
        if classes is not None:
            if not isinstance(classes, dict):
                raise _fail(where, f"splits.{split}.classes", "expected an object of class name to count")
            for name, count in classes.items():
                if names and name not in names:
                    raise _fail(where, f"splits.{split}.classes", f"{name!r} is not among class_names")
                _count(count, where, f"splits.{split}.classes.{name}")
            if samples is not None and sum(classes.values()) != samples:
                raise _fail(where, f"splits.{split}.classes", f"add up to {sum(classes.values())}, not {samples}")
        typed[split] = SplitStats(samples, patients, shard_count, classes, labels)
    return typed


def _optional_text(document: Mapping[str, Any], key: str, where: str) -> str | None:
    value = document.get(key)
    if value is not None and not isinstance(value, str):
        raise _fail(where, key, f"expected a string or null, got {type(value).__name__}")
    return value


def _flag(document: Mapping[str, Any], key: str, where: str) -> bool:
    value = document.get(key, False)
    if not isinstance(value, bool):
        raise _fail(where, key, f"expected true or false, got {value!r:.40}")
    return value


def _object(document: Mapping[str, Any], key: str, where: str, *, counts: bool = False) -> dict[str, Any]:
    value = document.get(key) or {}
    if not isinstance(value, dict):
        raise _fail(where, key, f"expected an object, got {type(value).__name__}")
    if counts:
        for name, count in value.items():
            _count(count, where, f"{key}.{name}")
    return value


def _task(document: Mapping[str, Any], where: str) -> str:
    task = document.get("task", "multi_class")
    if task not in TASKS:
        raise _fail(where, "task", f"{task!r:.40} is not one of {list(TASKS)}")
    return str(task)


def _label_mask(document: Mapping[str, Any], task: str, stats: Mapping[str, SplitStats], where: str) -> bool:
    mask = _flag(document, "label_mask", where)
    if mask and task != "multi_label":
        raise _fail(where, "label_mask", "only a multi_label dataset has label masks")
    unknown = [s for s, st in stats.items() if st.labels and any(c.unknown for c in st.labels.values())]
    if unknown and not mask:
        raise _fail(where, "label_mask", f"false, but split {unknown[0]!r} counts unknown labels")
    return mask


def _warnings(document: Mapping[str, Any], where: str) -> tuple[str, ...]:
    value = document.get("warnings") or []
    if not isinstance(value, list) or not all(isinstance(w, str) for w in value):
        raise _fail(where, "warnings", "expected a list of strings")
    return tuple(value)


_KNOWN_FIELDS = frozenset(
    {
        "format_version",
        "name",
        "source_format",
        "created_by",
        "task",
        "class_names",
        "num_classes",
        "has_roi",
        "label_mask",
        "official_splits",
        "options",
        "counts",
        "notes",
        "warnings",
        "splits",
        "shards",
    }
)


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
    task = _task(document, where)
    if task == "multi_label" and not names:
        raise _fail(where, "class_names", "a multi_label dataset names its findings; the list is empty")
    stats = _split_stats(document, shards, names, task, where)
    return Manifest(
        where,
        shards,
        names,
        has_roi=_flag(document, "has_roi", where),
        task=task,
        label_mask=_label_mask(document, task, stats, where),
        split_stats=stats,
        name=_optional_text(document, "name", where),
        source_format=_optional_text(document, "source_format", where),
        created_by=_optional_text(document, "created_by", where),
        official_splits=_flag(document, "official_splits", where),
        options=_object(document, "options", where),
        counts=_object(document, "counts", where, counts=True),
        notes=_object(document, "notes", where, counts=True),
        warnings=_warnings(document, where),
        extra={k: v for k, v in document.items() if k not in _KNOWN_FIELDS},
    )
