"""A worker that dies in the middle of a batch is an end of file for the loader, never a blocked read."""

import multiprocessing
import os
import queue
import struct

import pytest

from meddiffuse_stream.nodes.transport.channel import WorkerGone, batch_channel


def _half_a_message(sender) -> None:
    """Writes the header of a 1 MB message and 7 bytes of it, then dies as an OOM kill would leave it."""
    os.write(sender._connection.fileno(), struct.pack("!i", 1 << 20) + b"partial")
    os._exit(9)


def _one_batch(sender) -> None:
    import time

    sender.put({"image": b"x" * (3 << 20)}, timeout=5)  # larger than a pipe's buffer: written in many parts
    time.sleep(30)  # killed by the test


@pytest.mark.timeout(60)
def test_a_worker_dying_mid_message_is_an_end_of_file():
    context = multiprocessing.get_context("fork")
    sender, receiver = batch_channel(context, 2)
    process = context.Process(target=_half_a_message, args=(sender,))
    process.start()
    receiver.worker_started()
    process.join(10)
    with pytest.raises(WorkerGone):
        while True:
            try:
                receiver.get(timeout=0.1)
            except queue.Empty:
                continue
    receiver.close()


@pytest.mark.timeout(60)
def test_large_batches_arrive_whole():
    context = multiprocessing.get_context("fork")
    sender, receiver = batch_channel(context, 2)
    process = context.Process(target=_one_batch, args=(sender,))
    process.start()
    receiver.worker_started()
    item = None
    while item is None:
        try:
            item = receiver.get(timeout=0.1)
        except queue.Empty:
            continue
    assert len(item["image"]) == 3 << 20
    process.kill()
    process.join()
    with pytest.raises(WorkerGone):
        receiver.get(timeout=5)
    receiver.close()
