"""The device stage as a node: augmentation (an ``AugmentStage`` or any object with the same small surface) on
batches in the main process.

On CUDA (or with ``threaded=True``) a thread of its own runs the stage — on CUDA on a side stream: the main
thread pulls batch k+1 from upstream and hands it over before it waits for batch k, so the stage's work overlaps
the training step. Only the main thread touches upstream; the thread only runs the stage. Batches cross from
pinned memory with ``non_blocking=True``; the training stream waits on an event recorded after each batch, and
tensors are recorded on it. Elsewhere the stage runs inline.

What the node uses of a stage: ``stage(batch, details=...) -> batch``, ``stage.device``, ``stage.state_dict()``
and ``stage.load_state_dict(state)``; the loader's settings go in per call (``details``: the saliency and variant
planes too, for ``as_dict``) or around it (``cpu_threads``: torch's intra-op threads while the stage runs on the
CPU — the loader passes the cores its decode workers leave, since a woken torch thread pool spins on the workers'
cores: measured, 2 cores, 2 workers, warm cache, the loader with the stage at 0.48 of the plain loader with torch's
2 threads, 0.6–0.7 with 1; the caller's setting is restored after each batch).
State ``{"source": upstream state after the last batch yielded, "stage": stage state after it}``.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections import deque
from typing import Any

import torch
from torchdata.nodes import BaseNode

from .to_torch import to_device
from .transport.lifecycle import close_at_exit

__all__ = ["DeviceStage", "torch_threads"]

_POLL_SECONDS = 0.1
_IDLE_LIMIT_SECONDS = 600.0


@contextlib.contextmanager
def torch_threads(count: int | None) -> Any:
    """torch's intra-op threads set to ``count`` for the block (None or 0: left as they are)."""
    if not count:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class DeviceStage(BaseNode[dict[str, Any]]):
    """Runs ``stage`` on every upstream batch (host tensors) and yields the augmented batch."""

    SOURCE_KEY = "source"
    STAGE_KEY = "stage"

    def __init__(
        self,
        source: BaseNode[Any],
        stage: Any,
        *,
        details: bool = True,
        cpu_threads: int | None = None,
        depth: int = 2,
        threaded: bool | None = None,
    ) -> None:
        super().__init__()
        self.source = source
        self.stage = stage
        self.details = details
        self.cpu_threads = cpu_threads
        self.depth = max(1, depth)
        self.threaded = torch.device(stage.device).type == "cuda" if threaded is None else threaded
        self._state: dict[str, Any] = {self.SOURCE_KEY: None, self.STAGE_KEY: stage.state_dict()}
        self._runner: _Runner | None = None
        self._retired: _Runner | None = None  # stopped by close() without waiting: joined before the stage is reused
        self._in_flight: deque[dict[str, Any]] = deque()  # upstream states of batches handed to the thread
        self._exhausted = False

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_runner": None, "_retired": None, "_in_flight": deque()}

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        self._stop_runner()  # the stage must be idle before its state is replaced
        if initial_state is not None:
            if initial_state.get(self.STAGE_KEY) is not None:  # None: the stage goes on from where it is
                self.stage.load_state_dict(initial_state[self.STAGE_KEY])
            self.source.reset(initial_state[self.SOURCE_KEY])
        else:
            self.source.reset(None)
        self._state = {self.SOURCE_KEY: self.source.state_dict(), self.STAGE_KEY: self.stage.state_dict()}
        self._exhausted = False

    def get_state(self) -> dict[str, Any]:
        return self._state

    def next(self) -> dict[str, Any]:
        if not self.threaded:
            batch = next(self.source)
            with torch_threads(self.cpu_threads):
                out = self.stage(batch, details=self.details)
            self._state = {self.SOURCE_KEY: self.source.state_dict(), self.STAGE_KEY: self.stage.state_dict()}
            return out
        runner = self._runner if self._runner is not None else self._start_runner()
        while not self._exhausted and len(self._in_flight) < self.depth:
            try:
                batch = next(self.source)
            except StopIteration:
                self._exhausted = True
                break
            self._in_flight.append(self.source.state_dict())
            runner.submit(batch)
        if not self._in_flight:
            raise StopIteration
        out, stage_state = runner.result()
        self._state = {self.SOURCE_KEY: self._in_flight.popleft(), self.STAGE_KEY: stage_state}
        return out

    def _start_runner(self) -> _Runner:
        self._stop_runner()
        self._runner = _Runner(self.stage, self.details)
        close_at_exit(self)
        return self._runner

    def _stop_runner(self) -> None:
        for runner in (self._retired, self._runner):
            if runner is not None:
                runner.stop(wait=True)
        self._runner = self._retired = None
        self._in_flight.clear()

    def close(self) -> None:
        """Stop the stage's thread at once, without waiting for the batch it is on (a daemon thread: it never
        holds up an exit); a new one starts if the node is used again."""
        if self._runner is not None:
            self._runner.stop(wait=False)
            self._retired, self._runner = self._runner, None
        self._in_flight.clear()


class _Runner:
    """The stage's thread: takes host batches in order, returns ``(augmented batch, stage state after it)``."""

    def __init__(self, stage: Any, details: bool) -> None:
        self.stage = stage
        self.details = details
        self.device = torch.device(stage.device)
        self.jobs: queue.Queue = queue.Queue()
        self.done: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._work, name="meddiffuse-device-stage", daemon=True)
        self.thread.start()

    def submit(self, batch: dict[str, Any]) -> None:
        self.jobs.put(batch)

    def _work(self) -> None:
        cuda = self.device.type == "cuda"
        side = torch.cuda.Stream(device=self.device) if cuda else None
        while True:
            batch = self.jobs.get()
            if batch is None:
                return
            try:
                with torch.cuda.stream(side) if cuda else contextlib.nullcontext():
                    out = self.stage(to_device(batch, None, pin=True) if cuda else batch, details=self.details)
                    ready = torch.cuda.Event() if cuda else None
                    if ready is not None:
                        ready.record(side)
                self.done.put((out, self.stage.state_dict(), ready))
            except BaseException as error:  # handed to the training thread, which raises it
                self.done.put(error)

    def result(self) -> tuple[dict[str, Any], dict[str, Any]]:
        while True:
            try:
                item = self.done.get(timeout=_POLL_SECONDS)
                break
            except queue.Empty:
                if not self.thread.is_alive():
                    raise RuntimeError("the device stage's thread ended without a result") from None
        if isinstance(item, BaseException):
            raise RuntimeError(
                f"device stage ({getattr(self.stage, 'method', type(self.stage).__name__)}) failed: {item}"
            ) from item
        out, state, ready = item
        if ready is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(ready)
            for value in out.values():
                if isinstance(value, torch.Tensor) and value.device.type == "cuda":
                    value.record_stream(current)
        return out, state

    def stop(self, wait: bool) -> None:
        """Drop queued batches and end the thread after the batch in the stage; with ``wait``, wait for that
        (bounded): then the stage is idle and its state may be replaced."""
        while True:
            try:
                self.jobs.get_nowait()
            except queue.Empty:
                break
        self.jobs.put(None)
        if not wait:
            return
        self.thread.join(_IDLE_LIMIT_SECONDS)
        if self.thread.is_alive():
            raise RuntimeError(f"the device stage did not finish its batch within {_IDLE_LIMIT_SECONDS:g} s")
