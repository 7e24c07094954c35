"""The loop a decode worker (process or thread) runs; torch-free, so a spawned process starts fast."""

from __future__ import annotations

import copy
import dataclasses
import sys
import traceback
from typing import Any

from .. import object_reader
from ..counters import Counters
from .chunks import ChunkBuilder, LoaderDataError, StageConfig

__all__ = ["Box", "worker_loop"]


class Box:
    """What a thread worker reads where a process worker reads a shared ``multiprocessing.Value``."""

    def __init__(self) -> None:
        self.value = 0


def worker_loop(
    worker: int, config: StageConfig, commands: Any, results: Any, generation: Any, own_process: bool = False
) -> None:
    """Serve commands until ``None``: each one produces this worker's chunks of one epoch from a position."""
    if own_process:  # a process of its own may read S3 through obstore (see object_reader: threads may not)
        object_reader.allow_in_this_process()
    if "torch" in sys.modules:  # decode work is single-threaded; keep torch from oversubscribing the cores
        sys.modules["torch"].set_num_threads(1)
    # a forked worker must not reuse the parent's storage clients (fsspec's S3 filesystem is not fork-safe):
    # a deep copy rebuilds every Location (its __setstate__ opens a client of this process's own)
    config = copy.deepcopy(config)
    counters = Counters()
    while True:
        command = commands.get()
        if command is None:
            return
        current, epoch, done = command
        try:
            builder = ChunkBuilder(dataclasses.replace(config, plan=dataclasses.replace(config.plan, epoch=epoch)),
                                   worker, counters)  # fmt: skip
            builder.reset({ChunkBuilder.POSITION_KEY: done})
            for chunk in builder:
                if generation.value != current:
                    counters.drop_sample_counts()  # read ahead for nothing; its retries and fetches still count
                    break
                results.put((current, "chunk", chunk, counters.take()))
        except BaseException as error:  # reported to the main process, which raises it with the worker named
            kind = "data" if isinstance(error, LoaderDataError) else "error"
            detail = f"{type(error).__name__}: {error}"
            if kind == "error":
                detail += "\n" + traceback.format_exc(limit=6)
            results.put((current, kind, detail, counters.take()))
