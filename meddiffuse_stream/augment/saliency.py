"""Batched saliency maps with captum: GradCAM, vanilla gradients, integrated gradients.

Maps are ``(B, 1, H, W)`` in [0, 1] (per-image min–max), at the image size, computed on the model's device in one
call per batch. For a ViT, GradCAM attributes to the patch tokens entering its last block, laid out on the patch
grid with the CLS token dropped (:class:`meddiffuse_stream.models.TokenGrid`).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

__all__ = ["METHODS", "SaliencyExtractor", "normalise_per_image"]

METHODS = ("gradcam", "gradients", "integrated-gradients")


def normalise_per_image(maps: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Min–max each map to [0, 1]; a constant map becomes all zeros (no evidence anywhere)."""
    flat = maps.flatten(1)
    low = flat.min(dim=1).values.view(-1, 1, 1, 1)
    high = flat.max(dim=1).values.view(-1, 1, 1, 1)
    span = high - low
    return torch.where(span > eps, (maps - low) / span.clamp(min=eps), torch.zeros_like(maps))


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    was_training = model.training
    model.eval()  # batch statistics must not depend on which images share the batch
    try:
        yield
    finally:
        model.train(was_training)


class SaliencyExtractor:
    """Configured once, called per batch: ``extractor(images, labels) -> (B, 1, H, W)`` in [0, 1]."""

    def __init__(self, model: nn.Module, method: str = "gradcam", *, ig_steps: int = 16) -> None:
        if method not in METHODS:
            raise ValueError(f"saliency method must be one of {METHODS}, got {method!r}")
        if method == "gradcam" and not hasattr(model, "saliency_layer"):
            raise ValueError(f"{type(model).__name__} has no saliency_layer for GradCAM; use method='gradients'")
        self.model = model
        self.method = method
        self.ig_steps = ig_steps

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Saliency

        images = images.detach().requires_grad_(True)
        with _eval_mode(self.model), torch.enable_grad():
            if self.method == "gradcam":
                cam = LayerGradCam(self.model, self.model.saliency_layer)
                raw = cam.attribute(images, target=labels, relu_attributions=True)
                maps = LayerAttribution.interpolate(raw, tuple(images.shape[-2:]), interpolate_mode="bilinear")
            elif self.method == "gradients":
                maps = Saliency(self.model).attribute(images, target=labels, abs=True).amax(dim=1, keepdim=True)
            else:
                attribution = IntegratedGradients(self.model).attribute(
                    images, target=labels, n_steps=self.ig_steps, internal_batch_size=len(images)
                )
                maps = attribution.abs().sum(dim=1, keepdim=True)
        return normalise_per_image(maps.detach().float())
