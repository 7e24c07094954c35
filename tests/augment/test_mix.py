"""The mixing rule: exact where W is 0, smooth at the mask boundary, adaptive, ablations."""

import numpy as np
import pytest
import torch

from meddiffuse_stream.augment.mix import (
    MixConfig,
    gaussian_blur,
    mix,
    mix_weight,
    per_image_quantile,
    top_fraction_iou,
)


def _saliency(batch=4, size=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    maps = gaussian_blur(torch.rand(batch, 1, size, size, generator=generator), 2.0)
    low = maps.flatten(1).min(1).values.view(-1, 1, 1, 1)
    high = maps.flatten(1).max(1).values.view(-1, 1, 1, 1)
    return (maps - low) / (high - low)


def test_pixels_with_zero_weight_are_bit_identical():
    images, variants = torch.rand(4, 1, 32, 32), torch.rand(4, 1, 32, 32)
    weight = mix_weight(_saliency(), MixConfig(soft_mask=False), torch.ones(4))
    out = mix(images, variants, weight)
    zero = weight == 0
    assert zero.any() and torch.equal(out[zero], images[zero])
    assert not torch.equal(out[~zero], images[~zero])


def test_evidence_region_is_untouched_with_a_hard_mask_and_weight_is_bounded():
    saliency = _saliency()
    config = MixConfig(soft_mask=False, quantile=0.7)
    weight = mix_weight(saliency, config, torch.ones(4))
    high = saliency > per_image_quantile(saliency, 0.7)
    assert torch.all(weight[high] == 0) and weight.max() <= config.alpha_max


@pytest.mark.parametrize("sigma", [1.5, 3.0])
def test_weight_is_smooth_at_the_mask_boundary(sigma):
    config = MixConfig(sigma=sigma, alpha_max=1.0, adaptive_alpha=False)
    weight = mix_weight(_saliency(seed=3), config, torch.ones(4))
    steps = torch.cat([(weight[..., 1:, :] - weight[..., :-1, :]).abs().flatten(),
                       (weight[..., :, 1:] - weight[..., :, :-1]).abs().flatten()])  # fmt: skip
    hard = mix_weight(_saliency(seed=3), MixConfig(sigma=sigma, alpha_max=1.0, adaptive_alpha=False, soft_mask=False),
                      torch.ones(4))  # fmt: skip
    hard_steps = (hard[..., :, 1:] - hard[..., :, :-1]).abs().max()
    assert steps.max() <= config.max_step + 1e-6 < hard_steps


def test_alpha_adapts_to_how_spread_the_saliency_is_and_to_attenuation():
    focused = torch.zeros(1, 1, 32, 32)
    focused[..., 10:14, 10:14] = 1
    spread = torch.full((1, 1, 32, 32), 0.6)
    spread[..., 10:14, 10:14] = 1
    config = MixConfig(soft_mask=False)
    assert mix_weight(focused, config, torch.ones(1)).max() > mix_weight(spread, config, torch.ones(1)).max()
    full = mix_weight(focused, config, torch.ones(1))
    assert torch.allclose(mix_weight(focused, config, torch.full((1,), 0.5)), full * 0.5)


def test_random_mask_ablation_is_seeded():
    config = MixConfig(random_mask=True)
    first = mix_weight(_saliency(), config, torch.ones(4), np.random.default_rng(1))
    again = mix_weight(_saliency(), config, torch.ones(4), np.random.default_rng(1))
    assert torch.equal(first, again)


def test_top_fraction_iou():
    maps = _saliency()
    assert torch.allclose(top_fraction_iou(maps, maps, 0.2), torch.ones(4))
    assert (top_fraction_iou(maps, maps.flip(-1).flip(-2), 0.2) < 0.9).all()


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="quantile"):
        MixConfig(quantile=1.0)
    with pytest.raises(ValueError, match="alpha_max"):
        MixConfig(alpha_max=0)
