"""Batched saliency maps: GradCAM (one layer or two scales), smoothed gradients, integrated gradients (captum), and
attention rollout for the ViT.

Maps are ``(B, 1, H, W)`` in [0, 1] (per-image min–max), at the image size, computed on the model's device in one
call per batch. A model names the layers GradCAM may attribute to in ``saliency_layers``, coarsest first (for the
demo CNN at 64 px: 8×8, 16×16, 32×32); for a ViT it is the patch tokens entering its last block, laid out on the
patch grid (:class:`meddiffuse_stream.models.TokenGrid`). A model's identity is a hash of its weights, so a cache
keyed by it can never serve another model's maps.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Mapping

import torch
from torch import nn

from .mix import gaussian_blur
from .names import SALIENCY_METHODS

__all__ = [
    "METHODS",
    "SaliencyExtractor",
    "model_identity",
    "normalise_per_image",
    "saliency_layers",
    "weights_identity",
]

METHODS = SALIENCY_METHODS


def normalise_per_image(maps: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Min–max each map to [0, 1]; a constant map becomes all zeros (no evidence anywhere)."""
    flat = maps.flatten(1)
    low = flat.min(dim=1).values.view(-1, 1, 1, 1)
    high = flat.max(dim=1).values.view(-1, 1, 1, 1)
    span = high - low
    return torch.where(span > eps, (maps - low) / span.clamp(min=eps), torch.zeros_like(maps))


def model_identity(model: nn.Module) -> str:
    """A hash of the model's class, parameter names, shapes and values (buffers included)."""
    return weights_identity(type(model).__name__, model.state_dict())


def weights_identity(kind: str, state: Mapping[str, torch.Tensor]) -> str:
    """:func:`model_identity` of a model of class ``kind`` holding ``state``."""
    digest = hashlib.sha256(kind.encode())
    for name, tensor in state.items():
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def saliency_layers(model: nn.Module) -> list[nn.Module]:
    """The layers GradCAM may use, coarsest first (``saliency_layers``, else the single ``saliency_layer``)."""
    layers = getattr(model, "saliency_layers", None)
    if layers is not None:
        return list(layers)
    layer = getattr(model, "saliency_layer", None)
    return [layer] if layer is not None else []


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    was_training = model.training
    model.eval()  # batch statistics must not depend on which images share the batch
    try:
        yield
    finally:
        model.train(was_training)


