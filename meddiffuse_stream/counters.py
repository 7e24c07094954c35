"""Counters a loader exposes: samples yielded, skipped by reason, padded, retries, cache hits."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

__all__ = ["Counters", "is_sample_counter"]


def is_sample_counter(name: str) -> bool:
    """Counters of samples handed over (void when a read-ahead chunk is dropped), not of storage events."""
    return name in ("yielded", "skipped", "padded") or name.startswith(("skipped:", "refused_members:"))


class Counters(Counter):
    """A ``Counter`` of events; ``skipped`` is also kept per reason as ``skipped:<reason kind>``.

    Background threads (a worker's shard read-ahead) count through :meth:`add`, and :meth:`take` empties the
    counters under the same lock, so no event is lost between a read and a reset.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def add(self, name: str, count: int = 1) -> None:
        with self._lock:
            self[name] += count

    def take(self) -> dict[str, int]:
        """Everything counted so far, and start again from zero."""
        with self._lock:
            delta = dict(self)
            self.clear()
        return delta

    def drop_sample_counts(self) -> None:
        """Forget what was counted about samples nobody will receive; storage events stay counted."""
        with self._lock:
            for name in [n for n in self if is_sample_counter(n)]:
                del self[name]

    def skip(self, kind: str, count: int = 1) -> None:
        self.add("skipped", count)
        self.add(f"skipped:{kind}", count)

    def as_dict(self) -> dict[str, int]:
        return {name: int(value) for name, value in sorted(self.items())}
