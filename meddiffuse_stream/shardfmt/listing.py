"""What a listing of shards finds, and what of it is read — never a shard dropped without a word.

- Shards are files named ``*.tar``, ``*.tar.gz`` or ``*.tgz`` (what stock WebDataset reads); every other file a
  listing or a glob finds is named in one warning — except ``dataset.json`` and ``shardindex.json``, which the
  listing is for, and hidden files and folders (``.gitattributes``, ``.git/``, ``.cache/``), never data.
- A shard that is a symbolic link (a Hugging Face snapshot, git-annex) is followed when its target lies inside
  ``link_root`` — by default the folder the user named; a link that leads outside it, or nowhere, is an error
  naming the link, its target and what to do.
- Every listing is fresh: fsspec keeps the listings of object stores (s3fs's ``dircache``) for the life of the
  process, so a loader made after ``meddiffuse-stream index`` ran, or after another client added a shard, saw the
  old listing (and ``FileNotFoundError`` for files that exist). The cached listings of the root and below are
  dropped before each discovery: one listing request per loader.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import warnings
from dataclasses import dataclass, field
from typing import Any

from ..storage import Location
from .compressed import shard_name
from .manifest import DATASET_JSON
from .shardindex import SHARD_INDEX

__all__ = ["Listed", "forget_listings", "is_shard_path", "list_folder", "list_glob", "warn_skipped"]

_SHOWN = 8  # skipped files named in a warning (then a count)


def is_shard_path(path: str) -> bool:
    """A shard's name, outside hidden files and folders (``.git/…``, ``.cache/…``)."""
    return shard_name(path) and not _hidden(path)


@dataclass
class Listed:
    """``files``: ``{relative path: size}`` of the shards and the listing's own metadata files; ``skipped``:
    ``(relative path, why)`` for everything else found but hidden paths, which are in ``hidden``."""

    files: dict[str, int] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    hidden: list[str] = field(default_factory=list)


def forget_listings(location: Location) -> None:
    """Drop what the filesystem object keeps of earlier listings of ``location`` and below (and its parents)."""
    cache = getattr(location.fs, "dircache", None)
    if cache is None:
        return
    root = location.root.rstrip("/")
    with contextlib.suppress(Exception):  # a listing cache is an optimisation of fsspec's: never fatal here
        for key in [k for k in list(cache) if k == root or str(k).startswith(root + "/")]:
            cache.pop(key, None)
        location.fs.invalidate_cache(root)


def list_folder(location: Location, link_root: str | None = None) -> Listed:
    """Every file below ``location``, sorted into shards (and metadata) and what is skipped (one fresh listing)."""
    forget_listings(location)
    if not location.is_local:
        listed = Listed()
        for path, size in location.file_sizes().items():
            _sort(listed, path, size)
        return listed
    base = location.root
    entries: dict[str, Any] = location.fs.find(base, detail=True) if os.path.exists(base) else {}
    prefix = base.rstrip("/") + "/"
    return _sort_local(location, {p[len(prefix) :]: i for p, i in entries.items() if p.startswith(prefix)}, link_root)


def list_glob(location: Location, pattern: str, link_root: str | None = None) -> tuple[dict[str, int], Listed]:
    """Files matching ``pattern`` (a filesystem path) below ``location``: ``({full path: size} of shards, what
    else matched)``; local symbolic links are followed as in a folder listing."""
    forget_listings(location)
    prefix = location.root.rstrip("/") + "/"
    if not location.is_local:
        found = location.glob_sizes(pattern)
        listed = Listed()
        for path, size in found.items():
            _sort(listed, path[len(prefix) :] if path.startswith(prefix) else path, size, allow_metadata=False)
        return {prefix + p: n for p, n in listed.files.items()}, listed
    entries = location.fs.glob(pattern, detail=True)
    relative = {p[len(prefix) :]: i for p, i in entries.items() if p.startswith(prefix)}
    listed = _sort_local(location, relative, link_root, allow_metadata=False)
    return {prefix + p: n for p, n in listed.files.items()}, listed


def _sort(listed: Listed, path: str, size: int, allow_metadata: bool = True) -> None:
    if _hidden(path):
        listed.hidden.append(path)
    elif allow_metadata and path in (DATASET_JSON, SHARD_INDEX):
        listed.files[path] = size
    elif is_shard_path(path):
        listed.files[path] = size
    else:
        listed.skipped.append((path, _why_not(path)))


def _hidden(path: str) -> bool:
    return any(part.startswith(".") for part in path.split("/"))


def _why_not(path: str) -> str:
    if ".tar." in posixpath.basename(path).lower() or path.lower().endswith((".zip", ".tbz2", ".txz")):
        return "an archive the loader cannot read (only .tar, .tar.gz, .tgz)"
    return "not a shard"


def _sort_local(
    location: Location, entries: dict[str, Any], link_root: str | None, allow_metadata: bool = True
) -> Listed:
    listed = Listed()
    for path, info in sorted(entries.items()):
        kind = info.get("type", "file")
        if kind == "directory":
            continue
        if _hidden(path):
            listed.hidden.append(path)
        elif info.get("islink"):
            if not is_shard_path(path):
                listed.skipped.append((path, "a symbolic link that is not named as a shard"))
                continue
            target = follow_link(location, path, link_root)
            if target is None:
                listed.skipped.append((path, "a symbolic link to a folder or a special file"))
            else:
                listed.files[path] = os.path.getsize(target)
        elif kind != "file":
            listed.skipped.append((path, "not a regular file"))
        else:
            _sort(listed, path, int(info.get("size") or 0), allow_metadata)
    return listed


def follow_link(location: Location, path: str, link_root: str | None) -> str | None:
    """The regular file the link ``path`` (below ``location``) leads to, if it lies inside ``link_root`` (default:
    the location's root); None for a link to a folder or a special file; an error for any other link."""
    link = location.path(path)
    target = os.path.realpath(link)
    root = os.path.realpath(os.path.expanduser(link_root) if link_root is not None else location.root)
    shown = location.display(path)
    if not os.path.exists(target):
        raise FileNotFoundError(
            f"{shown} is a symbolic link to {os.readlink(link)!r}, which does not exist (a git-annex file "
            "not fetched yet? `git annex get` it); remove the link or fetch its target"
        )
    if os.path.commonpath([root, target]) != root:
        common = os.path.commonpath([root, target])
        raise ValueError(
            f"{shown} is a symbolic link to {target}, outside {root}: links are followed only inside the folder "
            f"you name. Pass link_root={common!r} (a folder holding both; `--link-root` for `index`) to follow it"
        )
    return target if os.path.isfile(target) else None


def warn_skipped(where: str, skipped: list[tuple[str, str]], stacklevel: int = 3) -> None:
    """One warning naming what a listing found and does not read (and why), or none if nothing was skipped."""
    if not skipped:
        return
    shown = "; ".join(f"{path} ({why})" for path, why in skipped[:_SHOWN])
    more = f"; and {len(skipped) - _SHOWN} more" if len(skipped) > _SHOWN else ""
    warnings.warn(
        f"{where}: {len(skipped)} file(s) found and not read as shards: {shown}{more}. Shards are .tar, .tar.gz "
        "and .tgz files; name the shards you mean (a glob or list) to leave the rest out without this warning",
        RuntimeWarning,
        stacklevel=stacklevel,
    )
