"""What a worker sends the loader: one message per batch, per data error and per failure."""

from __future__ import annotations

import enum
from typing import Any, NamedTuple

__all__ = ["MessageKind", "WorkerMessage"]


class MessageKind(enum.IntEnum):
    CHUNK = 0  # a batch (its arrays in shared segments for a process worker)
    DATA = 1  # bad data met with on_error="raise": the loader raises LoaderDataError with it
    FAILURE = 2  # anything else that stopped the worker's pass: the loader raises it, naming the worker


class WorkerMessage(NamedTuple):
    """``generation``: the command it answers (older ones are read ahead for nothing and dropped); ``counts``: the
    counters the worker moved while making it."""

    generation: int
    kind: MessageKind
    payload: Any
    counts: dict[str, int]
