"""Running the device stage beside training: on CUDA in its own thread and stream, on the CPU inline.

On CUDA the thread copies each decoded batch from pinned memory with ``non_blocking=True`` on a side stream, runs
the stage there and records an event; the training loop's stream waits on that event only when it takes the
batch, so augmentation of batch k+1 overlaps the training step on batch k. The stage's state is snapshotted after
each batch, so the loader's ``state_dict`` matches the batches actually yielded, not the ones prepared ahead.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from .stage import AugmentStage

__all__ = ["run_stage"]

_END = object()


def _pin(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def run_stage(stage: AugmentStage, batches: Iterable[dict[str, Any]], depth: int = 2) -> Iterator[tuple[dict, dict]]:
    """Yields ``(augmented batch, stage state after it)``."""
    if stage.device.type != "cuda":
        for batch in batches:
            out = stage(batch)
            yield out, stage.state_dict()
        return
    yield from _threaded(stage, batches, depth)


def _threaded(stage: AugmentStage, batches: Iterable[dict[str, Any]], depth: int) -> Iterator[tuple[dict, dict]]:
    ready: queue.Queue = queue.Queue(depth)
    stop = threading.Event()
    side = torch.cuda.Stream(device=stage.device)

    def work() -> None:
        try:
            with torch.cuda.stream(side):
                for batch in batches:
                    if stop.is_set():
                        return
                    out = stage(_pin(batch))
                    done = torch.cuda.Event()
                    done.record(side)
                    ready.put((out, stage.state_dict(), done))
            ready.put(_END)
        except BaseException as error:  # handed to the training thread, which raises it
            ready.put(error)

    thread = threading.Thread(target=work, name="meddiffuse-device-stage", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise RuntimeError(f"device stage ({stage.method}) failed: {item}") from item
            out, state, done = item
            torch.cuda.current_stream(stage.device).wait_event(done)
            for value in out.values():
                if isinstance(value, torch.Tensor):
                    value.record_stream(torch.cuda.current_stream(stage.device))
            yield out, state
    finally:
        stop.set()
        while thread.is_alive():
            try:
                ready.get(timeout=0.1)
            except queue.Empty:
                continue
