"""Counters a loader exposes: samples yielded, skipped by reason, padded, retries, cache hits."""

from __future__ import annotations

from collections import Counter

__all__ = ["Counters"]


class Counters(Counter):
    """A ``Counter`` of events; ``skipped`` is also kept per reason as ``skipped:<reason kind>``."""

    def skip(self, kind: str, count: int = 1) -> None:
        self["skipped"] += count
        self[f"skipped:{kind}"] += count

    def as_dict(self) -> dict[str, int]:
        return {name: int(value) for name, value in sorted(self.items())}
