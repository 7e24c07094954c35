"""The device stage: cache, preservation check, determinism, state, and every method through one flag."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from meddiffuse_stream.augment import AUGMENTS, LABEL_MIXING, AugmentStage, MixConfig, VariantCache


class Energy(nn.Module):
    """A teacher whose class-1 evidence is brightness: its gradient saliency follows the bright blob."""

    def forward(self, x):
        energy = (x**2).mean(dim=(1, 2, 3)) * 40 - 2
        return torch.stack([-energy, energy], dim=1)


class Nudge:
    """A stand-in generator with the real interface (a slightly changed copy, like a faithful variant)."""

    identity, strength = "nudge-v1", 0.5

    def __init__(self):
        self.calls = 0

    def to(self, device):
        return self

    def __call__(self, images, labels, seeds):
        self.calls += 1
        return (images * 0.95 + 0.03).clamp(0, 1)


def _batch(n=4, size=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, size, size, generator=generator) * 0.2
    images[:, :, 8:14, 8:14] = 0.9  # the evidence: a bright blob top-left
    return {"image": images, "label": torch.ones(n, dtype=torch.long), "key": [f"k{i}" for i in range(n)]}


def _stage(method="meddiffusemix", **kwargs):
    settings = dict(teacher=Energy(), saliency_method="gradients", generator=Nudge(), seed=3)
    settings.update(kwargs)
    return AugmentStage(method, 2, **settings)


@pytest.mark.parametrize("method", AUGMENTS)
def test_every_method_behind_one_flag_keeps_shapes_and_targets(method):
    stage = _stage(method)
    batch = _batch()
    out = stage(dict(batch))
    assert out["image"].shape == batch["image"].shape and out["image"].dtype == torch.float32
    assert out["mix_weight"].shape == (4, 1, 32, 32)
    if method in LABEL_MIXING:
        assert out["target"].shape == (4, 2) and torch.allclose(out["target"].sum(1), torch.ones(4))
    else:
        assert torch.equal(out["target"], batch["label"])


def test_same_seed_same_batch_and_state_resumes_the_draws():
    first, second = _stage("cutmix"), _stage("cutmix")
    assert torch.equal(first(_batch())["image"], second(_batch())["image"])
    state = first.state_dict()
    expected = first(_batch(seed=1))["image"]
    resumed = _stage("cutmix")
    resumed.load_state_dict(state)
    assert torch.equal(resumed(_batch(seed=1))["image"], expected)


def test_warm_cache_means_no_generator_call(tmp_path):
    warm = _stage("dafusion", variant_cache=str(tmp_path / "cache"))
    warm(_batch())
    assert warm.generator.calls == 1 and warm.counters["cache_written"] == 4
    again = _stage("dafusion", variant_cache=str(tmp_path / "cache"))
    out = again(_batch())
    assert again.generator.calls == 0 and again.counters["cache_hits"] == 4
    assert torch.allclose(out["variant"], Nudge()(_batch()["image"], None, None), atol=1e-3)  # float16 storage


def test_corrupt_entry_is_detected_and_regenerated(tmp_path):
    _stage("dafusion", variant_cache=str(tmp_path / "cache"))(_batch())
    entry = next((tmp_path / "cache").rglob("k0-*.bin"))
    entry.write_bytes(entry.read_bytes()[:-7] + b"garbage")
    stage = _stage("dafusion", variant_cache=str(tmp_path / "cache"))
    stage(_batch())
    assert stage.counters["cache_corrupt"] == 1 and stage.counters["generated"] == 1


def test_read_only_location_warns_once_and_generates(tmp_path, monkeypatch):
    cache = VariantCache(str(tmp_path / "cache"))

    def refuse(*args, **kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(cache.location, "write_bytes", refuse)
    stage = _stage("dafusion", variant_cache=cache)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stage(_batch())
        stage(_batch(seed=2))
    assert sum("not writable" in str(w.message) for w in caught) == 1 and stage.generator.calls == 2


class Planted(Nudge):
    """A variant that erases the evidence and plants a brighter blob elsewhere."""

    identity = "planted-v1"

    def __call__(self, images, labels, seeds):
        self.calls += 1
        out = torch.full_like(images, 0.1)
        out[:, :, 16:32, 16:32] = 1.0  # larger than the top-20 % region: it would take the evidence over
        return out


def test_check_rejects_a_variant_that_moves_the_evidence():
    stage = _stage(generator=Planted(), mix_config=MixConfig(retries=0, soft_mask=False))
    batch = _batch()
    out = stage(dict(batch))
    assert stage.counters["rejected"] == 4 and stage.counters["accepted"] == 0
    assert torch.equal(out["image"], batch["image"]) and out["mix_weight"].sum() == 0


def test_check_accepts_a_benign_variant_and_leaves_the_evidence():
    stage = _stage()
    batch = _batch()
    out = stage(dict(batch))
    assert stage.counters["accepted"] == 4
    evidence = out["saliency"] > torch.quantile(out["saliency"].flatten(1), 0.7, dim=1).view(-1, 1, 1, 1)
    assert out["mix_weight"].sum() > 0
    blob = torch.zeros_like(evidence)
    blob[:, :, 8:14, 8:14] = True
    assert torch.allclose(out["image"][blob], batch["image"][blob], atol=0.05)


def test_attenuation_before_fallback():
    stage = _stage(generator=Planted(), mix_config=MixConfig(retries=2, soft_mask=False))
    stage(_batch())
    assert stage.counters["accepted"] == 0 and stage.counters["attenuated"] + stage.counters["rejected"] == 4


def test_methods_that_need_models_say_so():
    with pytest.raises(ValueError, match="saliency teacher"):
        AugmentStage("saliencymix", 2)
    with pytest.raises(ValueError, match="diffusion variants"):
        AugmentStage("diffusemix", 2)
    with pytest.raises(ValueError, match="augment must be one of"):
        AugmentStage("randaugment", 2)


def test_ablations_run():
    for config in (MixConfig(random_mask=True), MixConfig(adaptive_alpha=False), MixConfig(soft_mask=False),
                   MixConfig(check=False)):  # fmt: skip
        out = _stage(mix_config=config)(_batch())
        assert out["image"].shape == (4, 1, 32, 32) and np.isfinite(out["image"].numpy()).all()


class CountingTeacher(Energy):
    calls = 0

    def forward(self, x):
        CountingTeacher.calls += 1
        return super().forward(x)


def test_frozen_teacher_and_warm_cache_make_no_model_call_and_same_bytes(tmp_path):
    def make():
        return _stage(teacher=CountingTeacher(), variant_cache=str(tmp_path / "cache"), cache_saliency=True,
                      variants_per_sample=2)  # fmt: skip

    cold = make()
    first = cold(_batch())
    assert CountingTeacher.calls > 0 and cold.generator.calls == 1
    CountingTeacher.calls = 0
    warm = make()
    second = warm(_batch())
    assert CountingTeacher.calls == 0 and warm.generator.calls == 0 and warm.counters["result_cache_hits"] == 4
    for name in ("image", "mix_weight", "saliency", "variant"):
        assert torch.equal(first[name], second[name]), name
    warm.update_teacher(warm.teacher.state_dict())  # a refreshed teacher never reuses the old results
    warm(_batch())
    assert CountingTeacher.calls > 0


def test_teacher_refresh_every_n_steps_and_safe_checkpoint_loading(tmp_path):
    from safetensors.torch import save_file

    from meddiffuse_stream.models import SmallCNN, load_weights

    torch.manual_seed(0)
    teacher, student = SmallCNN(1, 2, width=4), SmallCNN(1, 2, width=4)
    stage = AugmentStage("saliencymix", 2, teacher=teacher, seed=0)
    assert not stage.maybe_refresh_teacher(student, 3, every=5)
    assert stage.maybe_refresh_teacher(student, 5, every=5) and stage.teacher_version == 1
    same = lambda a, b: all(torch.equal(x, y) for x, y in zip(a.values(), b.values(), strict=True))  # noqa: E731
    assert same(teacher.state_dict(), student.state_dict())
    save_file(student.state_dict(), str(tmp_path / "w.safetensors"))
    torch.save({"model": student.state_dict(), "step": 7}, tmp_path / "w.pt")
    for name in ("w.safetensors", "w.pt"):
        loaded = load_weights(SmallCNN(1, 2, width=4), tmp_path / name)
        assert same(loaded.state_dict(), student.state_dict())
    with pytest.raises(FileNotFoundError, match="not found"):
        load_weights(SmallCNN(1, 2, width=4), tmp_path / "missing.pt")


class ThreadSpy(Energy):
    """Records torch's intra-op thread count while the stage runs the teacher."""

    def __init__(self):
        super().__init__()
        self.seen: list[int] = []

    def forward(self, x):
        self.seen.append(torch.get_num_threads())
        return super().forward(x)


