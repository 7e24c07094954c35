"""Names the command line offers before anything heavy is imported (this module imports nothing)."""

from __future__ import annotations

__all__ = ["DEFAULT_SALIENCY_METHOD", "SALIENCY_METHODS"]

SALIENCY_METHODS = ("gradcam", "gradcam-multiscale", "gradients", "integrated-gradients", "attention-rollout")
DEFAULT_SALIENCY_METHOD = "gradients"  # smoothed |dy/dx|: on the demo it locates lesions best (docs/results.md)
