"""Batches cross from worker processes in shared segments: no copy, reused once released, never leaked."""

import gc
import os
import signal
import socket
from multiprocessing import reduction

import numpy as np
import pytest
import torch
from loader_helpers import uneven_dataset

from meddiffuse_stream import MedDiffuseLoader
from meddiffuse_stream.nodes import WorkerDiedError
from meddiffuse_stream.nodes.transport.segments import SegmentMaps, SegmentPool, supported
from meddiffuse_stream.nodes.transport.wire import COPY_THRESHOLD, pack, unpack

pytestmark = pytest.mark.skipif(not supported(), reason="shared segments need descriptor passing (Unix)")


def _segment_mappings() -> int:
    with open("/proc/self/maps") as maps:
        return sum("meddiffuse-batch" in line for line in maps)


def _segment_fds() -> int:
    count = 0
    for entry in os.listdir("/proc/self/fd"):
        try:
            count += "meddiffuse-batch" in os.readlink(f"/proc/self/fd/{entry}")
        except OSError:
            continue
    return count


def _settle() -> None:
    for _ in range(3):
        gc.collect()


class _Link:
    """Both ends of a batch channel in one process: a worker's pool and a loader's maps over a socket pair."""

    def __init__(self) -> None:
        self.pool, self.maps = SegmentPool(keep=2), SegmentMaps()
        self.left, self.right = socket.socketpair()

    def send(self, item):
        message, segments = pack(item, self.pool)
        self.left.sendall(len(message).to_bytes(8, "big") + message)
        if segments:
            reduction.sendfds(self.left, [s.descriptor.fd for s in segments])
        for segment in segments:
            segment.descriptor.close()
        size = int.from_bytes(self.right.recv(8, socket.MSG_WAITALL), "big")
        return unpack(self.right.recv(size, socket.MSG_WAITALL), self.maps, lambda n: reduction.recvfds(self.right, n))

    def release(self) -> None:
        self.pool.release(self.maps.take_releases())

    def close(self) -> None:
        self.left.close()
        self.right.close()


def test_a_batch_arrives_without_a_copy_and_its_segment_is_reused_once_released():
    link = _Link()
    image = link.pool.empty((4, 1, 64, 64), np.float32)
    image[:] = 0.5
    received = link.send({"image": image, "label": np.arange(4)})
    assert received["image"].shape == (4, 1, 64, 64) and float(received["image"].mean()) == 0.5
    image[0, 0, 0, 0] = 7.0  # the same memory: the worker's write shows on the loader's side
    assert received["image"][0, 0, 0, 0] == 7.0
    assert link.pool.sizes == {"segments": 1, "free": 0, "sent": 1}
    tensor = torch.from_numpy(received["image"])[1:]  # a view of a tensor of it keeps it held
    del received, image
    _settle()
    link.release()
    assert link.pool.sizes["sent"] == 1
    del tensor
    _settle()
    link.release()
    assert link.pool.sizes == {"segments": 1, "free": 1, "sent": 0}
    again = link.pool.empty((2, 1, 64, 64), np.float32)  # smaller: fits the free segment
    assert link.pool.sizes == {"segments": 1, "free": 0, "sent": 0}
    del again
    _settle()
    assert link.pool.sizes["free"] == 1  # leased and dropped unsent: free at once
    link.close()


def test_kept_batches_hold_their_segments_and_surplus_free_ones_are_retired():
    link = _Link()
    kept = []
    for value in range(5):
        image = link.pool.empty((8, 1000), np.float32)
        image[:] = value
        kept.append(link.send({"image": image}))
        del image
        _settle()
        link.release()
    assert link.pool.sizes == {"segments": 5, "free": 0, "sent": 5}
    assert [float(batch["image"][0, 0]) for batch in kept] == [0, 1, 2, 3, 4]  # none overwritten
    kept.clear()
    _settle()
    link.release()
    assert link.pool.sizes == {"segments": 2, "free": 2, "sent": 0}  # keep=2
    link.send({"image": link.pool.empty((8, 1000), np.float32)})  # tells the loader which ones are gone
    assert len(link.maps._maps) == 2
    link.close()


