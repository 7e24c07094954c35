"""``meddiffuse-stream index``: a shard index for WebDataset shards written by anyone, so loaders need not read them.

Every shard is read once: counted (with the same rules the loader's reader uses, so the counts always agree;
gzip-compressed shards decompressed as they stream), sized and hashed (as stored). Shards that are symbolic links
are indexed under the link's name, as the loader lists them. The index goes next to the shards
(``shardindex.json``, found by a loader pointed at the folder) or anywhere else (``--out``, for a bucket you cannot
write), with URLs relative to where it is written when the shards are below it and absolute otherwise. Damaged
shards (cut short, corrupt headers) are named and no index is written: an index must describe the shards as they
are.
"""

from __future__ import annotations

import concurrent.futures
import posixpath
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..storage import Location, RetryPolicy
from .manifest import DATASET_JSON, ManifestError, ShardInfo
from .shardindex import SHARD_INDEX, confine_to_bucket, dump_shard_index, parse_shard_index, shard_index_document
from .sources import inspect_shard, list_shards, with_path_splits

__all__ = ["IndexSummary", "build_shard_index"]


@dataclass(frozen=True)
class IndexSummary:
    written: str
    shards: int
    samples: int
    bytes: int
    splits: dict[str, int]

    def table(self) -> str:
        parts = "  ".join(f"{name} {count}" for name, count in self.splits.items())
        return (
            f"indexed {self.shards} shards, {self.samples} samples, {self.bytes / 1e6:.1f} MB"
            f"{'  (' + parts + ')' if parts else ''}\nwrote {self.written}"
        )


def _out_target(out: str | None, root: Location) -> tuple[str, str]:
    """(folder URL, file name) where the index goes."""
    if out is None:
        return root.url, SHARD_INDEX
    if out.endswith(".json"):
        folder, name = posixpath.split(out)
        return folder or ".", name
    return out, SHARD_INDEX


def build_shard_index(
    source: str | Sequence[str],
    out: str | None = None,
    *,
    name: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    workers: int = 4,
    retry: RetryPolicy | None = None,
    progress: Callable[[int], None] | None = None,
    link_root: str | None = None,
) -> IndexSummary:
    """Read every shard of ``source`` and write its shard index (see the module docstring); shards that are
    symbolic links are followed inside ``link_root`` (default: the folder named), as the loader follows them."""
    from .._version import __version__

    def locate(url: str) -> Location:
        return Location(url, storage_options, retry=retry)

    root, found, where, named = list_shards(source, locate, link_root)
    if any(path == DATASET_JSON for path, _ in found):
        raise ValueError(
            f"{where} is a meddiffuse-stream dataset: its dataset.json already lists every shard with "
            "its count and sha256, no index is needed"
        )
    paths = [path for path, _ in found if named or path != SHARD_INDEX]
    if not paths:
        raise FileNotFoundError(f"{where}: no shards (.tar, .tar.gz, .tgz) to index")

    def one(path: str) -> tuple[ShardInfo, Any]:
        info, problem, _ = inspect_shard(root, path, digest=True)
        if progress is not None:
            progress(1)
        return info, problem

    with concurrent.futures.ThreadPoolExecutor(max(1, min(workers, len(paths)))) as pool:
        results = list(pool.map(one, paths))
    damaged = [f"{root.display(info.path)}: {problem.reason}" for info, problem in results if problem is not None]
    if damaged:
        raise ManifestError(
            f"{len(damaged)} damaged shard(s), no index written (fix or remove them first): " + "; ".join(damaged[:5])
        )
    shards = [info for info, _ in results]
    shards = list(with_path_splits(shards))  # what the loader would read from the paths, recorded
    folder_url, file_name = _out_target(out, root)
    target = locate(folder_url)
    beside = target.is_local == root.is_local and target.root.rstrip("/") == root.root.rstrip("/")
    absolute = root.path if root.is_local else root.display  # a local folder given as a relative path: made absolute
    listed = shards if beside else [replace(s, path=absolute(s.path)) for s in shards]
    document = shard_index_document(listed, name=name, created_by=f"meddiffuse-stream {__version__}")
    data = dump_shard_index(document)
    parse_shard_index(data, target.display(file_name), confined=beside)  # what a loader will accept
    if not target.is_local and not beside:
        urls = [s.path if "://" in s.path else f"file://{s.path}" for s in listed]
        confine_to_bucket(urls, target.url, target.display(file_name))
    target.write_bytes(file_name, data)
    splits: dict[str, int] = {}
    for shard in shards:
        if shard.split is not None:
            splits[shard.split] = splits.get(shard.split, 0) + shard.samples
    return IndexSummary(
        target.display(file_name),
        len(shards),
        sum(s.samples for s in shards),
        sum(s.bytes or 0 for s in shards),
        splits,
    )
