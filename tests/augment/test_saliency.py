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
        (_vit, "gradients"),
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

        @property
        def saliency_layer(self):
            return self.vit.saliency_layer

        def forward(self, x):
            grid = self.vit.grid(self.vit.embed(x).flatten(2).transpose(1, 2))
            score = grid[:, :, 0, 0].sum(dim=1, keepdim=True)
            return torch.cat([-score, score], dim=1)

    torch.manual_seed(0)
    maps = SaliencyExtractor(Bright(), "gradcam")(torch.rand(2, 1, 32, 32), torch.tensor([1, 1]))
    assert maps[:, :, :8, :8].mean() > maps[:, :, 16:, 16:].mean()


def test_gradcam_needs_a_saliency_layer():
    with pytest.raises(ValueError, match="saliency_layer"):
        SaliencyExtractor(torch.nn.Linear(4, 2), "gradcam")
