"""Building a device stage from paths (what the CLI and the experiment runner both start from)."""

from __future__ import annotations

import torch

from ..loader import sample_shape
from .mix import MixConfig
from .stage import NEEDS_SALIENCY, NEEDS_VARIANTS, AugmentStage

__all__ = ["ABLATIONS", "build_stage", "default_device", "load_teacher"]

# the MedDiffuseMix ablations, as method names of their own
ABLATIONS = {
    "meddiffusemix-random-mask": {"random_mask": True},
    "meddiffusemix-fixed-alpha": {"adaptive_alpha": False},
    "meddiffusemix-hard-mask": {"soft_mask": False},
    "meddiffusemix-no-check": {"check": False},
}


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
    method: str, dataset: str, *, teacher: str | None = None, teacher_model: str = "cnn",
    generator: str | None = None, variant_cache: str | None = None, seed: int = 0,
) -> AugmentStage | str | None:  # fmt: skip
    """``None`` for ``none``, the name itself for methods that need no models, else a configured stage."""
    base = "meddiffusemix" if method in ABLATIONS else method
    if base not in NEEDS_SALIENCY + NEEDS_VARIANTS:
        return None if base == "none" else base
    if base in NEEDS_SALIENCY and not teacher:
        raise ValueError(f"augment {method!r} needs a saliency teacher checkpoint (--teacher, or teacher: in YAML)")
    shape = sample_shape(dataset)
    model = load_teacher(dataset, teacher, teacher_model, shape) if base in NEEDS_SALIENCY else None
    variants = None
    if generator:
        from .diffusion import load_generator

        variants = load_generator(generator)
    return AugmentStage(base, shape[2], teacher=model, generator=variants, variant_cache=variant_cache,
                        cache_saliency=model is not None, mix_config=MixConfig(**ABLATIONS.get(method, {})),
                        seed=seed)  # fmt: skip
