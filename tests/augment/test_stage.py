"""The device stage: cache, preservation check, unknown evidence, per-epoch draws, determinism, state, and every
method through one flag."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torchdata.nodes import IterableWrapper

from meddiffuse_stream.augment import AUGMENTS, LABEL_MIXING, AugmentStage, MixConfig, VariantCache
from meddiffuse_stream.nodes import DeviceStage


class Energy(nn.Module):
    """A teacher whose class-1 evidence is brightness: its gradient saliency follows the bright blob."""

    def forward(self, x):
        energy = (x**2).mean(dim=(1, 2, 3)) * 40 - 1
        return torch.stack([-energy, energy], dim=1)


class Blind(nn.Module):
    """A teacher that sees nothing: constant logits, zero gradients, a flat saliency map."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([0.0, 1.0]))

    def forward(self, x):
        return self.bias.expand(len(x), 2) + 0 * x.flatten(1)[:, :1]


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
    roi = torch.zeros(n, 1, size, size)
    roi[:, :, 8:14, 8:14] = 1
    return {"image": images, "label": torch.ones(n, dtype=torch.long), "key": [f"k{i}" for i in range(n)], "roi": roi}


def _stage(method="meddiffusemix", **kwargs):
    settings = dict(teacher=Energy(), saliency_method="gradients", generator=Nudge(), seed=3, original_probability=0.0)
    settings.update(kwargs)
    if method not in (
        "meddiffusemix",
        "meddiffusemix-noise",
        "meddiffusemix-other-image",
        "diffusemix",
        "hybrid-filter",
        "dafusion",
    ):
        settings.pop("original_probability")
    return AugmentStage(method, 2, **settings)


@pytest.mark.parametrize("method", AUGMENTS)
def test_every_method_behind_one_flag_keeps_shapes_and_targets(method):
    stage = _stage(method)
    batch = _batch()
    out = stage(dict(batch))
    assert out["image"].shape == batch["image"].shape and out["image"].dtype == torch.float32
    assert out["mix_weight"].shape == (4, 1, 32, 32) and out["augmented"].shape == (4,)
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
    warm = _stage("dafusion", variant_cache=str(tmp_path / "cache"), variants_per_sample=1)
    warm(_batch())
    assert warm.generator.calls == 1 and warm.counters["cache_written"] == 4
    again = _stage("dafusion", variant_cache=str(tmp_path / "cache"), variants_per_sample=1)
    out = again(_batch())
    assert again.generator.calls == 0 and again.counters["cache_hits"] == 4
    assert torch.allclose(out["variant"], Nudge()(_batch()["image"], None, None), atol=1e-3)  # float16 storage


def test_corrupt_entry_is_detected_and_regenerated(tmp_path):
    _stage("dafusion", variant_cache=str(tmp_path / "cache"), variants_per_sample=1)(_batch())
    entry = next((tmp_path / "cache").rglob("k0-*.bin"))
    entry.write_bytes(entry.read_bytes()[:-7] + b"garbage")
    stage = _stage("dafusion", variant_cache=str(tmp_path / "cache"), variants_per_sample=1)
    stage(_batch())
    assert stage.counters["cache_corrupt"] == 1 and stage.counters["generated"] == 1


