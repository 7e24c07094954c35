"""The loader on CUDA: every tensor on the device, copied from pinned memory without the host waiting."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from meddiffuse_stream import MedDiffuseLoader


def test_batches_arrive_on_the_device_equal_to_the_cpu_batches(demo):
    with (
        MedDiffuseLoader(demo, 8, as_dict=True, device="cuda", seed=1) as on_gpu,
        MedDiffuseLoader(demo, 8, as_dict=True, seed=1) as on_cpu,
    ):
        batches = 0
        for gpu_batch, cpu_batch in zip(on_gpu, on_cpu, strict=True):
            assert gpu_batch["key"] == cpu_batch["key"]
            for name in ("image", "label", "roi"):
                assert gpu_batch[name].device.type == "cuda", name
                assert torch.equal(gpu_batch[name].cpu(), cpu_batch[name]), name
            batches += 1
    assert batches == len(on_cpu) > 1


def _trace(tmp_path: Path, loader: MedDiffuseLoader, batches: int) -> list[dict]:
    """The profiler's events (CPU calls into the CUDA runtime, GPU copies) while ``batches`` batches are taken."""
    iterator = iter(loader)
    try:
        next(iterator)  # workers started, pinned and device allocators warm
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as profiler:
            for _ in range(batches):
                next(iterator)
            torch.cuda.synchronize()  # so every copy has finished and is in the trace
    finally:
        iterator.close()  # stops a device stage's thread before the loader's workers
    path = tmp_path / "trace.json"
    profiler.export_chrome_trace(str(path))
    return [event for event in json.loads(path.read_text())["traceEvents"] if event.get("ph") == "X"]


def _host_to_device_copies(events: list[dict]) -> list[dict]:
    copies = [event for event in events if event["name"].startswith("Memcpy HtoD")]
    assert copies, "the profiler recorded no host-to-device copy (is CUPTI available on this machine?)"
    return copies


def test_host_to_device_copies_come_from_pinned_memory_and_do_not_block(demo, tmp_path):
    with MedDiffuseLoader(demo, 8, device="cuda", num_workers=1) as loader:
        events = _trace(tmp_path, loader, 3)
    copies = _host_to_device_copies(events)
    assert len(copies) >= 6, "images and labels of three batches"
    pageable = [event["name"] for event in copies if "Pinned" not in event["name"]]
    assert not pageable, f"copies from pageable memory: {pageable}"
    # a blocking copy is cudaMemcpyAsync followed by cudaStreamSynchronize; non_blocking has no wait
    waits = [event["name"] for event in events if event["name"] == "cudaStreamSynchronize"]
    assert not waits, "the loader waited for its copies on the host"


def test_the_device_stage_copies_batches_from_pinned_memory(demo, tmp_path):
    image_bytes = 8 * 1 * 32 * 32 * 4
    with MedDiffuseLoader(demo, 8, augment="standard", device="cuda", num_workers=1) as loader:
        events = _trace(tmp_path, loader, 3)
    copies = _host_to_device_copies(events)
    batches = [event for event in copies if event.get("args", {}).get("bytes", 0) >= image_bytes]
    assert len(batches) >= 3, "one image copy per batch"
    assert all("Pinned" in event["name"] for event in batches), [event["name"] for event in batches]
