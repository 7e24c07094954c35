"""Every registered method keeps shapes and dtypes; soft targets sum to 1; same seed, same batch."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from meddiffuse_stream.augment.methods import METHODS, PRESETS, BatchInputs, resolve
from meddiffuse_stream.augment.methods.fractals import ifs_fractals
from meddiffuse_stream.augment.methods.generative import diffusemix, hybrid, hybrid_filter
from meddiffuse_stream.augment.methods.keep import keepaugment, paste_boxes
from meddiffuse_stream.augment.methods.label_mixing import cutmix, saliencymix
from meddiffuse_stream.augment.mix import gaussian_blur


def _inputs(seed=0, rng_seed=3):
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(6, 1, 32, 32, generator=generator)
    labels = torch.tensor([0, 1, 1, 0, 1, 0])
    variants = (images + 0.05 * torch.randn(6, 1, 32, 32, generator=generator)).clamp(0, 1)
    saliency = gaussian_blur(torch.rand(6, 1, 32, 32, generator=generator), 2.0)
    zeros = np.zeros(6, dtype=np.int64)
    return BatchInputs(
        images,
        labels,
        F.one_hot(labels, 2).float(),
        [f"k{i}" for i in range(6)],
        np.random.default_rng(rng_seed),
        zeros,
        zeros,
        saliency=lambda rows: saliency if rows is None else saliency[rows],
        variants=lambda rows: variants if rows is None else variants[rows],
    )


PLAIN = [name for name, spec in METHODS.items() if spec.family != "meddiffusemix"]


@pytest.mark.parametrize("name", PLAIN)
def test_shapes_dtypes_soft_targets_and_determinism(name):
    apply = METHODS[name].build(None)
    inputs = _inputs()
    out = apply(inputs)
    assert out.images.shape == inputs.images.shape and out.images.dtype == inputs.images.dtype
    assert out.weight.shape == (6, 1, 32, 32) and 0 <= out.weight.min() and out.weight.max() <= 1
    if METHODS[name].mixes_labels:
        assert out.targets.shape == (6, 2) and torch.allclose(out.targets.sum(dim=1), torch.ones(6))
    else:
        assert torch.equal(out.targets, inputs.labels)
    assert 0 <= out.images.min() and out.images.max() <= 1
    again = apply(_inputs())
    assert torch.equal(out.images, again.images) and torch.equal(out.targets, again.targets)


def test_cutmix_lambda_is_the_area_actually_kept():
    out = cutmix(_inputs(rng_seed=5))
    pasted = out.weight[0].mean().item()
    assert 0 < pasted < 1 and torch.equal(out.weight, out.weight[:1].expand_as(out.weight))  # one box per batch
    for row in out.targets:
        assert any(abs(row.max().item() - value) < 1e-6 for value in (1.0, max(pasted, 1 - pasted)))


def test_saliencymix_box_covers_the_source_saliency_peak():
    inputs = _inputs(rng_seed=2)
    saliency = inputs.saliency(None)
    order = np.random.default_rng(2).permutation(6)
    out = saliencymix(inputs)
    for index in range(6):
        if out.weight[index].sum() > 0:
            peak = int(saliency[order[index]].flatten().argmax())
            assert out.weight[index, 0].flatten()[peak] == 1


def test_hybrid_filter_drops_variants_far_from_the_original():
    inputs = _inputs()
    far = 1 - inputs.images
    inputs.variants = lambda rows: far
    out = hybrid_filter(inputs)
    assert torch.equal(out.images, inputs.images) and out.weight.sum() == 0
    assert hybrid_filter(_inputs()).weight.sum() > 0


def test_genmix_is_renamed_with_the_reason():
    with pytest.raises(ValueError, match="renamed to hybrid-filter: the published GenMix"):
        resolve("genmix")


def test_diffusemix_is_a_binary_half_and_half_then_a_fractal_at_0_2():
    images = torch.rand(8, 1, 32, 32)
    share = hybrid(images, np.random.default_rng(0))
    assert set(share.unique().tolist()) == {0.0, 1.0}
    assert torch.all(share.flatten(1).mean(1) == 0.5), "exactly one half of every image comes from the variant"
    inputs = _inputs()
    out = diffusemix(inputs)
    rng = np.random.default_rng(3)
    expected_share = hybrid(inputs.images, rng)
    fractals = ifs_fractals(rng, 6, 32, 32)
    hybrid_image = (1 - expected_share) * inputs.images + expected_share * inputs.variants(None)
    assert torch.allclose(out.images, 0.8 * hybrid_image + 0.2 * fractals, atol=1e-6)


def test_fractals_are_seeded_self_similar_point_sets_not_noise():
    first, again = ifs_fractals(np.random.default_rng(1), 4, 32, 32), ifs_fractals(np.random.default_rng(1), 4, 32, 32)
    assert torch.equal(first, again) and first.shape == (4, 1, 32, 32)
    assert first.amin() == 0 and first.amax(dim=(1, 2, 3)).eq(1).all()
    # an attractor leaves much of the square unvisited; smooth noise would cover all of it
    assert (first.flatten(1) < 0.05).float().mean(1).min() > 0.2
    assert not torch.equal(first, ifs_fractals(np.random.default_rng(2), 4, 32, 32))


def test_keepaugment_pastes_back_the_most_salient_box_and_augments_the_rest():
    inputs = _inputs()
    saliency = torch.zeros(6, 1, 32, 32)
    saliency[:, :, 20:28, 4:12] = 1.0  # the evidence: one 8 px square
    inputs.saliency = lambda rows: saliency if rows is None else saliency[rows]
    out = keepaugment(inputs, box=0.375, tau=0.75)
    kept = out.weight == 0
    assert kept[:, :, 20:28, 4:12].flatten(1).any(1).all(), "a box of high importance overlaps the evidence"
    strict = keepaugment(inputs, box=0.375, tau=0.999).weight == 0
    assert torch.all(strict[:, :, 20:28, 4:12]), "only the most important boxes qualify: the whole evidence is kept"
    assert torch.equal(out.images[kept], inputs.images[kept])
    assert kept.flatten(1).float().mean(1).allclose(torch.full((6,), 144 / 1024)), "one 12 px box each"
    assert not torch.equal(out.images[~kept], inputs.images[~kept]), "the rest is augmented"
    boxes = paste_boxes(saliency, 12, 0.75, np.random.default_rng(0))
    assert torch.equal(boxes, paste_boxes(saliency, 12, 0.75, np.random.default_rng(0)))


def test_presets_name_a_base_method_and_valid_settings():
    from meddiffuse_stream.augment.mix import MixConfig

    for name in PRESETS:
        spec, mix = resolve(name)
        assert spec.name == "meddiffusemix"
        MixConfig(**mix)
    with pytest.raises(ValueError, match="unknown augment method"):
        resolve("mixdiffuse")
