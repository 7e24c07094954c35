"""Finding a dataset's shards and their sample counts, from whatever the user points at.

- a dataset folder with ``dataset.json`` (one read, no listing);
- a folder or object-store prefix of ``.tar`` files written by anyone (one listing): counts come from the
  ``shardindex.json`` beside them (``meddiffuse-stream index`` writes it) or, without one, from the shards;
- a shard index given directly (``…/anything.json``: webdataset's ``wids`` format, ours included);
- a glob (``data/train-*.tar``), a brace pattern (``train-{000000..000099}.tar``, ``{train,val}-0.tar``) or a
  list of URLs.

Without an index, local shards are counted by walking their tar headers (seeking past the data); remote ones
have to be read whole, and the loader says how many bytes that took and suggests writing an index.

Shards are ``.tar``, ``.tar.gz`` and ``.tgz`` files; what a listing finds and does not read is named in a warning,
and shards that are symbolic links are followed inside the folder named (:mod:`.listing`).

Splits: ``dataset.json`` and indexes written by ``index`` record them; otherwise a shard's path names its split
(``train/…``, ``imagenet-val-000001.tar``: :mod:`.splitnames`), for listed and named shards alike.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import posixpath
import re
import tempfile
import warnings
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import fsspec
import numpy as np

from ..storage import Location, RetryPolicy, StorageNotFoundError
from ..storage.local_files import open_regular
from ..storage.object_stream import open_object
from .compressed import shard_name
from .listing import follow_link, forget_listings, list_folder, list_glob, warn_skipped
from .manifest import DATASET_JSON, Manifest, ManifestError, ShardInfo, read_manifest
from .shardindex import SHARD_INDEX, confine_to_bucket, parse_shard_index
from .splitnames import KNOWN_SPLITS, split_of_path, with_path_splits
from .tar import TarProblem, count_samples

__all__ = [
    "KNOWN_SPLITS",
    "MAX_PATTERN_NAMES",
    "ShardSet",
    "expand_braces",
    "find_shards",
    "inspect_shard",
    "is_pattern",
    "list_shards",
    "split_of_path",
    "with_path_splits",
]

MAX_PATTERN_NAMES = 1_000_000
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(\d+)\.\.(\d+)$")
_GLOB = re.compile(r"[*?\[]")
_HASH_PIECE = 8 << 20


@dataclass(frozen=True)
class ShardSet:
    """Shards found for a source: paths relative to ``location``; ``origin`` says where the counts came from."""

    location: Location
    shards: tuple[ShardInfo, ...]
    origin: str  # "dataset.json", "shard index", "counted", "read to count"
    where: str
    class_names: tuple[str, ...] = ()
    has_roi: bool = False
    manifest: Manifest | None = None
    named: bool = False  # a glob, brace pattern or URL list: the user chose the shards, there are no splits
    confined: bool = False  # listed by a manifest (dataset.json, an index beside them): links must stay in the root

    @property
    def splits(self) -> list[str]:
        return list(dict.fromkeys(s.split for s in self.shards if s.split is not None))


def expand_braces(pattern: str, limit: int = MAX_PATTERN_NAMES) -> list[str]:
    """``train-{000000..000002}.tar`` → three names (zero padding kept); ``{a,b}`` alternatives; several multiply.

    More than ``limit`` names is an error before any is made.
    """
    match = next((m for m in _BRACE.finditer(pattern) if _RANGE.match(m.group(1)) or "," in m.group(1)), None)
    if match is None:
        return [pattern]
    head, tail = pattern[: match.start()], pattern[match.end() :]
    ranged = _RANGE.match(match.group(1))
    if ranged:
        first, last = ranged.group(1), ranged.group(2)
        if int(last) < int(first):
            raise ValueError(f"brace range {{{first}..{last}}} in {pattern!r} runs backwards")
        if int(last) - int(first) + 1 > limit:
            raise ValueError(f"brace range {{{first}..{last}}} in {pattern!r} names more than {limit} shards")
        choices = [str(n).zfill(len(first)) for n in range(int(first), int(last) + 1)]
    else:
        choices = match.group(1).split(",")
    names: list[str] = []
    for choice in choices:
        names.extend(expand_braces(head + choice + tail, limit - len(names)))
        if len(names) > limit:
            raise ValueError(f"{pattern!r} names more than {limit} shards")
    return names


def is_pattern(source: str) -> bool:
    """Whether ``source`` is a glob or brace pattern (it names shards rather than a folder)."""
    return bool(_GLOB.search(source)) or expand_braces(source) != [source]


def _fs_path(url: str) -> tuple[str, str]:
    """(protocol, path as the filesystem names it); local paths made absolute."""
    protocol, path = fsspec.core.split_protocol(url)
    if protocol in (None, "file", "local"):
        return "file", os.path.abspath(os.path.expanduser(path))
    return protocol, path


def _common_root(urls: Sequence[str]) -> tuple[str, list[str]]:
    """The folder URL all ``urls`` share and each one's path below it; one filesystem and bucket only."""
    split = [_fs_path(u) for u in urls]
    protocols = {p for p, _ in split}
    if len(protocols) != 1:
        raise ValueError(f"shards on several filesystems ({sorted(protocols)}): a dataset lives on one")
    protocol = protocols.pop()
    folders = [posixpath.dirname(p) for _, p in split]
    root = posixpath.commonpath(folders) if protocol == "file" else _common_prefix_folder(folders)
    if protocol != "file" and not root:
        raise ValueError(
            f"shards in several buckets ({sorted({f.split('/', 1)[0] for f in folders})}): a dataset lives in one"
        )
    relative = [posixpath.relpath(p, root) for _, p in split]
    return (root if protocol == "file" else f"{protocol}://{root}"), relative


