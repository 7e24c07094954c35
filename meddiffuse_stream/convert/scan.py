"""Finding and reading input files safely: regular files only, links followed without loops, OUT never an input.

A FIFO, socket or device below SRC (or named by a manifest) is refused from its ``stat`` and never opened: opening a
FIFO blocks forever and ``/dev/zero`` never ends. Symbolic links are followed wherever they point — a folder of links
into a shared store, git-annex and DataLad trees are ordinary datasets — and a link back into a folder already
scanned is not followed twice. Every file above ``max_file_bytes`` is refused before it is read.

On object stores there are no links or special files; an object's stamp is its ETag.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from dataclasses import dataclass, field

from ..storage import Location
from ..storage.local_files import special_kind
from .base import ReadRules, RejectError

__all__ = [
    "FileScan",
    "FoundFile",
    "check_file",
    "is_excluded",
    "is_hidden",
    "list_remote",
    "read_input",
    "relative_under",
    "scan_files",
    "scan_notes",
    "stamp_of",
]


@dataclass(frozen=True)
class FoundFile:
    """A regular file: its size and what says it changed (``size:mtime_ns`` locally, the ETag on object stores)."""

    size: int
    stamp: str


@dataclass
class FileScan:
    """What a scan found below a folder, by path relative to the location's root."""

    files: dict[str, FoundFile] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)  # special files, files over the cap, broken links
    links: int = 0  # symbolic links followed
    loops: list[str] = field(default_factory=list)  # folder links into a folder already scanned: not followed
    excluded: int = 0  # entries inside OUT, never scanned


def scan_notes(scan: FileScan) -> dict[str, int]:
    """The scan's facts for the conversion summary."""
    notes = {
        "symbolic links followed": scan.links,
        "folder links not followed (they lead back into a folder already scanned)": len(scan.loops),
        "entries inside OUT not scanned": scan.excluded,
    }
    return {note: count for note, count in notes.items() if count}


def is_hidden(path: str) -> bool:
    """Dot-files and dot-folders (``.DS_Store``, ``.git``, editor backups) are not inputs."""
    return any(part.startswith(".") for part in path.split("/"))


def is_excluded(path: str, rules: ReadRules) -> bool:
    """True when ``path`` (a real local path or an object key) lies in one of the excluded folders (OUT)."""
    return any(path == top or path.startswith(top.rstrip("/") + "/") for top in rules.exclude)


def _classify(st: os.stat_result, rules: ReadRules) -> FoundFile | str:
    if stat.S_ISREG(st.st_mode):
        if st.st_size > rules.max_file_bytes:
            return f"file of {st.st_size} bytes is over the per-file limit of {rules.max_file_bytes} (--max-file-bytes)"
        return FoundFile(st.st_size, f"{st.st_size}:{st.st_mtime_ns}")
    return f"{special_kind(st.st_mode) or 'not a regular file'}, not a regular file: not read"


def _broken_link_reason(path: str) -> str:
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    return (
        f"broken symbolic link (its target {target} is missing; in a git-annex or DataLad tree run "
        "'git annex get' / 'datalad get' first)"
    )


def scan_files(src: Location, relative: str, rules: ReadRules) -> FileScan:
    """Every visible input below ``relative``; fails clearly when that folder does not exist."""
    base = src.path(relative)
    if src.is_local:
        if not os.path.isdir(base):
            raise ValueError(f"{src.display(relative)} does not exist or is not a folder: check the SRC argument")
        return _scan_local(src, base, rules)
    if not src.exists(relative):  # bounded and retried by the location's RetryPolicy
        raise ValueError(f"{src.display(relative)} does not exist: check the SRC argument")
    return _scan_remote(src, base, rules)


def _scan_local(src: Location, base: str, rules: ReadRules) -> FileScan:
    scan = FileScan()
    root_prefix = src.root.rstrip("/") + "/"
    top = os.stat(base)
    visited = {(top.st_dev, top.st_ino)}
    pending = [base]
    while pending:
        folder = pending.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except PermissionError as error:
            raise PermissionError(f"cannot list {folder}: permission denied") from error
        for entry in entries:
            if entry.name.startswith("."):
                continue
            relative = entry.path[len(root_prefix) :] if entry.path.startswith(root_prefix) else entry.path
            link = entry.is_symlink()
            try:
                st = os.stat(entry.path)  # follows links; lstat is not needed: entry.is_symlink() says it was one
            except FileNotFoundError:
                scan.refused[relative] = _broken_link_reason(entry.path)
                continue
            except OSError as error:
                if error.errno == errno.ELOOP:
                    scan.refused[relative] = "symbolic link loop: the link resolves to itself"
                    continue
                raise
            if rules.exclude and is_excluded(os.path.realpath(entry.path), rules):
                scan.excluded += 1
                continue
            scan.links += int(link)
            if stat.S_ISDIR(st.st_mode):
                if (st.st_dev, st.st_ino) in visited:
                    scan.loops.append(relative)
                    continue
                visited.add((st.st_dev, st.st_ino))
                pending.append(entry.path)
                continue
            found = _classify(st, rules)
            if isinstance(found, FoundFile):
                scan.files[relative] = found
            else:
                scan.refused[relative] = found
    scan.files = dict(sorted(scan.files.items()))
    return scan


