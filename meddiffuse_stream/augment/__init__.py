"""MedDiffuseMix and the paper's baselines as one device stage.

The names below load on first use (they import torch, captum and diffusers), so the command line can offer the
augmentation options without importing any of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from .cache import VariantCache
    from .methods import METHODS, PRESETS, MethodSpec
    from .mix import MixConfig
    from .stage import AUGMENTS, LABEL_MIXING, AugmentStage

__all__ = ["AUGMENTS", "LABEL_MIXING", "METHODS", "PRESETS", "AugmentStage", "MethodSpec", "MixConfig", "VariantCache"]

_HOMES = {
    "AUGMENTS": ".stage",
    "LABEL_MIXING": ".stage",
    "AugmentStage": ".stage",
    "METHODS": ".methods",
    "PRESETS": ".methods",
    "MethodSpec": ".methods",
    "MixConfig": ".mix",
    "VariantCache": ".cache",
}


__getattr__, __dir__ = lazy_exports(__name__, globals(), _HOMES)
