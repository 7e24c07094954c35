"""Worker processes (or threads) running a :class:`WorkerChain`: started lazily, commanded per epoch, closed fast.

Each command ``(generation, plan, start)`` makes a worker produce its batches of one epoch; batches of an older
generation still in flight are dropped on arrival. ``close()`` returns within about half a second whatever the
workers are doing: it asks them to stop, waits briefly, then kills what is left (they only read). The pool also
closes when its last reference goes (a ``weakref.finalize``: the loader holds no reference cycle, so that is when
the loader is dropped, not at the next cyclic collection) and at interpreter exit, never from a forked copy of the
process; pickled, it keeps its settings and starts afresh.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import threading
import time
import weakref
from typing import Any

from ...counters import Counters, is_sample_counter
from ...options import WorkerOptions
from ..errors import LoaderDataError, WorkerDiedError
from ..plan import EpochPlan
from .chain_protocol import BuildsWorkerNodes
from .channel import WorkerGone, batch_channel
from .lifecycle import close_at_exit
from .messages import MessageKind
from .worker_loop import Box, worker_loop

__all__ = ["WorkerPool"]
_POLL_SECONDS = 0.1
_GRACE_SECONDS = 0.25


class WorkerPool:
    """``count`` workers of ``method`` ("process" or "thread") each holding at most ``prefetch`` batches."""

    def __init__(
        self,
        chain: BuildsWorkerNodes,
        count: int,
        options: WorkerOptions,
    ) -> None:
        self.chain = chain
        self.count = count
        self.method = options.method
        self.prefetch = options.prefetch
        self.mp_context = options.mp_context
        self.worker_init_fn = options.init_fn
        self._handles: _Handles | None = None
        self._finalizer: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_handles", "_finalizer")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _handles=None, _finalizer=None)

    @property
    def started(self) -> bool:
        return self._handles is not None

    @property
    def generation(self) -> int:
        """Commands sent to the workers so far (each new epoch or position is one)."""
        return self._handles.generation.value if self._handles is not None else 0

    @property
    def pids(self) -> list[int]:
        """Process ids of the workers (empty for threads or before they start)."""
        if self._handles is None or self.method != "process":
            return []
        return [w.pid for w in self._handles.workers]

    def send(self, plan: EpochPlan, starts: list[int]) -> None:
        """Every worker drops what it was doing and produces ``plan`` from its sample ``starts[worker]``."""
        handles = self._start()
        handles.generation.value += 1
        for worker, commands in enumerate(handles.commands):
            commands.put((handles.generation.value, plan, starts[worker]))

    def receive(
        self, worker: int, timeout: float = 0.0, where: str = "", counters: Counters | None = None
    ) -> tuple[Any, dict[str, int]]:
        """The next batch of ``worker`` for the current command, and the counter changes that came with it.

        Storage events (retries, fetches) that came with batches of a left epoch or with an error are added to
        ``counters`` right away: they happened, whoever wanted the batch.
        """
        handles = self._handles
        if handles is None:
            raise RuntimeError("the worker pool is closed")
        results = handles.results[worker]
        waited = 0.0
        while True:
            try:
                generation, kind, payload, delta = results.get(timeout=_POLL_SECONDS)
            except WorkerGone:
                handles.workers[worker].join(timeout=5.0)  # its exit code, for the message below
                self._check_alive(worker, where)
                raise WorkerDiedError(f"decode worker {worker} closed its batch channel {where}") from None
            except queue.Empty:
                waited += _POLL_SECONDS
                self._check_alive(worker, where)
                if timeout and waited >= timeout:
                    raise TimeoutError(
                        f"decode worker {worker} ({self.method}) sent no batch in {timeout:g} s {where} (timeout=)"
                    ) from None
                continue
            if kind != MessageKind.CHUNK or generation != handles.generation.value:
                if counters is not None:
                    counters.update({name: value for name, value in delta.items() if not is_sample_counter(name)})
            if generation != handles.generation.value:
                continue  # prefetched for an epoch or position that was left
            if kind == MessageKind.CHUNK:
                return payload, delta
            if kind == MessageKind.DATA:
                raise LoaderDataError(payload)
            raise RuntimeError(f"decode worker {worker} ({self.method}) failed {where}: {payload}")

    def _check_alive(self, worker: int, where: str) -> None:
        process = self._handles.workers[worker]  # type: ignore[union-attr]
        if self.method == "process" and not process.is_alive():
            raise WorkerDiedError(
                f"decode worker {worker} (pid {process.pid}) died with exit code {process.exitcode} {where}; "
                "a negative code is the signal that killed it (-9: out of memory or killed)"
            )

    def _start(self) -> _Handles:
        if self._handles is not None:
            return self._handles
        handles = _Handles(self.method)
        if self.method == "process":
            context: Any = multiprocessing.get_context(self.mp_context)  # a fork, spawn or forkserver context
            handles.generation = context.Value("q", 0, lock=False)
            use_pdeathsig = threading.current_thread() is threading.main_thread()
            for worker in range(self.count):
                commands = context.Queue()
                commands.cancel_join_thread()  # a command for a dead worker never holds up our exit
                sender, receiver = batch_channel(context, self.prefetch)
                process = context.Process(
                    target=worker_loop,
                    name=f"meddiffuse-decode-{worker}",
                    daemon=True,
                    args=(
                        worker,
                        self.chain,
                        commands,
                        sender,
                        handles.generation,
                        os.getpid(),
                        use_pdeathsig,
                        self.worker_init_fn,
                    ),
                )
                process.start()
                receiver.worker_started()
                handles.add(process, commands, receiver)
        else:
            handles.generation = Box()
            for worker in range(self.count):
                tasks: queue.Queue[Any] = queue.Queue()
                done: queue.Queue[Any] = queue.Queue(self.prefetch)
                thread = threading.Thread(
                    target=worker_loop,
                    name=f"meddiffuse-decode-{worker}",
                    daemon=True,
                    args=(worker, self.chain, tasks, done, handles.generation, None, False, self.worker_init_fn),
                )
                thread.start()
                handles.add(thread, tasks, done)
        self._handles = handles
        self._finalizer = weakref.finalize(self, handles.close)
        close_at_exit(self)
        return handles

    def close(self) -> None:
        """Stop the workers now (under a second); the pool starts new ones if it is used again."""
        if self._finalizer is not None:
            self._finalizer()
        self._handles, self._finalizer = None, None


class _Handles:
    """The live parts of a pool: what ``close`` needs, without a reference back to the pool."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.owner = os.getpid()  # a fork of this process inherits the handles (and this close) but not the workers
        self.generation: Any = None
        self.workers: list[Any] = []
        self.commands: list[Any] = []
        self.results: list[Any] = []

    def add(self, worker: Any, commands: Any, results: Any) -> None:
        self.workers.append(worker)
        self.commands.append(commands)
        self.results.append(results)

    def close(self) -> None:
        if os.getpid() != self.owner:  # a forked copy: the workers and their queues belong to the process that
            return  # started them (touching them here would stop its workers or fail: "can only test a child")
        self.generation.value += 1  # workers stop producing at their next batch or put
        for commands in self.commands:
            with contextlib.suppress(Exception):
                commands.put_nowait(None)
        if self.method == "thread":  # daemon threads: they end at their next step and never block an exit
            self._drain()
            return
        deadline = time.monotonic() + _GRACE_SECONDS
        while any(w.is_alive() for w in self.workers) and time.monotonic() < deadline:
            time.sleep(0.01)  # workers see the new generation at their next batch or put (0.1 s at most)
        for worker in self.workers:
            if worker.is_alive():
                worker.kill()  # they only read: nothing to lose, and a stuck read must not stall the caller
        for worker in self.workers:
            worker.join(timeout=1.0)
        for commands in self.commands:
            with contextlib.suppress(Exception):
                commands.close()
                commands.cancel_join_thread()
        for results in self.results:
            with contextlib.suppress(Exception):
                results.close()

    def _drain(self) -> None:
        """Empty the thread workers' queues (in-process: never a partial message)."""
        for results in self.results:
            with contextlib.suppress(queue.Empty):
                while True:
                    results.get_nowait()