def _scan_remote(src: Location, base: str, rules: ReadRules) -> FileScan:
    scan = FileScan()
    prefix = src.root.rstrip("/") + "/"
    for path, found in src.retrying(lambda: list_remote(src.fs, base, rules), base).items():  # retried listing
        relative = path[len(prefix) :]
        if not path.startswith(prefix) or is_hidden(relative):
            continue
        if found == _INSIDE_OUT:
            scan.excluded += 1
        elif isinstance(found, FoundFile):
            scan.files[relative] = found
        else:
            scan.refused[relative] = found
    return scan


_INSIDE_OUT = "the file lies inside OUT: a dataset is not its own input"


def list_remote(fs: object, base: str, rules: ReadRules) -> dict[str, FoundFile | str]:
    """Every object below ``base`` (one listing), classified: the file, or why it is not an input."""
    found: dict[str, FoundFile | str] = {}
    for path, info in sorted(fs.find(base, detail=True).items()):  # type: ignore[attr-defined]
        if rules.exclude and is_excluded(path, rules):
            found[path] = _INSIDE_OUT
            continue
        classified = _classify_info(info, rules)
        if classified:
            found[path] = classified
    return found


def _classify_info(info: dict, rules: ReadRules) -> FoundFile | str:
    kind = info.get("type", "file")
    if kind == "directory":
        return ""
    if kind != "file":
        return f"{kind} entry, not a regular file: not read"
    size = int(info.get("size") or 0)
    if size > rules.max_file_bytes:
        return f"file of {size} bytes is over the per-file limit of {rules.max_file_bytes} (--max-file-bytes)"
    version = info.get("ETag") or info.get("etag") or info.get("LastModified") or info.get("mtime") or ""
    return FoundFile(size, f"{size}:{version}")


def stamp_of(src: Location, path: str) -> str:
    """What says a file changed, without any size cap (large container files such as PCam's HDF5)."""
    if src.is_local:
        st = os.stat(path)
        return f"{st.st_size}:{st.st_mtime_ns}"
    found = _classify_info(src.fs.info(path), ReadRules(max_file_bytes=1 << 62))
    return found.stamp if isinstance(found, FoundFile) else ""


def check_file(src: Location, path: str, rules: ReadRules) -> FoundFile | str:
    """One named file (a manifest row), classified without opening it: the file, or why it is not an input."""
    if src.is_local:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return "referenced file is missing" if not os.path.islink(path) else _broken_link_reason(path)
        except OSError as error:
            if error.errno == errno.ELOOP:
                return "symbolic link loop: the link resolves to itself"
            return f"cannot stat the referenced file ({error.strerror})"
        if rules.exclude and is_excluded(os.path.realpath(path), rules):
            return _INSIDE_OUT
        return _classify(st, rules)
    try:
        info = src.fs.info(path)
    except FileNotFoundError:
        return "referenced file is missing"
    if rules.exclude and is_excluded(path, rules):
        return _INSIDE_OUT
    found = _classify_info(info, rules)
    return found or "referenced path is a folder, not a file"


def read_input(src: Location, path: str, rules: ReadRules, size: int | None = None) -> bytes:
    """The bytes of one input file, at most ``rules.max_file_bytes``; a path that became a FIFO or device since
    the scan is refused from ``fstat`` (opened non-blocking, so opening never hangs). ``size``: what the scan
    found, which sets a remote read's deadline."""
    if not src.is_local:
        data = src.read_path(path, size)  # bounded (a total deadline) and retried by the location's RetryPolicy
        if len(data) > rules.max_file_bytes:
            raise RejectError(
                f"file of {len(data)} bytes is over the per-file limit of {rules.max_file_bytes} (--max-file-bytes)"
            )
        return data
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    descriptor = os.open(path, flags)
    try:
        found = _classify(os.fstat(descriptor), rules)
        if not isinstance(found, FoundFile):
            raise RejectError(found)
        chunks, total = [], 0
        while chunk := os.read(descriptor, min(1 << 24, rules.max_file_bytes + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > rules.max_file_bytes:
                raise RejectError(f"file grew past the per-file limit of {rules.max_file_bytes} while being read")
        return b"".join(chunks)
    finally:
        os.close(descriptor)


def relative_under(base: str, path: str) -> str | None:
    """``path`` joined under ``base`` and normalised, or ``None`` when it leaves ``base`` (``..``, absolute)."""
    joined = posixpath.normpath(posixpath.join(base, path))
    if joined != base and not joined.startswith(base.rstrip("/") + "/"):
        return None
    return joined
