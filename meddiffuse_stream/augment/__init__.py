"""MedDiffuseMix and the paper's baselines as one device stage.

The names below load on first use (they import torch, captum and diffusers), so the command line can offer the
augmentation options without importing any of them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'meddiffuse_stream.augment' has no attribute {name!r}")
    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
