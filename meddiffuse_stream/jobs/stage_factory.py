"""Building a device stage from paths and settings (what the CLI and the experiment runner both start from)."""

from __future__ import annotations

from typing import Any

import torch

from ..augment.methods import PRESETS, resolve
from ..augment.settings import StageSettings
from ..augment.stage import AugmentStage
from ..loader import sample_shape

__all__ = ["ABLATIONS", "StageSettings", "build_stage", "default_device", "load_teacher"]

# the MedDiffuseMix ablations, as method names of their own
ABLATIONS = {name: dict(preset.mix) for name, preset in PRESETS.items()}


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
    storage_options: dict[str, Any] | None = None,
) -> AugmentStage | str | None:
    """``None`` for ``none``, the name itself for methods that need no models and no settings, else a stage.

    ``method`` may be a preset (an ablation such as ``meddiffusemix-hard-mask``); ``settings`` (default: the
    method's own, :meth:`StageSettings.for_method`) must then carry its MixConfig settings. The stage runs on
    ``device`` (default: CUDA when present); ``storage_options`` reach the dataset and the variant cache.
    """
    spec, preset = resolve(method)
    settings = settings if settings is not None else StageSettings.for_method(method)
    if any(getattr(settings.mix, name) != value for name, value in preset.items()):
        raise ValueError(
            f"settings.mix does not carry preset {method!r}'s settings {preset}: "
            f"build them with StageSettings.for_method({method!r}, ...)"
        )
    if not (spec.needs_saliency or spec.needs_variants) and settings == StageSettings():
        return None if spec.name == "none" else spec.name
    if spec.needs_saliency and not teacher:
        raise ValueError(f"augment {method!r} needs a saliency teacher checkpoint (--teacher, or teacher: in YAML)")
    if spec.needs_variants and not (generator or variant_cache):
        raise ValueError(f"augment {method!r} needs diffusion variants (--generator and/or --variant-cache)")
    shape = sample_shape(dataset, storage_options)
    model = load_teacher(dataset, teacher, teacher_model, shape) if spec.needs_saliency and teacher else None
    variants = None
    if generator and spec.needs_variants:
        from ..augment.diffusion import load_generator

        variants = load_generator(generator)
    return AugmentStage(
        spec.name,
        shape[2],
        settings=settings,
        teacher=model,
        generator=variants,
        # a saliency method reads the teacher's maps from the cache too (KeepAugment finds the maps MedDiffuseMix
        # stored for the same teacher and saliency method: one extraction per sample, not one per draw)
        variant_cache=variant_cache if spec.needs_variants or spec.needs_saliency else None,
        storage_options=storage_options,
        seed=seed,
        device=default_device(device),
    )
