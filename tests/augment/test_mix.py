"""The mixing rule: the protected region is never touched, unknown evidence is never mixed, the top-k rule cannot
pass by construction, smooth outside the margin, adaptive, ablations."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meddiffuse_stream.augment.mix import (
    MixConfig,
    dilate,
    evidence_of,
    gaussian_blur,
    mix,
    mix_weight,
    per_image_quantile,
    random_field,
    top_fraction_iou,
    top_k_mask,
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


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.sampled_from([16, 32, 64]),
    quantile=st.floats(0.3, 0.95),
    margin=st.one_of(st.none(), st.integers(0, 6)),
    soft=st.booleans(),
    sigma=st.one_of(st.none(), st.floats(0.5, 4.0)),
    sparsity=st.floats(0.0, 0.95),
    seed=st.integers(0, 2**16),
)
def test_weight_is_exactly_zero_on_the_evidence_and_its_margin(size, quantile, margin, soft, sigma, sparsity, seed):
    """Property: W == 0 on the evidence (the mass rule above the quantile floor), and within its margin."""
    generator = torch.Generator().manual_seed(seed)
    maps = torch.rand(3, 1, size, size, generator=generator)
    maps = torch.where(maps < sparsity, torch.zeros_like(maps), maps)  # sparse maps: many ties at zero
    config = MixConfig(
        quantile=quantile, margin=margin, soft_mask=soft, sigma=sigma, adaptive_alpha=False, alpha_max=1.0
    )
    weight = mix_weight(maps, config, torch.ones(3))
    evidence = evidence_of(maps, config)
    assert torch.all(evidence <= (maps > per_image_quantile(maps, quantile))), "never beyond the quantile floor"
    assert torch.all(weight[evidence] == 0)
    protected = dilate(evidence, config.margin_for(size))
    assert torch.all(weight[protected] == 0)
    assert weight.min() >= 0 and weight.max() <= config.alpha_max


@pytest.mark.parametrize("value", [0.0, 0.3, 1.0])
def test_a_flat_map_locates_no_evidence_and_nothing_is_mixed(value):
    flat = torch.full((2, 1, 32, 32), value)
    for config in (MixConfig(), MixConfig(soft_mask=False), MixConfig(adaptive_alpha=False)):
        assert torch.equal(mix_weight(flat, config, torch.ones(2)), torch.zeros_like(flat))


def _blob(size=64):
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return torch.exp(-((yy - 20.0) ** 2 + (xx - 24.0) ** 2) / 60.0).view(1, 1, size, size).repeat(4, 1, 1, 1)


@pytest.mark.parametrize("sigma", [1.5, 3.0])
def test_weight_is_smooth_everywhere(sigma):
    config = MixConfig(sigma=sigma, alpha_max=1.0, adaptive_alpha=False, margin=1, quantile=0.9)
    weight = mix_weight(_blob(), config, torch.ones(4))
    steps = torch.cat(
        [
            (weight[..., 1:, :] - weight[..., :-1, :]).abs().flatten(),
            (weight[..., :, 1:] - weight[..., :, :-1]).abs().flatten(),
        ]
    )
    hard = mix_weight(
        _blob(),
        MixConfig(sigma=sigma, alpha_max=1.0, adaptive_alpha=False, soft_mask=False, margin=1, quantile=0.9),
        torch.ones(4),
    )
    hard_steps = (hard[..., :, 1:] - hard[..., :, :-1]).abs().max()
    assert weight.max() > 0
    assert steps.max() <= config.max_step(64) + 1e-6 < hard_steps


def test_defaults_are_sized_to_the_image():
    config = MixConfig()
    assert config.margin_for(64) == 1 and config.margin_for(224) == 3 and config.margin_for(16) == 1
    assert config.sigma_for(64) == pytest.approx(0.512) and config.sigma_for(224) == pytest.approx(1.792)


def test_alpha_adapts_to_how_spread_the_saliency_is_and_to_attenuation():
    focused = torch.zeros(1, 1, 32, 32)
    focused[..., 10:14, 10:14] = 1
    spread = torch.full((1, 1, 32, 32), 0.6)
    spread[..., 10:14, 10:14] = 1
    config = MixConfig(soft_mask=False)
    assert mix_weight(focused, config, torch.ones(1)).max() > mix_weight(spread, config, torch.ones(1)).max()
    full = mix_weight(focused, config, torch.ones(1))
    assert torch.allclose(mix_weight(focused, config, torch.full((1,), 0.5)), full * 0.5)


def test_the_random_field_changes_where_the_background_is_replaced():
    saliency = _saliency()
    config = MixConfig(adaptive_alpha=False)
    first = random_field(4, 32, 32, 0.3, np.random.default_rng(1))
    second = random_field(4, 32, 32, 0.3, np.random.default_rng(2))
    assert first.min() >= 0.3 and first.max() <= 1
    one, two = (
        mix_weight(saliency, config, torch.ones(4), field=first),
        mix_weight(saliency, config, torch.ones(4), field=second),
    )
    assert not torch.equal(one, two)
    assert torch.equal(one == 0, two == 0), "the protected region does not depend on the field"


def test_random_mask_ablation_is_seeded_and_protects_its_box():
    config = MixConfig(random_mask=True, soft_mask=False, margin=0, mass=0.75)
    first = mix_weight(_saliency(), config, torch.ones(4), np.random.default_rng(1))
    again = mix_weight(_saliency(), config, torch.ones(4), np.random.default_rng(1))
    assert torch.equal(first, again)
    zero_share = (first == 0).float().mean().item()
    assert 0.2 < zero_share < 0.45, "a box of about the evidence's area (30 %) is kept"
    with pytest.raises(ValueError, match="generator"):
        mix_weight(_saliency(), config, torch.ones(4))


def test_top_k_regions_cannot_match_by_construction():
    maps = _saliency()
    assert torch.allclose(top_fraction_iou(maps, maps, 0.2), torch.ones(4))
    assert (top_fraction_iou(maps, maps.flip(-1).flip(-2), 0.2) < 0.9).all()
    zero = torch.zeros_like(maps)
    assert top_k_mask(zero, 0.2).sum() == 0
    assert torch.equal(top_fraction_iou(zero, zero, 0.2), torch.zeros(4)), "two empty maps do not agree"
    assert torch.equal(top_fraction_iou(maps, zero, 0.2), torch.zeros(4))
    sparse = torch.zeros(1, 1, 10, 10)
    sparse[..., 0, :5] = torch.linspace(0.2, 1.0, 5)  # 5 % positive, the rest ties at zero
    assert top_k_mask(sparse, 0.2).sum() == 5, "only positive pixels, never the zeros, fill the top 20 %"
    other = torch.zeros_like(sparse)
    other[..., 9, 5:] = 1.0
    assert top_fraction_iou(sparse, other, 0.2).item() == 0, "a map that is 95 % zeros no longer passes by ties"


def test_top_k_keeps_exactly_k_pixels_among_ties():
    ties = torch.ones(2, 1, 10, 10)
    assert (top_k_mask(ties, 0.2).flatten(1).sum(1) == 20).all()


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="quantile"):
        MixConfig(quantile=1.0)
    with pytest.raises(ValueError, match="alpha_max"):
        MixConfig(alpha_max=0)
    with pytest.raises(ValueError, match="margin"):
        MixConfig(margin=-1)
    with pytest.raises(ValueError, match="margin"):
        MixConfig(margin=1.5)
    with pytest.raises(ValueError, match="min_confidence"):
        MixConfig(min_confidence=1.0)


def test_the_evidence_check_compares_the_evidence_masks_and_cannot_pass_on_empty_maps():
    from meddiffuse_stream.augment.mix import evidence_iou

    config = MixConfig(quantile=0.9, peak=0.5)
    blob = _blob()
    assert torch.allclose(evidence_iou(blob, blob, config), torch.ones(4))
    moved = blob.roll(shifts=(20, 20), dims=(-2, -1))
    assert (evidence_iou(blob, moved, config) < 0.1).all(), "evidence that moved fails"
    zero = torch.zeros_like(blob)
    assert torch.equal(evidence_iou(zero, zero, config), torch.zeros(4)), "two empty maps do not agree"
    assert MixConfig(iou_top=None).iou_top is None


def test_the_mass_rule_sizes_the_evidence_to_how_focused_the_map_is():
    from meddiffuse_stream.augment.mix import mass_mask

    focused = torch.zeros(1, 1, 32, 32)
    focused[..., 10:14, 10:14] = 1.0  # all the mass in 16 pixels
    spread = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    assert mass_mask(focused, 0.7).sum() <= 16 and mass_mask(focused, 0.7)[..., 10:14, 10:14].sum() >= 11
    assert mass_mask(spread, 0.7).sum() > 200, "a spread map needs many pixels for the same share of its mass"
    assert mass_mask(torch.zeros(1, 1, 8, 8), 0.7).sum() == 0 and mass_mask(torch.ones(1, 1, 8, 8), 0.7).sum() == 0
    config = MixConfig(mass=0.7, margin=0, soft_mask=False, adaptive_alpha=False, alpha_max=1.0)
    weight = mix_weight(torch.cat([focused, spread]), config, torch.ones(2))
    assert torch.all(weight[0][mass_mask(focused, 0.7)[0]] == 0) and (weight[0] == 0).float().mean() < 0.05
    with pytest.raises(ValueError, match="mass"):
        MixConfig(mass=0.0)
