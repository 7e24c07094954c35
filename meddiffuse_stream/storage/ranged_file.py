"""A seekable read-only file over one stored object, for readers that jump around in it (HDF5).

A stream from ``fs.open`` bounds each request only by the read timeout between bytes, so a server that trickles
the body holds the reader as long as it likes, and a failed request is not retried. Here every read is one ranged
GET through :meth:`.location.Location.read_range`: retried under the location's policy, each attempt bounded by
the total deadline for the bytes it asks for, a missed deadline counted as a retry and, after the attempts, one
error naming the object, the endpoint and the setting. A buffer in front turns HDF5's many small reads into a few
large ranges.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .location import Location

__all__ = ["RANGE_BUFFER_BYTES", "RangedFile", "open_ranged"]

RANGE_BUFFER_BYTES = 8 * 1024 * 1024  # one ranged GET per 8 MiB read sequentially (HDF5 chunks are smaller)


class RangedFile(io.RawIOBase):
    """``relative`` in ``location`` as a raw seekable file of ``size`` bytes: each ``readinto`` is one ranged GET."""

    def __init__(self, location: Location, relative: str, size: int) -> None:
        super().__init__()
        self._location, self._relative, self._size, self._at = location, relative, size, 0

    @property
    def name(self) -> str:
        return self._location.display(self._relative)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._at

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        origin = {io.SEEK_SET: 0, io.SEEK_CUR: self._at, io.SEEK_END: self._size}[whence]
        if origin + offset < 0:
            raise ValueError(f"{self.name}: negative seek position {origin + offset}")
        self._at = origin + offset
        return self._at

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        end = min(self._size, self._at + len(buffer))
        if end <= self._at:
            return 0
        data = self._location.read_range(self._relative, self._at, end)
        if len(data) != end - self._at:
            raise OSError(f"{self.name}: asked for bytes {self._at}-{end}, got {len(data)}: the object changed?")
        buffer[: len(data)] = data
        self._at = end
        return len(data)


def open_ranged(
    location: Location, relative: str, size: int | None = None, buffer_bytes: int = RANGE_BUFFER_BYTES
) -> io.BufferedReader:
    """A buffered seekable file over ``relative``; its size, unless given, is asked once (under the retry policy)."""
    size = location.size(relative) if size is None else size
    return io.BufferedReader(RangedFile(location, relative, size), buffer_size=buffer_bytes)
