"""Local shards whose sha256 this process has checked, so an unchanged file is not hashed again every epoch.

A shard is verified before any of its samples is used. Hashing costs ~0.65 ns per byte — 4 % of the decode time of
224×224 grey PNGs, every epoch — though a local file that has not changed since this process hashed it cannot
have different bytes. "Unchanged" is the file's identity and change stamps as ``fstat`` gives them on the open
handle: device, inode, size, modification and status-change times (the status-change time cannot be set back by
users; any write, rename over, truncation or ``touch`` moves it). A file that fails the check is never recorded;
remote objects are always hashed (their bytes come over the network); a shard cache verifies on the way in.
"""

from __future__ import annotations

import os
import threading

__all__ = ["already_verified", "remember_verified"]

_LIMIT = 1 << 20  # entries; a dataset with more shards than this is re-hashed for the rest, never trusted wrongly
_verified: dict[tuple[int, int], tuple[int, int, int, str]] = {}
_lock = threading.Lock()


def _stamp(stat: os.stat_result) -> tuple[int, int, int]:
    return stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


def already_verified(stat: os.stat_result, sha256: str) -> bool:
    """Whether the file ``stat`` describes (``os.fstat`` of the open handle) was verified against ``sha256`` in
    this process and has not changed since."""
    with _lock:
        return _verified.get((stat.st_dev, stat.st_ino)) == (*_stamp(stat), sha256)


def remember_verified(stat: os.stat_result, sha256: str) -> None:
    """Record that the file ``stat`` describes (taken before it was read) matched ``sha256``."""
    with _lock:
        if len(_verified) < _LIMIT:
            _verified[(stat.st_dev, stat.st_ino)] = (*_stamp(stat), sha256)