def test_foreign_buffers_large_go_through_a_segment_small_stay_in_the_message():
    link = _Link()
    large = np.arange(COPY_THRESHOLD // 8 + 1, dtype=np.int64)
    small = np.arange(10)
    message, segments = pack({"large": large, "small": small}, link.pool)
    assert len(segments) == 1 and len(message) < 1000
    for segment in segments:
        segment.descriptor.close()
    received = link.send({"large": large, "small": small})
    assert np.array_equal(received["large"], large) and np.array_equal(received["small"], small)
    link.close()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return str(uneven_dataset(tmp_path_factory.mktemp("seg"), samples=96, shard_size=12, size=32))


def _reference(dataset, dtype):
    """The same batches from thread workers, which share memory without segments."""
    with MedDiffuseLoader(
        dataset, 8, num_workers=2, worker_method="thread", shuffle=True, seed=5, as_dict=True, dtype=dtype
    ) as loader:
        return [{k: b[k].clone() for k in ("image", "label")} | {"key": b["key"]} for _ in range(2) for b in loader]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("dtype", ["float32", "uint8"])
def test_batches_kept_and_changed_in_place_are_never_overwritten_and_match_thread_workers(dataset, dtype):
    reference = _reference(dataset, dtype)
    kept = []
    with MedDiffuseLoader(dataset, 8, num_workers=2, shuffle=True, seed=5, as_dict=True, dtype=dtype) as loader:
        for _ in range(2):
            for batch in loader:
                kept.append({k: batch[k].clone() for k in ("image", "label")} | {"key": batch["key"], "raw": batch})
                batch["image"].zero_()  # the caller's business: later batches must not see it
    assert len(kept) == len(reference)
    for got, want in zip(kept, reference, strict=True):
        assert got["key"] == want["key"] and torch.equal(got["label"], want["label"])
        assert torch.equal(got["image"], want["image"]) and got["image"].dtype == want["image"].dtype
        assert not got["raw"]["image"].any()  # still the zeroed memory the caller holds


@pytest.mark.timeout(120)
def test_closing_the_loader_leaves_no_segment_open_and_kept_batches_valid(dataset):
    _settle()
    before_maps, before_fds = _segment_mappings(), _segment_fds()
    shm_before = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    loader = MedDiffuseLoader(dataset, 8, num_workers=2, shuffle=False, as_dict=True)
    batches = list(loader)
    assert _segment_fds() == before_fds  # descriptors are closed as soon as a segment is mapped
    assert _segment_mappings() > before_maps
    expected = [b["image"].clone() for b in batches]
    loader.close()
    del loader
    _settle()
    assert all(torch.equal(b["image"], e) for b, e in zip(batches, expected, strict=True))  # valid after close
    del batches
    _settle()
    assert _segment_mappings() == before_maps and _segment_fds() == before_fds
    if os.path.isdir("/dev/shm"):
        assert set(os.listdir("/dev/shm")) <= shm_before  # segments have no name: nothing to leave behind


@pytest.mark.timeout(120)
def test_a_worker_killed_mid_epoch_is_an_error_and_leaks_nothing(dataset):
    _settle()
    before_maps, before_fds = _segment_mappings(), _segment_fds()
    loader = MedDiffuseLoader(dataset, 8, num_workers=2, shuffle=False, as_dict=True)
    iterator = iter(loader)
    first = next(iterator)
    os.kill(loader.graph.workers.pool.pids[1], signal.SIGKILL)

    def drain(batches) -> None:
        for _ in batches:  # batches the other worker had ready come first, then the error
            pass

    with pytest.raises(WorkerDiedError):
        drain(iterator)  # the test's timeout bounds the wait: a missed death would hang here
    assert first["image"].shape[0] == 8 and first["image"].isfinite().all()
    loader.close()
    del loader, iterator, first
    _settle()
    assert _segment_mappings() == before_maps and _segment_fds() == before_fds


_NO_FILE_GROWTH = """
import hashlib, json, resource, signal, sys
import numpy as np
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # growing a file past the limit fails with EFBIG, not a signal
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # memfd segments are files: none can be sized
from meddiffuse_stream import MedDiffuseLoader

def collate(samples):  # foreign arrays, large enough to go through a segment when segments work
    return np.stack([s["image"] for s in samples]), [s["key"] for s in samples]

options = {"collate_fn": collate} if sys.argv[2] == "collate_fn" else {"as_dict": True}
with MedDiffuseLoader(sys.argv[1], 96, num_workers=2, shuffle=True, seed=5, **options) as loader:
    rows = []
    for batch in loader:
        images, keys = (batch["image"], batch["key"]) if isinstance(batch, dict) else batch
        rows += [(k, hashlib.sha256(np.asarray(i).tobytes()).hexdigest()) for k, i in zip(keys, images)]
print(json.dumps(rows))
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("chain", ["default", "collate_fn"])
def test_without_shared_memory_batches_go_through_the_socket_with_a_warning(dataset, chain):
    import hashlib
    import json
    import subprocess
    import sys

    with MedDiffuseLoader(
        dataset, 96, num_workers=2, worker_method="thread", shuffle=True, seed=5, as_dict=True
    ) as loader:
        expected = [
            (k, hashlib.sha256(i.numpy().tobytes()).hexdigest())
            for b in loader
            for k, i in zip(b["key"], b["image"], strict=True)
        ]
    assert 96 * 32 * 32 * 4 > COPY_THRESHOLD, "batches must be large enough to want a segment"
    result = subprocess.run(
        [sys.executable, "-c", _NO_FILE_GROWTH, dataset, chain], capture_output=True, text=True, timeout=100
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert [tuple(row) for row in json.loads(result.stdout.strip().splitlines()[-1])] == expected
    warned = result.stderr.count("shared batch memory unavailable")
    assert 1 <= warned <= 2 and "File too large" in result.stderr, result.stderr[-3000:]
