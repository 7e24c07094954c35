"""Names the command line offers before anything heavy is imported (this module imports nothing)."""

from __future__ import annotations

__all__ = ["SALIENCY_METHODS"]

SALIENCY_METHODS = ("gradcam", "gradcam-multiscale", "gradients", "integrated-gradients", "attention-rollout")
