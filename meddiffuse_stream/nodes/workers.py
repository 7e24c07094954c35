"""The worker stage: chunk builders in persistent processes or threads (or inline), read back in plan order.

Workers live as long as the loader: a new epoch or a restore sends each one a command ``(generation, epoch,
samples already done)``; chunks of an older generation still in flight are dropped. Workers read ahead: they start
on the first epoch when the pool is built and on the next one as soon as an epoch's last chunk is handed over. A
worker that dies raises an error naming it and its exit code instead of hanging the training loop.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import queue
import threading
import weakref
from typing import Any

from torchdata.nodes import BaseNode

from ..counters import Counters, is_sample_counter
from .chunks import ChunkBuilder, LoaderDataError, StageConfig
from .worker_loop import Box, worker_loop

__all__ = ["WorkerDiedError", "WorkerPool"]

METHODS = ("process", "thread")
_POLL_SECONDS = 1.0


class WorkerDiedError(RuntimeError):
    """A decode worker process ended without finishing its chunks."""


class WorkerPool(BaseNode):
    """Yields the rank's chunks (= batches) in plan order; state ``{"epoch", "batches"}``."""

    EPOCH_KEY = "epoch"
    BATCHES_KEY = "batches"

    def __init__(
        self,
        config: StageConfig,
        *,
        method: str = "process",
        prefetch: int = 2,
        mp_context: str = "spawn",
        counters: Counters | None = None,
    ) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"worker method must be one of {METHODS}, got {method!r}")
        self.config = config
        self.method = method
        self.prefetch = max(1, prefetch)
        self.mp_context = mp_context
        self.counters = counters if counters is not None else Counters()
        self._epoch = config.plan.epoch
        self._batches = 0
        self._schedule: list[int] = []
        self._builders: list[ChunkBuilder] = []
        self._workers: list[Any] = []
        self._commands: list[Any] = []
        self._results: list[Any] = []
        self._generation: Any = None
        self._finalizer: Any = None
        self._ahead: tuple[int, int, list[int]] | None = None

    @property
    def inline(self) -> bool:
        return self.config.plan.num_workers == 0

    def plan(self, epoch: int | None = None):
        return dataclasses.replace(self.config.plan, epoch=self._epoch if epoch is None else epoch)

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        state = initial_state or {self.EPOCH_KEY: self._epoch, self.BATCHES_KEY: 0}
        epoch, batches = int(state[self.EPOCH_KEY]), int(state[self.BATCHES_KEY])
        ahead, self._ahead = self._ahead, None
        self._epoch, self._batches = epoch, batches
        if ahead is not None and ahead[:2] == (epoch, batches):
            self._schedule = ahead[2]  # the workers are already producing it
            return
        plan = self.plan()
        self._schedule = plan.schedule()
        done = plan.skips(self._batches)
        if self.inline:
            config = dataclasses.replace(self.config, plan=plan)
            self._builders = [ChunkBuilder(config, 0, self.counters)]
            self._builders[0].reset({ChunkBuilder.POSITION_KEY: done[0]})
            return
        self._send(epoch, done)

    def read_ahead(self, epoch: int, batches: int = 0) -> None:
        """Set the workers to work on where the next ``reset`` will most likely start.

        Called when the loader is built (spawning, imports and the first shard fetches overlap the caller's model
        set-up) and when an epoch's last chunk is handed over (the next epoch's first shards arrive during the last
        step). A ``reset`` to anywhere else drops what was read ahead; each worker holds at most ``prefetch`` chunks.
        """
        if self.inline:
            return
        plan = self.plan(epoch)
        self._send(epoch, plan.skips(batches))
        self._ahead = (epoch, batches, plan.schedule())

    def _send(self, epoch: int, done: list[int]) -> None:
        self._ensure_started()
        self._generation.value += 1
        for worker, commands in enumerate(self._commands):
            commands.put((self._generation.value, epoch, done[worker]))

    def get_state(self) -> dict[str, Any]:
        return {self.EPOCH_KEY: self._epoch, self.BATCHES_KEY: self._batches}

    def next(self) -> dict[str, Any]:
        if self._batches >= len(self._schedule):
            raise StopIteration
        worker = self._schedule[self._batches]
        chunk = next(self._builders[0]) if self.inline else self._receive(worker)
        self._batches += 1
        if self._batches == len(self._schedule):
            self.read_ahead(self._epoch + 1)
        return chunk

    def _receive(self, worker: int) -> dict[str, Any]:
        results = self._results[worker]
        while True:
            try:
                generation, kind, payload, delta = results.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                self._check_alive(worker)
                continue
            if generation != self._generation.value:  # read ahead for an epoch or position that was left:
                self.counters.update({k: v for k, v in delta.items() if not is_sample_counter(k)})  # its I/O happened
                continue
            self.counters.update(delta)
            if kind == "chunk":
                return payload
            if kind == "data":
                raise LoaderDataError(payload)
            raise RuntimeError(f"decode worker {worker} ({self.method}) failed: {payload}")

    def _check_alive(self, worker: int) -> None:
        process = self._workers[worker]
        if self.method == "process" and not process.is_alive():
            raise WorkerDiedError(
                f"decode worker {worker} (pid {process.pid}) died with exit code {process.exitcode} "
                f"in the worker stage while producing epoch {self._epoch}, batch {self._batches}; "
                "a negative code is the signal that killed it (-9: out of memory or killed)"
            )

    def _ensure_started(self) -> None:
        if self._workers:
            return
        count = self.config.plan.num_workers
        if self.method == "process":
            context = multiprocessing.get_context(self.mp_context)
            self._generation = context.Value("q", 0)
            make_queue = context.Queue
            start = lambda *args: context.Process(target=worker_loop, args=(*args, True), daemon=True)  # noqa: E731
        else:
            self._generation = Box()
            make_queue = queue.Queue
            start = lambda *args: threading.Thread(target=worker_loop, args=args, daemon=True)  # noqa: E731
        for worker in range(count):
            commands, results = make_queue(), make_queue(self.prefetch)
            handle = start(worker, self.config, commands, results, self._generation)
            handle.start()
            self._workers.append(handle)
            self._commands.append(commands)
            self._results.append(results)
        self._finalizer = weakref.finalize(
            self, _shutdown, self.method, self._workers, self._commands, self._results, self._generation
        )

    def close(self) -> None:
        """Stop the workers; the pool starts new ones if it is used again."""
        if self._finalizer is not None:
            self._finalizer()
        self._workers, self._commands, self._results, self._finalizer = [], [], [], None
        self._ahead = None


def _shutdown(method: str, workers: list[Any], commands: list[Any], results: list[Any], generation: Any) -> None:
    generation.value += 1  # workers stop producing at their next chunk
    for command_queue in commands:
        try:
            command_queue.put(None)
        except (OSError, ValueError):
            continue
    for result_queue in results:  # unblock workers waiting to hand over a chunk
        try:
            while True:
                result_queue.get_nowait()
        except (queue.Empty, OSError, ValueError):
            pass
    for worker in workers:
        worker.join(timeout=5)
        if method == "process" and worker.is_alive():
            worker.terminate()
            worker.join(timeout=5)
