"""What every batching node shares: chunks made from an upstream node, resumable at a chunk's end.

A subclass writes :meth:`ChunkNode._generate`, which yields ``(chunk, upstream state after the chunk)``; the
state a node reports is the upstream's after the last chunk handed on, so a resume starts at the next chunk.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TypeVar

from torchdata.nodes import BaseNode

__all__ = ["ChunkNode"]

T = TypeVar("T")


class ChunkNode(BaseNode[T]):
    """A node whose items are chunks of ``source``'s; state: ``{"source": upstream state after the last chunk}``."""

    SOURCE_KEY = "source"

    def __init__(self, source: BaseNode[Any]) -> None:
        super().__init__()
        self.source = source
        self._chunks: Iterator[tuple[T, dict[str, Any]]] = iter(())
        self._state: dict[str, Any] = {}

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        self.source.reset(initial_state[self.SOURCE_KEY] if initial_state is not None else None)
        self._state = self.source.state_dict()
        self._chunks = self._generate()

    def get_state(self) -> dict[str, Any]:
        return {self.SOURCE_KEY: self._state}

    def next(self) -> T:
        chunk, self._state = next(self._chunks)
        return chunk

    def _generate(self) -> Iterator[tuple[T, dict[str, Any]]]:
        raise NotImplementedError(f"{type(self).__name__} must define _generate(): yield (chunk, upstream state)")