def _common_prefix_folder(folders: list[str]) -> str:
    parts = [f.split("/") for f in folders]
    common: list[str] = []
    for level in zip(*parts, strict=False):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return "/".join(common)


def inspect_shard(location: Location, path: str, *, digest: bool) -> tuple[ShardInfo, TarProblem | None, int]:
    """Count a shard's samples (and hash it with ``digest``): ``(info, fatal problem or None, bytes read)``.

    A local shard is counted from its headers alone (and read once more to hash it); a remote one is read once,
    in pieces, into a spooled temporary file, hashed and counted there.
    """
    sha = hashlib.sha256()
    if location.is_local:
        with open_regular(location.path(path), location.display(path)) as stream:  # a FIFO: refused, never opened
            while digest and (piece := stream.read(_HASH_PIECE)):
                sha.update(piece)
            stream.seek(0)
            count, problem = count_samples(stream)
            size = os.fstat(stream.fileno()).st_size
        return ShardInfo(path, count, size, sha.hexdigest() if digest else None), problem, 0
    with tempfile.SpooledTemporaryFile(max_size=256 << 20) as spool:
        rng = np.random.default_rng(zlib.crc32(path.encode()))
        body = open_object(location, path, size=None, policy=location.retry, rng=rng, on_retry=location.on_retry)
        with body:  # resumed where it broke, each attempt under the object's total deadline
            while piece := body.read(_HASH_PIECE):
                spool.write(piece)
        spool.seek(0)
        while piece := spool.read(_HASH_PIECE):
            sha.update(piece)
        size = spool.tell()
        spool.seek(0)
        count, problem = count_samples(spool)  # type: ignore[arg-type]
    return ShardInfo(path, count, size, sha.hexdigest() if digest else None), problem, size


