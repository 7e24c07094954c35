"""Every method keeps shapes and dtypes; soft targets sum to 1; same seed, same batch."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from meddiffuse_stream.augment import baselines
from meddiffuse_stream.augment.mix import gaussian_blur


def _batch(seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(6, 1, 32, 32, generator=generator)
    targets = F.one_hot(torch.tensor([0, 1, 1, 0, 1, 0]), 2).float()
    variants = (images + 0.05 * torch.randn(6, 1, 32, 32, generator=generator)).clamp(0, 1)
    saliency = gaussian_blur(torch.rand(6, 1, 32, 32, generator=generator), 2.0)
    return images, targets, variants, saliency


def _call(name, seed):
    images, targets, variants, saliency = _batch()
    rng = np.random.default_rng(seed)
    if name in ("standard", "mixup", "cutmix"):
        return getattr(baselines, name)(images, targets, rng)
    if name == "saliencymix":
        return baselines.saliencymix(images, targets, rng, saliency)
    return getattr(baselines, name)(images, targets, rng, variants)


NAMES = ["standard", "mixup", "cutmix", "saliencymix", "diffusemix", "genmix", "dafusion"]


@pytest.mark.parametrize("name", NAMES)
def test_shapes_dtypes_soft_targets_and_determinism(name):
    images, targets, _, _ = _batch()
    out, soft, weight = _call(name, 3)
    assert out.shape == images.shape and out.dtype == images.dtype
    assert weight.shape == (6, 1, 32, 32) and 0 <= weight.min() and weight.max() <= 1
    assert soft.shape == targets.shape and torch.allclose(soft.sum(dim=1), torch.ones(6))
    assert 0 <= out.min() and out.max() <= 1
    again = _call(name, 3)
    assert torch.equal(out, again[0]) and torch.equal(soft, again[1])


def test_cutmix_lambda_is_the_area_actually_kept():
    images, targets, _, _ = _batch()
    _, soft, weight = baselines.cutmix(images, targets, np.random.default_rng(5))
    pasted = weight[0].mean().item()
    assert 0 < pasted < 1 and torch.equal(weight, weight[:1].expand_as(weight))  # one box for the batch
    for row in soft:
        assert any(abs(row.max().item() - value) < 1e-6 for value in (1.0, max(pasted, 1 - pasted)))


def test_saliencymix_box_covers_the_source_saliency_peak():
    images, targets, _, saliency = _batch()
    rng = np.random.default_rng(2)
    order = np.random.default_rng(2).permutation(6)
    _, _, weight = baselines.saliencymix(images, targets, rng, saliency)
    for index in range(6):
        if weight[index].sum() > 0:
            peak = int(saliency[order[index]].flatten().argmax())
            assert weight[index, 0].flatten()[peak] == 1


def test_genmix_drops_variants_far_from_the_original():
    images, targets, variants, _ = _batch()
    far = 1 - images
    out, _, weight = baselines.genmix(images, targets, np.random.default_rng(0), far)
    assert torch.equal(out, images) and weight.sum() == 0
    _, _, close_weight = baselines.genmix(images, targets, np.random.default_rng(0), variants)
    assert close_weight.sum() > 0
