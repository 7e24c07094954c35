"""The command-line options that build a device stage (``train`` and ``preview`` share them)."""

from __future__ import annotations

import argparse
from typing import Any

import yaml

__all__ = ["add_augment_options", "stage_from_args"]


def _setting(text: str) -> tuple[str, Any]:
    name, equals, value = text.partition("=")
    if not equals or not name.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE (e.g. quantile=0.8)")
    return name.strip(), yaml.safe_load(value)  # numbers, booleans and null as YAML reads them


def add_augment_options(parser: argparse.ArgumentParser) -> None:
    """The models an augmentation may need, and the stage's settings."""
    from ..augment.names import DEFAULT_SALIENCY_METHOD, SALIENCY_METHODS

    group = parser.add_argument_group("augmentation models and settings")
    group.add_argument("--teacher", help="saliency teacher checkpoint (saliency methods)")
    group.add_argument("--teacher-model", default="cnn", choices=["cnn", "cnn-small", "resnet18", "vit-tiny"])
    group.add_argument("--generator", help="generator folder (diffusion methods)")
    group.add_argument("--variant-cache", help="variant cache folder or URL")
    group.add_argument("--saliency-method", default=DEFAULT_SALIENCY_METHOD, choices=SALIENCY_METHODS)
    group.add_argument("--variants", type=int, default=2, help="variants per sample the stage chooses from (M)")
    group.add_argument("--mask-draws", type=int, default=2, help="MedDiffuseMix mask draws per sample (D)")
    group.add_argument(
        "--original-probability", type=float, default=0.5, help="share of samples diffusion methods show unchanged"
    )
    group.add_argument("--compose-standard", action="store_true", help="flips, rotations, intensity after the method")
    group.add_argument(
        "--mix",
        type=_setting,
        action="append",
        metavar="NAME=VALUE",
        default=[],
        help="a MixConfig setting, e.g. --mix quantile=0.8 --mix margin=4 (repeatable)",
    )


def stage_from_args(
    args: argparse.Namespace,
    dataset: str,
    *,
    device: str | None = None,
    storage_options: dict[str, Any] | None = None,
):
    """A configured AugmentStage, the method name for model-free methods, or None; ``storage_options`` reach the
    dataset and the variant cache."""
    from .stage_factory import StageSettings, build_stage

    settings = StageSettings.for_method(
        args.augment,
        {
            "mix": dict(args.mix),
            "variants_per_sample": args.variants,
            "mask_draws": args.mask_draws,
            "original_probability": args.original_probability,
            "compose_standard": args.compose_standard,
            "saliency_method": args.saliency_method,
        },
        "--mix / augment options",
    )
    return build_stage(
        args.augment,
        dataset,
        teacher=args.teacher,
        teacher_model=args.teacher_model,
        generator=args.generator,
        variant_cache=args.variant_cache,
        seed=args.seed,
        settings=settings,
        device=device,
        storage_options=storage_options,
    )