def test_read_only_location_warns_once_and_generates(tmp_path, monkeypatch):
    cache = VariantCache(str(tmp_path / "cache"))

    def refuse(*args, **kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(cache.location, "write_bytes", refuse)
    stage = _stage("dafusion", variant_cache=cache, variants_per_sample=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stage(_batch())
        stage(_batch(seed=2))
    assert sum("not writable" in str(w.message) for w in caught) == 1 and stage.generator.calls == 2


class Planted(Nudge):
    """A variant that plants a large bright blob away from the evidence."""

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
    assert not out["augmented"].any()


def test_check_accepts_a_benign_variant_and_leaves_the_evidence_bit_for_bit():
    stage = _stage()
    batch = _batch()
    out = stage(dict(batch))
    assert stage.counters["accepted"] == 4 and out["augmented"].all()
    assert out["mix_weight"].sum() > 0
    blob = batch["roi"] > 0
    assert torch.equal(out["image"][blob], batch["image"][blob])
    assert torch.all(out["mix_weight"][blob] == 0)


def test_attenuation_before_fallback():
    stage = _stage(generator=Planted(), mix_config=MixConfig(retries=2, soft_mask=False))
    stage(_batch())
    assert stage.counters["accepted"] == 0 and stage.counters["attenuated"] + stage.counters["rejected"] == 4


def test_a_flat_saliency_map_means_evidence_unknown_and_the_image_is_kept():
    stage = _stage(teacher=Blind())
    batch = _batch()
    out = stage(dict(batch))
    assert stage.counters["no_evidence"] == 4 and stage.counters["accepted"] == 0
    assert torch.equal(out["image"], batch["image"]) and out["mix_weight"].sum() == 0


def test_an_unconfident_teacher_does_not_mix():
    batch = _batch()
    batch["label"] = torch.zeros(4, dtype=torch.long)  # Energy calls bright images class 1: p(0) is tiny
    stage = _stage()
    out = stage(dict(batch))
    assert stage.counters["unconfident"] == 4 and torch.equal(out["image"], batch["image"])
    lenient = _stage(mix_config=MixConfig(min_confidence=0.0))
    lenient(dict(batch))
    assert lenient.counters["unconfident"] == 0


def test_originals_are_shown_with_their_probability_and_draws_change_every_epoch(tmp_path):
    stage = _stage(original_probability=0.5, variant_cache=str(tmp_path / "c"), mask_draws=3)
    shown, combos = 0, set()
    for _epoch in range(12):
        out = stage(_batch(n=8))
        shown += int((out["mix_weight"].flatten(1).amax(1) == 0).sum())
        combos.add(tuple(out["image"].flatten(1).sum(1).tolist()))
    assert 24 <= stage.counters["originals"] <= 72 and stage.counters["originals"] == shown
    assert len(combos) > 6, "each epoch a fresh choice of original, variant and mask draw"
    assert stage.counters["result_cache_hits"] > 0, "at most M x D results per sample: later epochs hit the cache"


def test_a_different_teacher_never_reads_another_teachers_results(tmp_path):
    class Dimmer(Energy):
        def forward(self, x):
            return super().forward(x * 0.99)

    cache = str(tmp_path / "cache")
    first = _stage(variant_cache=cache)
    first(_batch())
    other = _stage(teacher=Dimmer(), variant_cache=cache)
    other(_batch())
    assert other.counters["result_cache_hits"] == 0
    again = _stage(variant_cache=cache)
    again(_batch())
    assert again.counters["result_cache_hits"] == 4


def test_methods_that_need_models_say_so():
    with pytest.raises(ValueError, match="saliency teacher"):
        AugmentStage("saliencymix", 2)
    with pytest.raises(ValueError, match="diffusion variants"):
        AugmentStage("diffusemix", 2)
    with pytest.raises(ValueError, match="unknown augment method"):
        AugmentStage("randaugment", 2)
    with pytest.raises(ValueError, match="preset"):
        AugmentStage("meddiffusemix-hard-mask", 2)


@pytest.mark.parametrize(
    "config",
    [
        MixConfig(random_mask=True),
        MixConfig(adaptive_alpha=False),
        MixConfig(soft_mask=False),
        MixConfig(check=False),
        MixConfig(margin=0),
    ],
)
def test_ablations_run_and_are_deterministic(config):
    out = _stage(mix_config=config)(_batch())
    again = _stage(mix_config=config)(_batch())
    assert out["image"].shape == (4, 1, 32, 32) and np.isfinite(out["image"].numpy()).all()
    assert torch.equal(out["image"], again["image"])


def test_standard_moves_the_roi_with_the_image():
    batch = _batch(n=16)
    out = _stage("standard")(dict(batch))
    moved = out["roi"] > 0
    assert not torch.equal(moved, batch["roi"] > 0), "flips and rotations moved it"
    assert out["image"][moved].mean() > out["image"][~moved].mean() + 0.4, "the ROI is where the blob went"


def test_compose_standard_after_meddiffusemix_moves_roi_too():
    out = _stage(compose_standard=True)(_batch(n=16))
    moved = out["roi"] > 0
    assert out["image"][moved].mean() > out["image"][~moved].mean() + 0.4 and out["augmented"].all()


def test_details_only_when_asked():
    stage = _stage()
    assert {"saliency", "variant"} <= set(stage(_batch()))
    assert not {"saliency", "variant"} & set(stage(_batch(), details=False))


class CountingTeacher(Energy):
    calls = 0

    def forward(self, x):
        CountingTeacher.calls += 1
        return super().forward(x)


def test_frozen_teacher_and_warm_cache_make_no_model_call_and_same_bytes(tmp_path):
    def make():
        return _stage(teacher=CountingTeacher(), variant_cache=str(tmp_path / "cache"), variants_per_sample=2)

    cold = make()
    first = cold(_batch())
    assert CountingTeacher.calls > 0 and cold.generator.calls == 1
    CountingTeacher.calls = 0
    warm = make()
    second = warm(_batch(), details=False)
    assert CountingTeacher.calls == 0 and warm.generator.calls == 0 and warm.counters["result_cache_hits"] == 4
    for name in ("image", "mix_weight"):
        assert torch.equal(first[name], second[name]), name
    with_details = make()(_batch())
    for name in ("saliency", "variant"):
        assert torch.equal(first[name], with_details[name]), name


def test_teacher_refresh_every_n_steps_changes_identity_and_safe_checkpoint_loading(tmp_path):
    from safetensors.torch import save_file

    from meddiffuse_stream.models import SmallCNN, load_weights

    torch.manual_seed(0)
    teacher, student = SmallCNN(1, 2, width=4), SmallCNN(1, 2, width=4)
    stage = AugmentStage("saliencymix", 2, teacher=teacher, seed=0, refresh_every=5)
    before = stage.state_dict()["teacher"]
    assert not stage.maybe_refresh_teacher(student, 3)
    assert stage.maybe_refresh_teacher(student, 5) and stage.state_dict()["teacher"] != before
    same = lambda a, b: all(torch.equal(x, y) for x, y in zip(a.values(), b.values(), strict=True))  # noqa: E731
    assert same(stage.teacher_state(), student.state_dict())
    assert not same(teacher.state_dict(), student.state_dict()), "applied by the stage, at its next batch"
    stage({"image": torch.rand(2, 1, 32, 32), "label": torch.tensor([0, 1]), "key": ["a", "b"]})
    assert same(teacher.state_dict(), student.state_dict())
    with pytest.raises(ValueError, match="teacher"):
        AugmentStage("saliencymix", 2, teacher=SmallCNN(1, 2, width=4)).load_state_dict(stage.state_dict())
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
    stage = _stage(teacher=spy)
    torch.set_num_threads(2)
    try:
        list(DeviceStage(IterableWrapper([_batch()]), stage, cpu_threads=threads))
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
    before = torch.get_num_threads()
    for workers, expected in ((2, max(1, cores - 2)), (0, before)):
        spy = ThreadSpy()
        stage = AugmentStage("saliencymix", 2, teacher=spy, saliency_method="gradients")
        with MedDiffuseLoader(data, 4, num_workers=workers, augment=stage) as loader:
            list(loader)
        assert set(spy.seen) == {expected}, workers
        assert torch.get_num_threads() == before


def test_inside_a_loader_draws_are_a_function_of_epoch_rank_and_batch():
    """Frameworks load rank 0's loader state on every rank: draws seeded by where the batch sits stay exact."""

    def at(position, warm_up=0):
        stage = _stage("cutmix")
        for _ in range(warm_up):  # whatever the stage did before
            stage(_batch(seed=9))
        return stage({**_batch(n=8), "position": position})["image"]

    assert torch.equal(at((2, 1, 5)), at((2, 1, 5), warm_up=3))
    assert not torch.equal(at((2, 0, 5)), at((2, 1, 5))), "ranks draw differently"
    assert not torch.equal(at((2, 1, 5)), at((3, 1, 5))), "epochs draw differently"


def test_controls_mix_the_same_w_with_noise_or_another_image_of_the_class(tmp_path):
    batch = _batch(n=6)
    batch["label"] = torch.tensor([1, 1, 1, 0, 0, 1])
    unchecked = MixConfig(check=False, min_confidence=0.0)
    outputs = {
        method: _stage(method, mix_config=unchecked, variant_cache=str(tmp_path / method))(dict(batch))
        for method in ("meddiffusemix", "meddiffusemix-noise", "meddiffusemix-other-image")
    }
    reference = outputs["meddiffusemix"]["mix_weight"]
    assert reference.amax() > 0
    for method, out in outputs.items():
        assert torch.equal(out["mix_weight"], reference), f"{method}: the same W"
        assert torch.equal(out["protected"], outputs["meddiffusemix"]["protected"])
        assert torch.equal(out["image"][out["protected"]], batch["image"][out["protected"]])
    noise = outputs["meddiffusemix-noise"]["image"]
    assert not torch.equal(noise, outputs["meddiffusemix"]["image"]) and "variant" not in outputs["meddiffusemix-noise"]
    other = outputs["meddiffusemix-other-image"]["image"]
    weight = reference[:, 0]
    for row in range(6):
        # x_aug = (1 - W) x + W y, so y is recovered where W > 0: it must be another image of the same class
        where = weight[row] > 0.3
        donor = (other[row, 0][where] - (1 - weight[row][where]) * batch["image"][row, 0][where]) / weight[row][where]
        matches = [j for j in range(6) if j != row and torch.allclose(donor, batch["image"][j, 0][where], atol=0.02)]
        assert matches and all(batch["label"][j] == batch["label"][row] for j in matches)
    results = [
        path for path in (tmp_path / "meddiffusemix-other-image").rglob("*.bin") if "meddiffusemix-v2" in str(path)
    ]
    assert not results, "its results depend on the batch: never cached (the teacher's maps are)"
    assert any("meddiffusemix-v2-noise" in str(path) for path in (tmp_path / "meddiffusemix-noise").rglob("*.bin"))


class ForwardCounting(Energy):
    """Energy, counting forward passes (a saliency extraction runs one)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return super().forward(x)


def test_warmed_saliency_is_what_later_draws_read(tmp_path):
    teacher = ForwardCounting()
    warmer = AugmentStage("keepaugment", 2, teacher=teacher, variant_cache=str(tmp_path / "cache"))
    assert warmer.warm_saliency(_batch()) == 4 and warmer.warm_saliency(_batch()) == 0
    reader = AugmentStage(
        "keepaugment", 2, teacher=teacher, variant_cache=str(tmp_path / "cache"), original_probability=0.0
    )
    calls = teacher.calls
    out = reader(_batch())
    assert teacher.calls == calls and reader.counters["cache_hits"] == 4  # no extraction: every map was cached
    fresh = AugmentStage("keepaugment", 2, teacher=Energy(), original_probability=0.0)(_batch())
    assert torch.allclose(out["saliency"], fresh["saliency"], atol=1e-3)  # float16 storage


def test_warming_without_a_cache_is_refused():
    with pytest.raises(ValueError, match="no saliency cache to warm"):
        AugmentStage("keepaugment", 2, teacher=Energy()).warm_saliency(_batch())
