"""The variant cache: diffusion variants (and frozen-teacher saliency maps) computed once, read every epoch.

An entry is keyed by ``(sample key, content hash, producer id and version, strength, index)``, so a changed image
or a retrained generator never reads a stale entry. Entries live in a local folder or any fsspec URL; each file is
the sha256 of its payload followed by a ``.npy`` payload (float16, loaded with ``allow_pickle=False``), so a corrupt
entry is detected, counted and regenerated. If the location turns out not to be writable, the stage keeps
generating and warns once.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..counters import Counters
from ..storage import Location

__all__ = ["VariantCache", "content_hash", "entry_name"]

_DIGEST = 32


def content_hash(image: torch.Tensor) -> str:
    """A short hash of an image's pixels (as float16, the precision entries are stored at)."""
    return hashlib.sha256(image.detach().to("cpu", torch.float16).numpy().tobytes()).hexdigest()[:16]


def entry_name(key: str, content: str, producer: str, strength: float, index: int) -> str:
    return f"{producer}/s{strength:g}/{key}-{content}-{index}.bin"


class VariantCache:
    """Get and put arrays by entry name; counters ``hits``, ``misses``, ``corrupt``, ``written``."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None,
                 counters: Counters | None = None) -> None:  # fmt: skip
        self.location = Location(url, storage_options)
        self.counters = counters if counters is not None else Counters()
        self.writable = True

    def __getstate__(self) -> dict[str, Any]:
        return {"location": self.location, "writable": self.writable}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.location, self.writable, self.counters = state["location"], state["writable"], Counters()

    def get(self, name: str) -> np.ndarray | None:
        try:
            data = self.location.read_bytes(name)
        except FileNotFoundError:
            self.counters["cache_misses"] += 1
            return None
        payload = data[_DIGEST:]
        if len(data) < _DIGEST or hashlib.sha256(payload).digest() != data[:_DIGEST]:
            self.counters["cache_corrupt"] += 1
            return None
        try:
            array = np.load(io.BytesIO(payload), allow_pickle=False)
        except ValueError:
            self.counters["cache_corrupt"] += 1
            return None
        self.counters["cache_hits"] += 1
        return array

    def put(self, name: str, array: np.ndarray) -> bool:
        """Store ``array``; ``False`` (and one warning) when the location cannot be written."""
        if not self.writable:
            return False
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(array, dtype=np.float16), allow_pickle=False)
        payload = buffer.getvalue()
        try:
            parent = name.rsplit("/", 1)[0]
            self.location.makedirs(parent)
            self.location.write_bytes(name, hashlib.sha256(payload).digest() + payload)
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
