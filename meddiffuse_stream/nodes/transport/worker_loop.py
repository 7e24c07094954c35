"""The loop a decode worker (process or thread) runs: build its chain for each command, hand over batches."""

from __future__ import annotations

import copy
import gc
import queue
import sys
import traceback
from collections.abc import Callable
from typing import Any

from ...counters import Counters, is_sample_counter
from ...storage import object_reader
from ..errors import LoaderDataError
from ..reading.shard_stream import DEFAULT_MEMORY_LIMIT
from .chain_protocol import BuildsWorkerNodes
from .heap import keep_freed_memory
from .lifecycle import die_with_parent, restore_default_signals
from .messages import MessageKind, WorkerMessage
from .seeding import WorkerSeeds

__all__ = ["Box", "worker_loop"]

_PUT_SECONDS = 0.1


class Box:
    """What a thread worker reads where a process worker reads a shared ``multiprocessing.Value``."""

    def __init__(self) -> None:
        self.value = 0


def _hand_over(results: Any, item: WorkerMessage, generation: Any) -> bool:
    """Put ``item`` (into a ``BatchSender`` or a thread's queue), waiting for room in bounded steps; False once its
    generation is over (nobody wants it)."""
    while True:
        try:
            results.put(item, timeout=_PUT_SECONDS)
            return True
        except queue.Full:
            if generation.value != item.generation:
                return False


def _keep_storage_counts(counters: Counters, delta: dict[str, int]) -> None:
    """A batch nobody receives: its sample counts are void, its storage events (retries, fetches) still count."""
    counters.drop_sample_counts()
    counters.update({name: value for name, value in delta.items() if not is_sample_counter(name)})


def worker_loop(
    worker: int,
    chain: BuildsWorkerNodes,
    commands: Any,
    results: Any,
    generation: Any,
    parent_pid: int | None = None,
    use_pdeathsig: bool = False,
    worker_init_fn: Callable[[int], None] | None = None,
) -> None:
    """Serve commands ``(generation, plan, start)`` until ``None``: each produces this worker's batches of one
    epoch from sample ``start``. ``parent_pid`` is set in a process of its own. Each command first seeds the
    worker's generators (:mod:`.seeding`); ``worker_init_fn`` runs once, before the first command's work, when
    ``get_worker_info()`` already answers (as in a DataLoader worker)."""
    own_process = parent_pid is not None
    if parent_pid is not None:
        restore_default_signals()
        die_with_parent(parent_pid, use_pdeathsig)
        object_reader.allow_in_this_process()  # a process of its own may read S3 through obstore (threads may not)
        keep_freed_memory(2 * DEFAULT_MEMORY_LIMIT)  # whole shards and batches reuse pages (see heap.py)
        # what the parent built (torch, s3fs clients, ...) moves out of the collector's reach: a full collection
        # in a fresh fork otherwise walks all of it (~0.15 s of CPU per worker with s3fs loaded) and copies the
        # pages it touches
        gc.freeze()
    if "torch" in sys.modules:  # decode work is single-threaded; keep torch from oversubscribing the cores
        sys.modules["torch"].set_num_threads(1)
    # a forked worker must not reuse the parent's storage clients (fsspec's S3 filesystem is not fork-safe):
    # a deep copy rebuilds every Location (its __setstate__ opens a client of this process's own)
    chain = copy.deepcopy(chain)
    counters = Counters()
    allocate = getattr(results, "allocate", None)  # a process's batch arrays go in shared segments
    seeds: WorkerSeeds | None = None
    init_error = None
    while True:
        command = commands.get()
        if command is None:
            return
        current, plan, start = command
        if seeds is None:  # the first command: seeded, torch's worker info set, then the user's init function
            seeds = WorkerSeeds(worker, plan.num_workers, own_process)
            seeds.start_epoch(plan.seed, plan.rank, plan.epoch, chain.source)
            init_error = _run_init(worker_init_fn, worker)
        if init_error is not None:
            _hand_over(results, WorkerMessage(current, MessageKind.FAILURE, init_error, {}), generation)
            continue
        try:
            seeds.start_epoch(plan.seed, plan.rank, plan.epoch, chain.source)
            node = chain.build(plan, worker, start, counters, allocate, seeds)
            node.reset(None)
            for chunk in node:
                if generation.value != current:
                    _keep_storage_counts(counters, {})  # read ahead for nothing
                    break
                delta = counters.take()
                if not _hand_over(results, WorkerMessage(current, MessageKind.CHUNK, chunk, delta), generation):
                    _keep_storage_counts(counters, delta)
                    break
                chunk = None  # its memory goes with the message, not kept here while the next batch decodes
        except BaseException as error:  # reported to the main process, which raises it with the worker named
            kind = MessageKind.DATA if isinstance(error, LoaderDataError) else MessageKind.FAILURE
            detail = f"{type(error).__name__}: {error}"
            if kind == MessageKind.FAILURE:
                detail += "\n" + traceback.format_exc(limit=6)
            _hand_over(results, WorkerMessage(current, kind, detail, counters.take()), generation)


def _run_init(worker_init_fn: Callable[[int], None] | None, worker: int) -> str | None:
    """Run ``worker_init_fn(worker)`` (with the worker's info and seeds already set, as DataLoader runs it); the
    failure to report with the first command, naming the worker, or None."""
    if worker_init_fn is None:
        return None
    try:
        worker_init_fn(worker)
    except Exception as error:
        return f"worker_init_fn failed: {type(error).__name__}: {error}\n" + traceback.format_exc(limit=6)
    return None