@pytest.mark.parametrize("threads", [1, 0, None])
def test_cpu_stage_runs_with_its_own_thread_count_and_restores_torchs(threads):
    before = torch.get_num_threads()
    spy = ThreadSpy()
    stage = _stage(teacher=spy, cpu_threads=threads)
    torch.set_num_threads(2)
    try:
        stage(_batch())
        assert torch.get_num_threads() == 2, "the caller's setting is back after the call"
        assert spy.seen and set(spy.seen) == ({1} if threads == 1 else {2})
    finally:
        torch.set_num_threads(before)


def test_the_loader_gives_the_stage_the_cores_its_workers_leave(tmp_path):
    import os

    from loader_helpers import uneven_dataset

    from meddiffuse_stream import MedDiffuseLoader

    data = str(uneven_dataset(tmp_path, samples=8, shard_size=4))
    cores = len(os.sched_getaffinity(0))
    with MedDiffuseLoader(data, 4, num_workers=2, augment=AugmentStage("standard", 2)) as loader:
        assert loader.augment.cpu_threads == max(1, cores - 2)
    with MedDiffuseLoader(data, 4, num_workers=2, augment=AugmentStage("standard", 2, cpu_threads=0)) as loader:
        assert loader.augment.cpu_threads == 0, "an explicit choice is kept"
    with MedDiffuseLoader(data, 4, augment=AugmentStage("standard", 2)) as loader:
        assert loader.augment.cpu_threads is None, "no decode workers: torch's own setting"
