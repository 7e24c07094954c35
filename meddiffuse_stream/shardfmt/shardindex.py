"""Shard indexes for WebDataset shards written by anyone: webdataset's ``wids`` JSON, which this project writes too.

A shard index lists every shard with its sample count, so a loader can plan an epoch without reading the shards
(one small GET instead of a full download on object storage). The format is ``wids``'
(``{"__kind__": "wids-shard-index-v1", "wids_version": 1, "shardlist": [{"url", "nsamples", "filesize"}]}``),
so webdataset's ``ShardListDataset`` reads ours and we read its; ``meddiffuse-stream index`` adds ``sha256`` and
``split`` to each entry. Relative URLs resolve against ``base`` or the index's own folder.

Confinement: an index found beside the shards names only paths below its folder. An index given as the source
may use ``base`` and absolute URLs (one written with ``--out`` for a read-only bucket), but an index that lives on
object storage names only shards in its own bucket, on the same scheme (:func:`confine_to_bucket`): it cannot make
the loader read another bucket, or a local file, with the user's credentials.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .manifest import (
    MAX_MANIFEST_BYTES,
    MAX_SPLIT_SAMPLES,
    MIN_SAMPLE_BYTES,
    ManifestError,
    ShardInfo,
    check_relative_path,
    check_split_name,
    dump_manifest,
)
from .safejson import loads_limited

__all__ = [
    "SHARD_INDEX",
    "WIDS_KIND",
    "ShardIndex",
    "confine_to_bucket",
    "dump_shard_index",
    "parse_shard_index",
    "shard_index_document",
]

SHARD_INDEX = "shardindex.json"  # the name webdataset's widsindex writes by default
WIDS_KIND = "wids-shard-index-v1"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MD5 = re.compile(r"^[0-9a-f]{32}$")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_DEFLATE_RATIO = 1032  # the most deflate compresses: a gzip shard of N bytes holds at most ~1032 N of tar


@dataclass(frozen=True)
class ShardIndex:
    """A validated shard index; ``shards[i].path`` is the URL as written (see :func:`resolve_url`)."""

    where: str
    shards: tuple[ShardInfo, ...]
    name: str | None = None
    base: str | None = None

    def resolve_url(self, url: str, folder: str) -> str:
        """Where a listed URL points: absolute as written, else below ``base`` or the index's ``folder``."""
        if _URL.match(url) or url.startswith("/"):
            return url
        root = self.base if self.base is not None else folder
        return posixpath.join(root.rstrip("/"), url) if root else url


def confine_to_bucket(urls: Sequence[str], index_url: str, where: str) -> None:
    """An index on object storage (``index_url``, its folder) may name only objects in its own bucket, on the
    same scheme: :class:`ManifestError` naming the first entry that leaves it. Local indexes are not checked here
    (the user's own file, like the command line)."""
    protocol, _, rest = index_url.partition("://")
    if not rest or protocol in ("file", "local"):
        return
    bucket = rest.split("/", 1)[0]
    family = {"s3", "s3a"} if protocol in ("s3", "s3a") else {protocol}
    for position, url in enumerate(urls):
        scheme, _, path = url.partition("://")
        parts = path.split("/")
        if not path or scheme not in family or parts[0] != bucket or ".." in parts or "" in parts[1:]:
            raise _fail(
                where,
                f"shardlist[{position}].url",
                f"resolves to {_shown(url)}: an index on object storage names only shards in its own bucket "
                f"({protocol}://{bucket}), never another bucket or a local file (it would read them with your "
                "credentials); keep the index beside its shards, or on local disk",
            )


def _shown(url: str) -> str:
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in url[:120])


def _fail(where: str, field_name: str, message: str) -> ManifestError:
    return ManifestError(f"{where}: {field_name}: {message}")