def _count_all(location: Location, paths: list[str], sizes: Mapping[str, int], where: str, workers: int = 4):
    """Sample counts of ``paths`` (no index): headers of local shards, whole remote ones (with a warning)."""

    def one(path: str) -> tuple[ShardInfo, TarProblem | None, int]:
        return inspect_shard(location, path, digest=False)

    with concurrent.futures.ThreadPoolExecutor(max(1, min(workers, len(paths)))) as pool:
        results = list(pool.map(one, paths))
    for info, problem, _ in results:
        if problem is not None:
            warnings.warn(
                f"{location.display(info.path)}: {problem.reason}; its first {info.samples} samples are used",
                RuntimeWarning,
                stacklevel=3,
            )
    read = sum(r[2] for r in results)
    if read:
        warnings.warn(
            f"{where}: read all {len(paths)} shards ({read:,} bytes) to count their samples, as no shard "
            f"index lists them; run `meddiffuse-stream index {where}` once (with --out elsewhere for a read-only "
            "bucket) and loaders will read one small file instead",
            RuntimeWarning,
            stacklevel=3,
        )
    return [replace(info, bytes=sizes.get(info.path, info.bytes)) for info, _, _ in results]


def list_shards(
    source: str | Sequence[str], locate: Callable[[str], Location], link_root: str | None = None
) -> tuple[Location, list[tuple[str, int | None]], str, bool]:
    """``(root, [(relative path, size or None)], where, named)`` of a folder, glob, brace pattern or URL list
    (no counting); what a folder listing or a glob finds and does not read is named in a warning (see
    :mod:`.listing`, which also follows symbolic links inside ``link_root``). For a folder, also entries for
    ``dataset.json``/``shardindex.json`` when present."""
    if isinstance(source, str) and not shard_name(source) and not is_pattern(source):
        location = locate(source)
        listed = list_folder(location, link_root)
        unfinished = any(p.startswith(".progress/") for p in listed.hidden)
        if unfinished and DATASET_JSON not in listed.files:
            raise FileNotFoundError(
                f"{location.url} holds an unfinished conversion (.progress/ without "
                "dataset.json): re-run meddiffuse-stream shard to finish it"
            )
        warn_skipped(location.url, listed.skipped)
        return location, list(listed.files.items()), location.url, False
    names = [source] if isinstance(source, str) else [str(u) for u in source]
    urls: list[str] = []
    sizes: dict[str, int | None] = {}
    skipped: list[tuple[str, str]] = []
    for name in names:
        for url in expand_braces(name):
            if _GLOB.search(url):
                protocol, path = _fs_path(url)
                static = path[: _GLOB.search(path).start()].rsplit("/", 1)[0]  # type: ignore[union-attr]
                folder = locate(static if protocol == "file" else f"{protocol}://{static}")
                found, others = list_glob(folder, path, link_root or folder.root)
                matched = [p if protocol == "file" else f"{protocol}://{p}" for p in found]
                urls.extend(matched)
                sizes.update(zip(matched, found.values(), strict=True))
                skipped += [(folder.display(p), why) for p, why in others.skipped]
            else:
                urls.append(url)
    warn_skipped(str(source), skipped)
    if not urls:
        raise FileNotFoundError(f"{source!r} matches no shards (.tar, .tar.gz, .tgz)")
    root, relative = _common_root(urls)
    if len(set(relative)) != len(relative):
        raise ValueError(f"{source!r} names a shard twice")
    location = locate(root)
    if location.is_local:  # a named link (not found by a glob, which followed its own) stays inside their folder
        for path, url in zip(relative, urls, strict=True):
            if url not in sizes and os.path.islink(location.path(path)):
                if follow_link(location, path, link_root) is None:
                    raise ValueError(f"{location.display(path)} is a symbolic link to a folder or a special file")
    return location, [(r, sizes.get(u)) for r, u in zip(relative, urls, strict=True)], str(source), True


