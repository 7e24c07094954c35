"""The method registry: every augmentation behind one name, with what it needs declared, not branched on.

A :class:`MethodSpec` says what a method needs (saliency, diffusion variants), what it does to labels and to
geometry, whether the stage's ``original_probability`` applies, and how to build its callable for a stage. Named
presets (the MedDiffuseMix ablations) are a base method plus :class:`~meddiffuse_stream.augment.mix.MixConfig`
settings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..mix import LEGACY_MIX
from .context import Augmented, BatchInputs
from .generative import dafusion, diffusemix, hybrid_filter
from .geometric import standard
from .keep import keepaugment
from .label_mixing import cutmix, mixup, saliencymix

__all__ = [
    "METHODS",
    "MULTI_LABEL",
    "PRESETS",
    "Augmented",
    "BatchInputs",
    "MethodSpec",
    "Preset",
    "get_method",
    "multi_label_refusal",
    "resolve",
]

Apply = Callable[[BatchInputs], Augmented]


def _identity(inputs: BatchInputs) -> Augmented:
    import torch

    return Augmented(inputs.images, inputs.labels, torch.zeros_like(inputs.images[:, :1]))


def _meddiffusemix(donor: str) -> Callable[[Any], Apply]:
    def build(stage: Any) -> Apply:
        from ..meddiffusemix import MedDiffuseMixer

        return MedDiffuseMixer(
            stage.mix_config,
            stage.saliency,
            stage.variants,
            stage.cache,
            stage.counters,
            mask_seed=stage.variant_seed,
            cache_results=stage.cache_results,
            donor=donor,
        )

    return build


def _plain(apply: Apply) -> Callable[[Any], Apply]:
    return lambda stage: apply


@dataclass(frozen=True)
class MethodSpec:
    name: str
    family: str
    build: Callable[[Any], Apply]  # the stage -> the callable it runs per batch
    needs_saliency: bool = False
    needs_variants: bool = False
    mixes_labels: bool = False  # soft (B, K) targets
    geometric: bool = False  # moves pixels: the ROI moves with them
    shows_originals: bool = False  # the stage shows the original with ``original_probability``
    multi_label: bool = True  # works on finding vectors (multi-label datasets); see NOT_MULTI_LABEL for why not


METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec("none", "identity", _plain(_identity)),
        MethodSpec("standard", "geometric", _plain(standard), geometric=True),
        MethodSpec("mixup", "label-mixing", _plain(mixup), mixes_labels=True),
        MethodSpec("cutmix", "label-mixing", _plain(cutmix), mixes_labels=True),
        MethodSpec("saliencymix", "label-mixing", _plain(saliencymix), needs_saliency=True, mixes_labels=True),
        MethodSpec("keepaugment", "saliency-kept", _plain(keepaugment), needs_saliency=True),
        MethodSpec(
            "diffusemix", "generative", _plain(diffusemix), needs_variants=True, shows_originals=True, multi_label=False
        ),
        MethodSpec(
            "hybrid-filter",
            "generative",
            _plain(hybrid_filter),
            needs_variants=True,
            shows_originals=True,
            multi_label=False,
        ),
        MethodSpec(
            "dafusion", "generative", _plain(dafusion), needs_variants=True, shows_originals=True, multi_label=False
        ),
        MethodSpec(
            "meddiffusemix",
            "meddiffusemix",
            _meddiffusemix("variant"),
            needs_saliency=True,
            needs_variants=True,
            shows_originals=True,
        ),
        # controls: the same W, another donor in place of the diffusion variant (what diffusion itself adds)
        MethodSpec(
            "meddiffusemix-noise", "meddiffusemix", _meddiffusemix("noise"), needs_saliency=True, shows_originals=True
        ),
        MethodSpec(
            "meddiffusemix-other-image",
            "meddiffusemix",
            _meddiffusemix("other-image"),
            needs_saliency=True,
            shows_originals=True,
        ),
    )
}


MULTI_LABEL = tuple(name for name, spec in METHODS.items() if spec.multi_label)
# why the others are refused on multi-label datasets (the stage, the loader and `train` say this)
NOT_MULTI_LABEL = (
    "their diffusion variant replaces the image (DA-Fusion) or half of it (DiffuseMix, hybrid-filter), evidence "
    "included, and on a multi-label dataset the generator is conditioned on no finding (one shared class: a "
    "finding vector is no class), so which findings a variant still shows is unknown while its label would claim "
    "the original's; MedDiffuseMix uses the same variants only off every finding's evidence"
)


def multi_label_refusal(name: str) -> str | None:
    """``None`` if method or preset ``name`` works on multi-label data, else the reason naming every method that
    does not."""
    spec, _ = resolve(name)
    if spec.multi_label:
        return None
    refused = ", ".join(n for n, s in METHODS.items() if not s.multi_label)
    return (
        f"augment {name!r} does not run on multi-label data: {refused} are refused there — {NOT_MULTI_LABEL}. "
        f"Multi-label methods: {', '.join(MULTI_LABEL)} (and the meddiffusemix presets)"
    )


@dataclass(frozen=True)
class Preset:
    """A named configuration of a base method (an ablation): its MixConfig settings."""

    method: str
    mix: Mapping[str, Any] = field(default_factory=dict)
    about: str = ""


PRESETS: dict[str, Preset] = {
    "meddiffusemix-random-mask": Preset(
        "meddiffusemix", {"random_mask": True}, "a random box of the evidence's area is protected instead"
    ),
    "meddiffusemix-adaptive-alpha": Preset(
        "meddiffusemix", {"adaptive_alpha": True}, "strength lowered where saliency is spread out"
    ),
    "meddiffusemix-hard-mask": Preset("meddiffusemix", {"soft_mask": False}, "no blur at the mask's edge"),
    "meddiffusemix-no-margin": Preset("meddiffusemix", {"margin": 0}, "no margin around the evidence"),
    "meddiffusemix-no-check": Preset("meddiffusemix", {"check": False}, "no preservation check"),
    "meddiffusemix-legacy": Preset(
        "meddiffusemix", dict(LEGACY_MIX), "the earlier defaults: the top 30 % of the map and a margin protected"
    ),
}


RENAMED = {
    "meddiffusemix-fixed-alpha": "meddiffusemix: a fixed strength is the default now; the ablation is "
    "meddiffusemix-adaptive-alpha",
    "genmix": "hybrid-filter: the published GenMix edits images with a prompt-guided image-editing model, which "
    "cannot be run here; what this project called genmix is a filtered DiffuseMix-style hybrid, now `hybrid-filter`",
}


def get_method(name: str) -> MethodSpec:
    if name in RENAMED:
        raise ValueError(f"augment method {name!r} was renamed to {RENAMED[name]}")
    if name not in METHODS:
        raise ValueError(
            f"unknown augment method {name!r}; choose from {sorted(METHODS)} or a preset {sorted(PRESETS)}"
        )
    return METHODS[name]


def resolve(name: str) -> tuple[MethodSpec, dict[str, Any]]:
    """A method or preset name → (base method, MixConfig settings of the preset)."""
    if name in PRESETS:
        preset = PRESETS[name]
        return get_method(preset.method), dict(preset.mix)
    return get_method(name), {}
