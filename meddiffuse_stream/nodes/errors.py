"""Errors the loader's stages raise: bad data the user asked to hear about, and a worker that died."""

from __future__ import annotations

__all__ = ["LoaderDataError", "WorkerDiedError"]


class LoaderDataError(RuntimeError):
    """Bad data met with ``on_error="raise"``; the message names the shard and the key."""


class WorkerDiedError(RuntimeError):
    """A decode worker process ended without finishing its batches."""
