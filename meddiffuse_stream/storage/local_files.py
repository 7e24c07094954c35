"""Local files a dataset names, checked before they are opened.

* Special files are refused from ``stat``, before any ``open``: opening a FIFO for reading blocks until a writer
  appears (forever, for a loader's constructor) and a device such as ``/dev/zero`` never ends. The open itself is
  non-blocking and the file checked again with ``fstat``, so a path swapped for a FIFO in between cannot block
  either.
* Confinement: a path a manifest names (``dataset.json``, a shard index) must resolve — symbolic links followed —
  to a file inside the dataset's root, so a link cannot make the loader read another file with the user's rights.
"""

from __future__ import annotations

import os
import stat
from typing import BinaryIO

__all__ = ["OutsideRootError", "SpecialFileError", "check_inside", "check_regular", "open_regular", "special_kind"]


class SpecialFileError(OSError):
    """A FIFO, socket or device where a file was expected: never opened."""


class OutsideRootError(ValueError):
    """A path that resolves (through a symbolic link) outside the root it must stay in."""


def special_kind(mode: int) -> str | None:
    """What a non-regular, non-directory file is (``"a FIFO (named pipe)"``, ...), or ``None`` for a regular file
    or a directory."""
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    return "not a regular file"


def _refuse(shown: str, kind: str) -> SpecialFileError:
    return SpecialFileError(f"{shown} is {kind}, not a regular file: not opened (reading it could block forever)")


def check_regular(path: str, shown: str) -> os.stat_result:
    """``stat`` of ``path`` (links followed); :class:`SpecialFileError` naming ``shown`` unless it is a regular
    file or a directory. A missing file raises ``FileNotFoundError`` as usual."""
    result = os.stat(path)
    kind = special_kind(result.st_mode)
    if kind is not None:
        raise _refuse(shown, kind)
    return result


def open_regular(path: str, shown: str) -> BinaryIO:
    """``open(path, "rb")`` for a regular file only: checked by ``stat`` first, opened non-blocking and checked
    again by ``fstat`` (a FIFO swapped in between would block a plain open)."""
    check_regular(path, shown)
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            raise _refuse(shown, special_kind(mode) or "a directory")
        if hasattr(os, "set_blocking"):
            os.set_blocking(descriptor, True)  # a regular file: reads block as usual (they never wait on a writer)
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def check_inside(root: str, path: str, shown: str) -> None:
    """:class:`OutsideRootError` unless ``path``, every symbolic link on the way resolved, lies inside ``root``."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if real != real_root and not real.startswith(real_root.rstrip("/") + "/"):
        raise OutsideRootError(
            f"{shown} resolves to {real}, outside the dataset's root {real_root} (a symbolic link leads out): not "
            "read; copy the shard into the dataset, or point the loader at the folder the link leads to"
        )
