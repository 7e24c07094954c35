"""Saliency maps for a CNN, a ResNet and a ViT: image-sized, in [0, 1], batched."""

import pytest
import torch

from meddiffuse_stream.augment.saliency import SaliencyExtractor
from meddiffuse_stream.models import ResNet18, SmallCNN, ViTTiny


def _vit():
    return ViTTiny(1, 2, image_size=32, patch=8, dim=32, depth=2, heads=2)


@pytest.mark.parametrize(
    ("make", "method"),
    [
        (lambda: SmallCNN(1, 2, width=8), "gradcam"),
        (lambda: SmallCNN(1, 2, width=8), "gradients"),
        (lambda: SmallCNN(1, 2, width=8), "integrated-gradients"),
        (lambda: ResNet18(1, 3), "gradcam"),
        (_vit, "gradcam"),
        (_vit, "gradcam-multiscale"),
        (_vit, "gradients"),
        (_vit, "attention-rollout"),
    ],
)
def test_maps_have_the_image_size_and_range(make, method):
    torch.manual_seed(0)  # models are built here, from a known seed: no test depends on the order tests run in
    model = make()
    images, labels = torch.rand(4, 1, 32, 32), torch.tensor([0, 1, 1, 0])
    maps = SaliencyExtractor(model, method, ig_steps=4)(images, labels)
    assert maps.shape == (4, 1, 32, 32) and maps.min() >= 0 and maps.max() <= 1
    peaks = maps.flatten(1).max(1).values
    assert ((peaks == 1) | (peaks == 0)).all(), "per-image min-max (constant maps are 0)"
    if method != "gradcam":  # an untrained net's GradCAM may be all negative, i.e. zero after the ReLU
        assert (peaks == 1).all()
    assert model.training, "the model's mode is restored"


def test_vit_gradcam_follows_the_patch_that_decides():
    class Bright(torch.nn.Module):  # the class-1 logit is the brightness of the top-left patch
        def __init__(self):
            super().__init__()
            self.vit = ViTTiny(1, 2, image_size=32, patch=8, dim=16, depth=2, heads=2)
            with torch.no_grad():  # each token's channels: the patch's mean brightness
                self.vit.patchify.weight.fill_(1 / 64)
                self.vit.patchify.bias.zero_()

        @property
        def saliency_layer(self):
            return self.vit.saliency_layer

        def forward(self, x):
            grid = self.vit.grids[0](self.vit.patchify(x).flatten(2).transpose(1, 2))
            score = grid[:, :, 0, 0].sum(dim=1, keepdim=True)
            return torch.cat([-score, score], dim=1)

    torch.manual_seed(0)
    images = torch.rand(2, 1, 32, 32) * 0.1
    images[:, :, :8, :8] = 0.9
    maps = SaliencyExtractor(Bright(), "gradcam")(images, torch.tensor([1, 1]))
    assert maps[:, :, :8, :8].mean() > maps[:, :, 16:, 16:].mean()


def test_gradcam_needs_a_saliency_layer():
    with pytest.raises(ValueError, match="saliency_layer"):
        SaliencyExtractor(torch.nn.Linear(4, 2), "gradcam")


def test_attention_rollout_follows_where_the_cls_token_looks():
    torch.manual_seed(0)
    vit = ViTTiny(1, 2, image_size=32, patch=8, dim=16, depth=2, heads=2).eval()
    for block in vit.blocks:  # every query attends to patch (0, 0) only: token 1 (after the CLS token)
        attention = block.attention

        def focused(tokens, attention=attention):
            batch, count, _ = tokens.shape
            weights = torch.zeros(batch, attention.heads, count, count)
            weights[..., 1] = 1.0
            attention.last = weights if attention.keep else None
            return tokens

        attention.forward = focused
    maps = SaliencyExtractor(vit, "attention-rollout")(torch.rand(2, 1, 32, 32), torch.tensor([0, 1]))
    assert maps.shape == (2, 1, 32, 32)
    assert maps[:, :, :4, :4].mean() > 0.9 and maps[:, :, 16:, 16:].max() < 0.1
    with pytest.raises(ValueError, match="attention-rollout needs a ViT"):
        SaliencyExtractor(SmallCNN(1, 2, width=4), "attention-rollout")


def test_embed_is_what_the_head_sees():
    torch.manual_seed(0)
    images = torch.rand(3, 1, 32, 32)
    for model in (SmallCNN(1, 2, width=4), _vit(), ResNet18(1, 2)):
        model.eval()
        assert torch.allclose(model.head(model.embed(images)), model(images), atol=1e-6)


@pytest.mark.parametrize("method", ["gradients", "gradcam"])
def test_maps_with_probability_are_the_two_calls_bit_for_bit(method):
    torch.manual_seed(0)
    model = SmallCNN(1, 2, width=8)  # in training mode: both paths must evaluate it in eval mode
    images, labels = torch.rand(5, 1, 32, 32), torch.tensor([0, 1, 1, 0, 1])
    extractor = SaliencyExtractor(model, method)
    maps, probability = extractor.with_probability(images, labels)
    model.eval()
    with torch.no_grad():
        expected = torch.softmax(model(images).float(), dim=1).gather(1, labels.view(-1, 1)).squeeze(1)
    model.train()
    assert torch.equal(maps, extractor(images, labels)) and torch.equal(probability, expected)
    assert model.training, "the model's mode is restored"
