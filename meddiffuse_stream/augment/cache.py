"""The variant cache: diffusion variants (and frozen-teacher saliency maps) computed once, read every epoch.

An entry is keyed by ``(sample key, content hash, producer id and version, strength, index)``, so a changed image
or a retrained generator never reads a stale entry. Entries live in a local folder or any fsspec URL; a file is a
fixed header (magic, CRC-32 and length of the payload, shape) and raw float16 pixels: nothing is ever unpickled, and
a corrupt or truncated entry is detected, counted and regenerated. If the location turns out not to be writable,
the stage keeps generating and warns once.
"""

from __future__ import annotations

import struct
import warnings
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from ..counters import Counters
from ..storage import Location

__all__ = [
    "VariantCache",
    "cached_batch",
    "content_hash",
    "content_hashes",
    "decode_entry",
    "encode_entry",
    "entry_name",
    "host_to",
]

_MAGIC = b"MDSVAR1\0"
_HEADER = struct.Struct("<8sIQB")  # magic, crc32 of the payload, payload length, number of dimensions


def content_hashes(images: torch.Tensor) -> list[str]:
    """Short hashes of each image's pixels (as float16, the precision entries are stored at), one conversion.

    CRC-32 and Adler-32 together (64 bits): this tells a changed image from the cached one under the same key,
    it is not a defence against someone forging entries.
    """
    pixels = images.detach().to("cpu", torch.float16).numpy()
    return [f"{zlib.crc32(row):08x}{zlib.adler32(row):08x}" for row in pixels]


def content_hash(image: torch.Tensor) -> str:
    return content_hashes(image[None])[0]


def encode_entry(array: np.ndarray) -> bytes:
    payload = np.ascontiguousarray(array, dtype=np.float16).tobytes()
    shape = struct.pack(f"<{array.ndim}I", *array.shape)
    return _HEADER.pack(_MAGIC, zlib.crc32(payload), len(payload), array.ndim) + shape + payload


def decode_entry(data: bytes) -> np.ndarray | None:
    """The stored array, or ``None`` if the entry is corrupt or truncated."""
    if len(data) < _HEADER.size:
        return None
    magic, crc, length, ndim = _HEADER.unpack_from(data)
    start = _HEADER.size + 4 * ndim
    if magic != _MAGIC or len(data) != start + length:
        return None
    payload = memoryview(data)[start:]
    if zlib.crc32(payload) != crc:
        return None
    shape = struct.unpack_from(f"<{ndim}I", data, _HEADER.size)
    if int(np.prod(shape)) * 2 != length:
        return None
    return np.frombuffer(payload, dtype=np.float16).reshape(shape)


def entry_name(key: str, content: str, producer: str, strength: float, index: int | str) -> str:
    return f"{producer}/s{strength:g}/{key}-{content}-{index}.bin"


def host_to(array: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """``array`` as ``like``'s dtype on its device; to CUDA through pinned memory, without blocking the host."""
    tensor = torch.from_numpy(array)
    if like.device.type == "cuda":
        return tensor.pin_memory().to(like.device, non_blocking=True).to(like.dtype)
    return tensor.to(like)


def cached_batch(
    cache: VariantCache | None,
    names: list[str],
    produce: Callable[[torch.Tensor], torch.Tensor],
    like: torch.Tensor,
    counters: Counters | None = None,
    counter: str = "",
) -> torch.Tensor:
    """Entries ``names`` from the cache where present; the rest produced in one batched call and written back.

    ``like`` gives the result's shape, dtype and device; ``produce(rows)`` returns the rows that were missing.
    Everything is rounded to the stored precision (float16) whether or not a cache is set, so a run gives the
    same bytes cold or warm.
    """
    found_rows: list[int] = []
    found: list[np.ndarray] = []
    missing: list[int] = []
    for index, name in enumerate(names):
        entry = cache.get(name) if cache is not None else None
        if entry is not None and entry.shape == tuple(like.shape[1:]):
            found_rows.append(index)
            found.append(entry)
        else:
            missing.append(index)
    if counter and counters is not None:
        counters[counter] += len(names) - len(missing)
    if not missing:  # the warm path: one stack, one conversion
        return host_to(np.stack(found), like)
    out = torch.empty_like(like)
    if found:
        out[torch.as_tensor(found_rows, device=like.device)] = host_to(np.stack(found), like)
    rows = torch.as_tensor(missing, device=like.device)
    produced = produce(rows).to(torch.float16)
    out[rows] = produced.to(like.dtype)
    if cache is not None:
        stored = produced.detach().cpu().numpy()
        for row, position in enumerate(missing):
            cache.put(names[position], stored[row])
    return out


class VariantCache:
    """Get and put arrays by entry name; counters ``cache_hits``, ``cache_misses``, ``cache_corrupt``."""

    def __init__(
        self, url: str, storage_options: Mapping[str, Any] | None = None, counters: Counters | None = None
    ) -> None:
        self.counters = counters if counters is not None else Counters()
        self.location = Location(url, storage_options, on_retry=self._count_retry)  # bounded, retried, counted
        self.writable = True

    def _count_retry(self, _: BaseException) -> None:
        self.counters.add("retries")

    def __getstate__(self) -> dict[str, Any]:
        return {"location": self.location, "writable": self.writable}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.location, self.writable, self.counters = state["location"], state["writable"], Counters()
        self.location.on_retry = self._count_retry

    def get(self, name: str) -> np.ndarray | None:
        try:
            data = self.location.read_bytes(name)
        except FileNotFoundError:
            self.counters["cache_misses"] += 1
            return None
        array = decode_entry(data)
        if array is None:
            self.counters["cache_corrupt"] += 1
            return None
        self.counters["cache_hits"] += 1
        return array

    def put(self, name: str, array: np.ndarray) -> bool:
        """Store ``array``; ``False`` (and one warning) when the location cannot be written."""
        if not self.writable:
            return False
        try:
            parent = name.rsplit("/", 1)[0]
            self.location.makedirs(parent)
            self.location.write_bytes(name, encode_entry(array))
        except (PermissionError, OSError) as error:
            self.writable = False
            warnings.warn(
                f"variant cache {self.location.url} is not writable ({error}); generating variants without "
                "caching them from now on",
                RuntimeWarning,
                stacklevel=2,
            )
            return False
        self.counters["cache_written"] += 1
        return True
