"""MedDiffuseMix and the paper's baselines as one device stage (imports torch, captum and diffusers lazily)."""

from __future__ import annotations

from .cache import VariantCache
from .methods import METHODS, PRESETS, MethodSpec
from .mix import MixConfig
from .stage import AUGMENTS, LABEL_MIXING, AugmentStage

__all__ = ["AUGMENTS", "LABEL_MIXING", "METHODS", "PRESETS", "AugmentStage", "MethodSpec", "MixConfig", "VariantCache"]