def _count(value: Any, where: str, field_name: str, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _fail(where, field_name, f"expected a non-negative integer, got {value!r:.60}")
    if value > MAX_SPLIT_SAMPLES and field_name.endswith("nsamples"):
        raise _fail(where, field_name, f"{value} is more than the {MAX_SPLIT_SAMPLES} this format allows")
    return value


def parse_shard_index(data: bytes, where: str, *, confined: bool) -> ShardIndex:
    """Validate a wids shard index. ``confined``: every URL must be a relative path below the index's folder
    (an index found next to the shards may not point elsewhere); otherwise ``base`` and absolute URLs are allowed
    (an index the user names, e.g. one written for a read-only bucket)."""
    try:
        document = loads_limited(data, max_bytes=MAX_MANIFEST_BYTES)
    except ValueError as error:
        raise ManifestError(f"{where}: not a readable shard index: {error}") from None
    if not isinstance(document, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(document).__name__}")
    if document.get("wids_version") != 1:
        raise _fail(where, "wids_version", f"expected 1 (a wids shard index), got {document.get('wids_version')!r:.40}")
    if document.get("datasets"):
        raise _fail(
            where, "datasets", "sub-datasets (source_url indirection) are not read: list every shard in one shardlist"
        )
    entries = document.get("shardlist")
    if not isinstance(entries, list) or not entries:
        raise _fail(where, "shardlist", "expected a non-empty list of {url, nsamples} objects")
    base = document.get("base")
    if base is not None and (confined or not isinstance(base, str) or not base):
        raise _fail(where, "base", "only an index given as the source may set base" if confined else "expected a URL")
    shards = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        name = f"shardlist[{index}]"
        if not isinstance(entry, dict) or "url" not in entry or "nsamples" not in entry:
            raise _fail(where, name, "expected an object with url and nsamples")
        url = entry["url"]
        if confined:
            check_relative_path(url, where, f"{name}.url")
        elif not isinstance(url, str) or not url or any(ord(c) < 32 for c in url):
            raise _fail(where, f"{name}.url", f"expected a URL or path, got {url!r:.80}")
        elif not (_URL.match(url) or url.startswith("/")):
            check_relative_path(url, where, f"{name}.url")  # relative: it must stay below base or the folder
        if url in seen:
            raise _fail(where, f"{name}.url", f"{url!r} is listed twice (also shardlist[{seen[url]}])")
        seen[url] = index
        samples = _count(entry["nsamples"], where, f"{name}.nsamples")
        size = _count(entry.get("filesize"), where, f"{name}.filesize", optional=True)
        stored = size * (_DEFLATE_RATIO if url.endswith((".gz", ".tgz")) else 1) if size is not None else None
        if stored is not None and samples * MIN_SAMPLE_BYTES > stored:  # type: ignore[operator]
            raise _fail(where, f"{name}.nsamples", f"{samples} samples cannot fit in a shard of {size} bytes")
        sha256 = entry.get("sha256")
        if sha256 is not None and (not isinstance(sha256, str) or not _SHA256.match(sha256)):
            raise _fail(where, f"{name}.sha256", f"expected 64 lowercase hex digits, got {sha256!r:.80}")
        md5 = entry.get("md5sum")
        if md5 is not None and (not isinstance(md5, str) or not _MD5.match(md5)):
            raise _fail(where, f"{name}.md5sum", f"expected 32 lowercase hex digits, got {md5!r:.80}")
        split = entry.get("split")
        if split is not None:
            check_split_name(split, where, f"{name}.split")
        shards.append(ShardInfo(url, samples, size, sha256, split))  # type: ignore[arg-type]
    label = document.get("name")
    return ShardIndex(where, tuple(shards), label if isinstance(label, str) else None, base)


def shard_index_document(shards: Sequence[ShardInfo], *, name: str | None, created_by: str) -> dict[str, Any]:
    """A wids shard index for ``shards`` (``path`` written as ``url``), with this project's extra fields."""
    shardlist = []
    for shard in shards:
        entry: dict[str, Any] = {"url": shard.path, "nsamples": shard.samples, "filesize": shard.bytes}
        if shard.sha256 is not None:
            entry["sha256"] = shard.sha256
        if shard.split is not None:
            entry["split"] = shard.split
        shardlist.append(entry)
    document: dict[str, Any] = {"__kind__": WIDS_KIND, "wids_version": 1, "shardlist": shardlist}
    if name:
        document["name"] = name
    document["created_by"] = created_by
    return document


def dump_shard_index(document: dict[str, Any]) -> bytes:
    return dump_manifest(document)