class SaliencyExtractor:
    """Configured once, called per batch: ``extractor(images, labels) -> (B, 1, H, W)`` in [0, 1].

    ``layer`` picks GradCAM's layer in ``saliency_layers`` (0: the coarsest, the last stage); ``gradcam-multiscale``
    averages the normalised maps of the two coarsest layers (twice the resolution, the last stage's reliability);
    ``smooth`` is the Gaussian sigma in pixels applied to gradient maps (None: 3 % of the image side).
    """

    def __init__(
        self,
        model: nn.Module,
        method: str = "gradcam",
        *,
        layer: int = 0,
        ig_steps: int = 16,
        smooth: float | None = None,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"saliency method must be one of {METHODS}, got {method!r}")
        layers = saliency_layers(model)
        needed = 2 if method == "gradcam-multiscale" else layer + 1
        if method == "attention-rollout" and not hasattr(model, "attention_rollout"):
            raise ValueError(f"{type(model).__name__} has no attention to roll out: attention-rollout needs a ViT")
        if method.startswith("gradcam") and len(layers) < needed:
            raise ValueError(
                f"{type(model).__name__} names {len(layers)} saliency layer(s); {method} with layer={layer} needs "
                f"{needed}: use method='gradients' or give the model saliency_layers"
            )
        self.model = model
        self.method = method
        self.layer = layer
        self.ig_steps = ig_steps
        self.smooth = smooth

    @property
    def name(self) -> str:
        """What the maps depend on besides the model: part of every cache key."""
        if self.method == "gradcam":
            return f"gradcam-l{self.layer}"
        if self.method == "gradients":
            return f"gradients-s{self.smooth if self.smooth is not None else 'auto'}"
        if self.method == "integrated-gradients":
            return f"ig{self.ig_steps}"
        return self.method

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        images = images.detach().requires_grad_(True)
        with _eval_mode(self.model), torch.enable_grad():
            if self.method == "gradcam":
                maps = self._gradcam(images, labels, saliency_layers(self.model)[self.layer])
            elif self.method == "gradcam-multiscale":
                layers = saliency_layers(self.model)[:2]
                scales = [normalise_per_image(self._gradcam(images, labels, layer).float()) for layer in layers]
                maps = torch.stack(scales).sum(dim=0)
            elif self.method == "attention-rollout":  # class-agnostic: where the CLS token looks
                rollout: Callable[[torch.Tensor], torch.Tensor] = getattr(self.model, "attention_rollout")  # noqa: B009
                grid = rollout(images.detach())
                maps = torch.nn.functional.interpolate(grid, tuple(images.shape[-2:]), mode="bilinear")
            elif self.method == "gradients":
                from captum.attr import Saliency

                raw = Saliency(self.model).attribute(images, target=labels, abs=True).amax(dim=1, keepdim=True)
                maps = self._smoothed(raw)
            else:
                from captum.attr import IntegratedGradients

                attribution = IntegratedGradients(self.model).attribute(
                    images, target=labels, n_steps=self.ig_steps, internal_batch_size=len(images)
                )
                maps = attribution.abs().sum(dim=1, keepdim=True)
        return normalise_per_image(maps.detach().float())

    def _smoothed(self, raw: torch.Tensor) -> torch.Tensor:
        sigma = self.smooth if self.smooth is not None else 0.03 * raw.shape[-1]
        return gaussian_blur(raw.detach().float(), sigma) if sigma > 0 else raw

    def with_probability(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The maps and the model's probability of each label, ``((B, 1, H, W), (B,))``: what a preservation
        check asks of every candidate (:meth:`with_logits`)."""
        maps, logits = self.with_logits(images, labels)
        return maps, torch.softmax(logits.float(), dim=1).gather(1, labels.view(-1, 1)).squeeze(1)

    def with_logits(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The maps and the model's logits, ``((B, 1, H, W), (B, C))``, in eval mode. For ``gradients`` one
        forward pass serves both (the same values as the two calls, bit for bit); the other methods make their
        maps, then run a forward pass for the logits."""
        if self.method != "gradients":
            maps = self(images, labels)
            with torch.no_grad(), _eval_mode(self.model):
                logits = self.model(images)
        else:
            leaf = images.detach().requires_grad_(True)
            with _eval_mode(self.model), torch.enable_grad():
                logits = self.model(leaf)
                (gradient,) = torch.autograd.grad(logits.gather(1, labels.view(-1, 1)).sum(), leaf)
            maps = normalise_per_image(self._smoothed(gradient.abs().amax(dim=1, keepdim=True)).detach().float())
        return maps, logits.detach()

    def for_classes(self, images: torch.Tensor, owner: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Per-class maps, batched: ``(P, 1, H, W)``, map p of image ``owner[p]`` for class ``classes[p]``.

        A multi-label image needs one map per finding; the pairs are stacked into one batch and attributed in
        one call (each row its own target), so the cost is one backward pass, not a loop over images or classes.
        Maps are per-row, so the same (image, class) gives the same map whatever else shares the call."""
        if owner.shape != classes.shape or owner.dim() != 1:
            raise ValueError(f"owner {tuple(owner.shape)} and classes {tuple(classes.shape)} must be the same (P,)")
        if len(owner) == 0:
            return images.new_zeros((0, 1, *images.shape[-2:]))
        return self(images[owner], classes)

    def _gradcam(self, images: torch.Tensor, labels: torch.Tensor, layer: nn.Module) -> torch.Tensor:
        from captum.attr import LayerAttribution, LayerGradCam

        raw = LayerGradCam(self.model, layer).attribute(images, target=labels, relu_attributions=True)
        return LayerAttribution.interpolate(raw, tuple(images.shape[-2:]), interpolate_mode="bilinear")
