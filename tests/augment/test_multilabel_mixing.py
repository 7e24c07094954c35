"""Mixup / CutMix / SaliencyMix on multi-label batches: finding vectors mix finding by finding, and a mixed finding
is known only where both images know it; the stage hands back ``target`` and ``target_mask`` (B, C)."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from meddiffuse_stream.augment import AugmentStage
from meddiffuse_stream.shardfmt.labels import mix_label_masks, mix_label_vectors

FINDINGS = 4


class Quadrants(nn.Module):
    """A multi-label teacher: finding k's logit is the brightness of quadrant k (saliency for SaliencyMix)."""

    def forward(self, x):
        h, w = x.shape[-2] // 2, x.shape[-1] // 2
        parts = [x[..., :h, :w], x[..., :h, w:], x[..., h:, :w], x[..., h:, w:]]
        return torch.stack([(p**2).mean(dim=(1, 2, 3)) * 50 - 2 for p in parts], dim=1)


def _batch(seed: int, count: int = 8, size: int = 16):
    """Images of distinct constant values (so a mixed pixel names its partner), random vectors and masks."""
    rng = np.random.default_rng(seed)
    levels = torch.as_tensor(rng.permutation(count) / count + 0.05, dtype=torch.float32)
    images = levels.view(-1, 1, 1, 1).expand(count, 1, size, size).clone()
    labels = torch.as_tensor(rng.integers(0, 2, (count, FINDINGS)), dtype=torch.float32)
    mask = torch.as_tensor(rng.integers(0, 2, (count, FINDINGS)), dtype=torch.float32)
    keys = [f"s{seed}-{i}" for i in range(count)]
    return {"image": images, "label": labels * mask, "label_mask": mask, "key": keys}, levels


def _partners(out, levels):
    """Each row's partner, read from its pixels (a mixed pixel is (1 - W) x_i + W x_j), and whether it could be
    read: where W < 1e-3 everywhere (Mixup's λ near 1, an empty CutMix box) float32 cannot tell the partner."""
    weight = out["mix_weight"].flatten(1)
    where = weight.argmax(dim=1)
    w = weight.gather(1, where.view(-1, 1)).squeeze(1)
    value = out["image"].flatten(1).gather(1, where.view(-1, 1)).squeeze(1)
    own = out["original"].flatten(1)[:, 0]
    partner_level = (value - (1 - w) * own) / w.clamp(min=1e-3)
    return (partner_level.view(-1, 1) - levels.view(1, -1)).abs().argmin(dim=1), w >= 1e-3


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), method=st.sampled_from(["mixup", "cutmix", "saliencymix"]))
def test_vectors_mix_by_the_share_kept_and_masks_know_only_what_both_know(seed, method):
    batch, levels = _batch(seed)
    kwargs = {"teacher": Quadrants(), "saliency_method": "gradients"} if method == "saliencymix" else {}
    out = AugmentStage(method, FINDINGS, seed=seed, **kwargs)(dict(batch))
    assert out["target"].shape == out["target_mask"].shape == (8, FINDINGS)
    partner, readable = _partners(out, levels)
    kept = 1 - out["mix_weight"].flatten(1).mean(dim=1, keepdim=True)  # Mixup: λ; CutMix/SaliencyMix: area kept
    labels, mask = batch["label"], batch["label_mask"]
    expected = kept * labels + (1 - kept) * labels[partner]
    assert torch.allclose(out["target"][readable], expected[readable], atol=1e-5)
    assert torch.equal(out["target_mask"][readable], (mask * mask[partner])[readable])
    for row in torch.nonzero(~readable).flatten().tolist():  # nothing (visible) pasted: own vector, a shared mask
        assert torch.allclose(out["target"][row], labels[row], atol=1e-3)
        assert any(torch.equal(out["target_mask"][row], mask[row] * mask[j]) for j in range(len(mask)))
    assert torch.equal(out["label_mask"], mask), "the decoded mask is kept beside the mixed one"
    assert bool((out["target_mask"] <= mask).all()), "a finding unknown in the image stays unknown"


def test_the_shared_helpers_on_numpy_and_tensors():
    targets, other = np.array([[1.0, 0.0, 1.0]]), np.array([[0.0, 0.0, 1.0]])
    assert mix_label_vectors(targets, other, 0.25).tolist() == [[0.25, 0.0, 1.0]]  # no sum-to-one
    assert mix_label_masks(torch.tensor([[1.0, 1.0, 0.0]]), torch.tensor([[1.0, 0.0, 1.0]])).tolist() == [
        [1.0, 0.0, 0.0]
    ]


def test_without_a_mask_no_target_mask_and_single_label_targets_still_sum_to_one():
    batch, _ = _batch(3)
    batch.pop("label_mask")
    out = AugmentStage("cutmix", FINDINGS, seed=1)(dict(batch))
    assert "target_mask" not in out and out["target"].shape == (8, FINDINGS)
    assert ((out["target"] >= 0) & (out["target"] <= 1)).all()
    single = {"image": torch.rand(6, 1, 16, 16), "label": torch.tensor([0, 1, 2, 0, 1, 2]), "key": list("abcdef")}
    soft = AugmentStage("mixup", 3, seed=2)(single)["target"]
    assert torch.allclose(soft.sum(dim=1), torch.ones(6))


@pytest.mark.parametrize("method", ["none", "standard", "keepaugment"])
def test_methods_that_keep_labels_pass_vectors_and_masks_through(method):
    batch, _ = _batch(5)
    kwargs = {"teacher": Quadrants(), "saliency_method": "gradients"} if method == "keepaugment" else {}
    out = AugmentStage(method, FINDINGS, seed=0, **kwargs)(dict(batch))
    assert torch.equal(out["target"], batch["label"]) and torch.equal(out["target_mask"], batch["label_mask"])


@pytest.mark.parametrize("method", ["dafusion", "diffusemix", "hybrid-filter"])
def test_methods_that_cannot_keep_findings_are_refused_by_name(method):
    class Copy:
        identity, strength = "copy", 0.5

        def to(self, device):
            return self

        def __call__(self, images, labels, seeds):
            return images

    batch, _ = _batch(1)
    stage = AugmentStage(method, FINDINGS, generator=Copy())
    with pytest.raises(
        ValueError,
        match=rf"'{method}' does not run on multi-label data: diffusemix, hybrid-filter, "
        r"dafusion are refused there .* conditioned on no finding .* Multi-label methods: none, "
        r"standard, mixup, cutmix, saliencymix, keepaugment, meddiffusemix",
    ):
        stage(dict(batch))


@pytest.mark.parametrize(("method", "compose"), [("standard", False), ("mixup", True)])
def test_per_finding_rois_move_with_the_pixels_as_the_roi_does(method, compose):
    batch, _ = _batch(2)
    rois = torch.zeros(8, FINDINGS, 16, 16)
    rois[:, 0, 2:6, 2:6], rois[:, 1, 4:12, 9:11], rois[:, 3, 12:15, 1:15] = 1, 1, 1
    batch.update(rois=rois, roi=rois.amax(dim=1, keepdim=True))
    out = AugmentStage(method, FINDINGS, seed=4, compose_standard=compose)(dict(batch))
    assert torch.equal(out["original_rois"], rois) and torch.equal(out["original_roi"], batch["roi"])
    assert not torch.equal(out["rois"], rois), "the draw moved them"
    assert torch.equal(out["roi"][:, 0], out["rois"].amax(dim=1)), "one draw moved both alike"
