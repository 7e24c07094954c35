"""Building a device stage from paths and settings (what the CLI and the experiment runner both start from)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch

from ..augment.methods import PRESETS, resolve
from ..augment.mix import MixConfig
from ..augment.stage import AugmentStage
from ..loader import sample_shape

__all__ = ["ABLATIONS", "StageSettings", "build_stage", "default_device", "load_teacher"]

# the MedDiffuseMix ablations, as method names of their own
ABLATIONS = {name: dict(preset.mix) for name, preset in PRESETS.items()}


@dataclass(frozen=True)
class StageSettings:
    """Everything about a stage that is not a path: what an experiment may set per method (strictly checked)."""

    mix: Mapping[str, Any] = field(default_factory=dict)  # MixConfig fields
    variants_per_sample: int = 2
    mask_draws: int = 2
    original_probability: float = 0.5
    compose_standard: bool = False
    saliency_method: str = "gradcam-multiscale"
    saliency_layer: int = 0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.mix) - set(MixConfig.field_names()))
        if unknown:
            raise ValueError(f"unknown mix setting(s) {unknown}; known: {MixConfig.field_names()}")
        MixConfig(**self.mix)  # values checked now, not at the first batch

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], where: str = "settings") -> StageSettings:
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"{where}: unknown setting(s) {unknown}; known: {known}")
        return cls(**values)

    def with_mix(self, extra: Mapping[str, Any]) -> StageSettings:
        return replace(self, mix={**extra, **self.mix})


def default_device(name: str | None = None) -> torch.device:
    """``name``, else CUDA when present, else the CPU."""
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def load_teacher(
    dataset: str, path: str, model_name: str = "cnn", shape: tuple[int, int, int] | None = None
) -> torch.nn.Module:
    """A classifier checkpoint shaped for ``dataset`` (``shape``: its ``sample_shape`` if already known), in eval
    mode."""
    from ..models import build_model, load_weights

    channels, size, classes = shape or sample_shape(dataset)
    return load_weights(build_model(model_name, channels, classes, size), path).eval()


def build_stage(
    method: str,
    dataset: str,
    *,
    teacher: str | None = None,
    teacher_model: str = "cnn",
    generator: str | None = None,
    variant_cache: str | None = None,
    seed: int = 0,
    settings: StageSettings | None = None,
    device: str | None = None,
) -> AugmentStage | str | None:
    """``None`` for ``none``, the name itself for methods that need no models and no settings, else a stage.

    ``method`` may be a preset (an ablation such as ``meddiffusemix-hard-mask``): its MixConfig settings are
    applied under any given in ``settings.mix``. The stage runs on ``device`` (default: CUDA when present).
    """
    spec, preset_mix = resolve(method)
    settings = (settings or StageSettings()).with_mix(preset_mix)
    if not (spec.needs_saliency or spec.needs_variants) and settings == StageSettings() and not settings.mix:
        return None if spec.name == "none" else spec.name
    if spec.needs_saliency and not teacher:
        raise ValueError(f"augment {method!r} needs a saliency teacher checkpoint (--teacher, or teacher: in YAML)")
    if spec.needs_variants and not (generator or variant_cache):
        raise ValueError(f"augment {method!r} needs diffusion variants (--generator and/or --variant-cache)")
    shape = sample_shape(dataset)
    model = load_teacher(dataset, teacher, teacher_model, shape) if spec.needs_saliency else None
    variants = None
    if generator and spec.needs_variants:
        from ..augment.diffusion import load_generator

        variants = load_generator(generator)
    return AugmentStage(
        spec.name,
        shape[2],
        teacher=model,
        generator=variants,
        variant_cache=variant_cache if spec.needs_variants else None,
        seed=seed,
        mix_config=MixConfig(**settings.mix),
        variants_per_sample=settings.variants_per_sample,
        mask_draws=settings.mask_draws,
        original_probability=settings.original_probability,
        compose_standard=settings.compose_standard,
        saliency_method=settings.saliency_method,
        saliency_layer=settings.saliency_layer,
        device=default_device(device),
    )