def find_shards(
    source: str | Sequence[str],
    storage_options: Mapping[str, Any] | None = None,
    *,
    retry: RetryPolicy | None = None,
    on_retry: Callable[[BaseException], None] | None = None,
    link_root: str | None = None,
) -> ShardSet:
    """Every shard of ``source`` with its sample count (see the module docstring for what ``source`` may be);
    shards that are symbolic links are followed inside ``link_root`` (default: the folder named)."""

    def locate(url: str) -> Location:
        return Location(url, storage_options, retry=retry, on_retry=on_retry)

    if isinstance(source, str) and source.endswith(".json"):
        folder, name = posixpath.split(source.rstrip("/"))
        if name == DATASET_JSON:
            return _from_dataset(locate(folder or "."))
        return _from_index_file(locate(folder or "."), name, locate)
    if isinstance(source, str) and not shard_name(source) and not is_pattern(source):
        location = locate(source)
        try:
            return _from_dataset(location)
        except FileNotFoundError:
            pass  # a folder of shards written by anyone: list it
    location, found, where, named = list_shards(source, locate, link_root)
    sizes = {p: n for p, n in found if n is not None}
    paths = [p for p, _ in found if named or p not in (DATASET_JSON, SHARD_INDEX)]  # named: every one, as named
    if not paths:
        nothing = "no dataset.json and no shards (.tar, .tar.gz, .tgz) below it"
        if location.is_local:
            raise FileNotFoundError(f"{where}: {nothing}: is it a dataset folder?")
        raise StorageNotFoundError(
            f"{where} ({location.endpoint}): {nothing}: check the prefix in the URL, and that "
            f"{location.settings.endpoint_setting} names the server that holds it"
        )
    if not named and SHARD_INDEX in sizes:
        index = parse_shard_index(location.read_bytes(SHARD_INDEX), location.display(SHARD_INDEX), confined=True)
        _check_index_matches(index.shards, sizes, paths, location.display(SHARD_INDEX))
        _check_files(location, index.shards, confined=True)
        shards = with_path_splits(list(index.shards))
        return ShardSet(location, shards, "shard index", location.display(SHARD_INDEX), confined=True)
    shards = _count_all(location, paths, sizes, where)
    origin = "read to count" if not location.is_local else "counted"
    return ShardSet(
        location,
        with_path_splits(shards),
        origin,
        where,
        named=named,
    )


def _check_files(location: Location, shards: Sequence[ShardInfo], *, confined: bool) -> None:
    """Every listed local shard, before any is opened: not a FIFO or device, and (``confined``: listed by a
    manifest) not a symbolic link out of the dataset's root. Object stores have neither."""
    if location.is_local:
        for shard in shards:
            location.checked_path(shard.path, confined=confined)


def _from_dataset(location: Location) -> ShardSet:
    forget_listings(location)  # an object store's listing kept from before may not hold dataset.json yet
    manifest = read_manifest(location)
    _check_files(location, manifest.shards, confined=True)
    return ShardSet(
        location,
        manifest.shards,
        "dataset.json",
        manifest.where,
        manifest.class_names,
        manifest.has_roi,
        manifest,
        confined=True,
    )


def _from_index_file(folder: Location, name: str, locate: Callable[[str], Location]) -> ShardSet:
    forget_listings(folder)
    where = folder.display(name)
    index = parse_shard_index(folder.read_bytes(name), where, confined=False)
    urls = [index.resolve_url(s.path, folder.url) for s in index.shards]
    if not folder.is_local:
        confine_to_bucket(urls, folder.url, where)  # before anything it names is touched
    root, relative = _common_root(urls)
    shards = [replace(s, path=r) for s, r in zip(index.shards, relative, strict=True)]
    location = locate(root)
    _check_files(location, shards, confined=False)  # the user's own index may name links: no FIFO, though
    return ShardSet(location, with_path_splits(shards), "shard index", where)


def _check_index_matches(listed: Sequence[ShardInfo], sizes: Mapping[str, int], paths: list[str], where: str) -> None:
    """An index beside the shards must describe exactly those shards, unchanged."""
    indexed = {s.path for s in listed}
    missing = sorted(indexed - set(paths))
    extra = sorted(set(paths) - indexed)
    changed = sorted(s.path for s in listed if s.bytes is not None and sizes.get(s.path, s.bytes) != s.bytes)
    for problem, items in (
        ("lists shards the folder does not hold", missing),
        ("does not list shards the folder holds", extra),
        ("lists other sizes than the folder's for", changed),
    ):
        if items:
            raise ManifestError(
                f"{where}: {problem}: {items[:5]}{' …' if len(items) > 5 else ''}; the shards "
                "changed since it was written: re-run meddiffuse-stream index"
            )
