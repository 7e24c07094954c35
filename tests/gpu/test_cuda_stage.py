"""The device stage on CUDA: its own stream, overlapping the training step; dict batches; MedDiffuseMix cold = warm."""

from __future__ import annotations

import torch

from meddiffuse_stream import MedDiffuseLoader
from meddiffuse_stream.augment import AugmentStage, MixConfig
from meddiffuse_stream.augment.diffusion import ClassConditionalGenerator
from meddiffuse_stream.models import SmallCNN

SPIN_MS = 15.0


def _timing_event() -> torch.cuda.Event:
    return torch.cuda.Event(enable_timing=True)


def _spin_cycles(milliseconds: float) -> int:
    """GPU clock cycles that ``torch.cuda._sleep`` (one spinning thread block) needs for ``milliseconds``."""
    start, end, probe = _timing_event(), _timing_event(), 10_000_000
    torch.cuda._sleep(probe)  # first launch outside the timing
    start.record()
    torch.cuda._sleep(probe)
    end.record()
    end.synchronize()
    return int(probe * milliseconds / start.elapsed_time(end))


class TimedStage(AugmentStage):
    """The real stage, then a fixed spin of GPU time, bracketed by timing events on whatever stream it runs on."""

    def __init__(self, *args, spin_cycles: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.spin_cycles = spin_cycles
        self.intervals: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self.streams: set[int] = set()

    def __call__(self, batch, **kwargs):
        stream = torch.cuda.current_stream(self.device)
        self.streams.add(stream.cuda_stream)
        start, end = _timing_event(), _timing_event()
        start.record(stream)
        out = super().__call__(batch, **kwargs)
        torch.cuda._sleep(self.spin_cycles)
        end.record(stream)
        self.intervals.append((start, end))
        return out


def _overlap(first: list[tuple[float, float]], second: list[tuple[float, float]]) -> float:
    return sum(
        max(0.0, min(a_end, b_end) - max(a_start, b_start)) for a_start, a_end in first for b_start, b_end in second
    )


def test_the_stage_runs_on_a_side_stream_overlapping_the_training_stream(demo, record_figure):
    cycles = _spin_cycles(SPIN_MS)
    stage = TimedStage("standard", 2, device="cuda", seed=0, spin_cycles=cycles)
    training: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
    reference = _timing_event()
    with MedDiffuseLoader(demo, 8, augment=stage, num_workers=1) as loader:
        torch.cuda.synchronize()
        reference.record()
        for images, _targets in loader:  # a "training step" of the same length on the default stream
            start, end = _timing_event(), _timing_event()
            start.record()
            images.add_(0)  # the step reads the batch: it must wait for the stage's event
            torch.cuda._sleep(cycles)
            end.record()
            training.append((start, end))
    torch.cuda.synchronize()
    assert torch.cuda.current_stream().cuda_stream not in stage.streams, "the stage ran on the training stream"
    assert len(stage.intervals) == len(training) > 4

    def spans(pairs):
        return [(reference.elapsed_time(start), reference.elapsed_time(end)) for start, end in pairs]

    stage_spans, train_spans = spans(stage.intervals), spans(training)
    stage_time = sum(end - start for start, end in stage_spans)
    fraction = _overlap(stage_spans, train_spans) / stage_time
    wall = max(end for _, end in train_spans) - min(start for start, _ in stage_spans)
    serial = stage_time + sum(end - start for start, end in train_spans)
    record_figure("side_stream_overlap_fraction", round(fraction, 3))
    record_figure("stage_and_step_wall_vs_serial", round(wall / serial, 3))
    # batch k+1's stage work runs during step k: all but about one batch's stage time overlaps
    assert fraction > 0.6, f"stage work overlapped the training stream {fraction:.0%} of its time"
    # wall / serial is a speed figure: recorded above for docs, never asserted (a busy device would fail it)


def test_the_stage_on_cuda_yields_dict_batches_with_their_host_fields(demo):
    """``as_dict=True`` on a dataset with ROI masks: the batch carries the decoded ROI (``original_roi`` where the
    method moved pixels, and the ROI with them) beside the augmented tensors."""
    with (
        MedDiffuseLoader(demo, 8, augment="standard", device="cuda", as_dict=True, seed=2) as on_gpu,
        MedDiffuseLoader(demo, 8, as_dict=True, seed=2) as on_cpu,
    ):
        for gpu_batch, cpu_batch in zip(on_gpu, on_cpu, strict=True):
            assert gpu_batch["image"].is_cuda and gpu_batch["target"].is_cuda
            assert gpu_batch["key"] == cpu_batch["key"]
            decoded = gpu_batch["original_roi"] if "original_roi" in gpu_batch else gpu_batch["roi"]
            assert torch.equal(decoded.cpu(), cpu_batch["roi"])
            assert gpu_batch["roi"].shape == cpu_batch["roi"].shape


def _meddiffusemix(cache: str) -> AugmentStage:
    torch.manual_seed(0)
    teacher = SmallCNN(1, 2, width=8).eval()
    generator = ClassConditionalGenerator.create(32, 1, 2, width=16, steps=3)
    # every sample mixed (no originals, no confidence gate for this untrained teacher), one result per sample
    return AugmentStage(
        "meddiffusemix",
        2,
        teacher=teacher,
        generator=generator,
        variant_cache=cache,
        device="cuda",
        seed=0,
        variants_per_sample=1,
        mask_draws=1,
        original_probability=0.0,
        mix_config=MixConfig(min_confidence=0.0),
    )


def test_meddiffusemix_on_cuda_gives_the_same_bytes_cold_and_warm(demo, tmp_path):
    runs = []
    for _ in range(2):
        stage = _meddiffusemix(str(tmp_path / "variants"))
        with MedDiffuseLoader(demo, 8, augment=stage, num_workers=1, seed=0) as loader:
            images = [batch.cpu() for batch, _targets in loader]
        runs.append((images, stage.counters.as_dict()))
    (cold, cold_counters), (warm, warm_counters) = runs
    samples = sum(len(batch) for batch in cold)
    assert cold_counters["generator_calls"] > 0 and cold_counters.get("result_cache_hits", 0) == 0
    assert warm_counters.get("generator_calls", 0) == 0 and warm_counters["result_cache_hits"] == samples
    assert cold_counters["batches"] == warm_counters["batches"] == len(cold)
    assert all(torch.equal(a, b) for a, b in zip(cold, warm, strict=True))
