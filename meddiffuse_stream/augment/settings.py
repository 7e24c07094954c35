"""A stage's settings as one frozen, typed object, checked once where they enter (YAML, CLI, Python).

Everything about an :class:`~meddiffuse_stream.augment.stage.AugmentStage` that is not a model, a path or a seed:
the :class:`~meddiffuse_stream.augment.mix.MixConfig` and the per-sample draws. :meth:`StageSettings.for_method` is
the one place a preset's MixConfig settings meet the user's: the user's beside the preset's (never over them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from .methods import resolve
from .mix import MixConfig
from .names import DEFAULT_SALIENCY_METHOD, SALIENCY_METHODS

__all__ = ["StageSettings", "mix_for"]


def mix_for(method: str, overrides: Mapping[str, Any] | None = None, where: str = "mix") -> MixConfig:
    """The MixConfig a method or preset runs with: the preset's settings, then ``overrides`` over them."""
    _, preset = resolve(method)  # an unknown name is refused with the list of known ones
    overrides = dict(overrides or {})
    clash = sorted(name for name, value in overrides.items() if name in preset and preset[name] != value)
    if clash:
        raise ValueError(f"{where}: {clash} set by preset {method!r} itself ({preset}); run the base method instead")
    return MixConfig.from_mapping({**preset, **overrides}, where)


def _whole(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be a whole number ≥ {low}, got {value!r}")


@dataclass(frozen=True)
class StageSettings:
    """What an experiment or the CLI may set per method, validated on construction."""

    mix: MixConfig = field(default_factory=MixConfig)
    variants_per_sample: int = 2  # M: the variants a sample's draws choose from
    mask_draws: int = 2  # D: MedDiffuseMix random fields per sample
    original_probability: float = 0.5  # share of samples generative methods show as they are
    compose_standard: bool = False  # flips, rotations and intensity changes after the method
    saliency_method: str = DEFAULT_SALIENCY_METHOD
    saliency_layer: int = 0
    cache_saliency: bool | None = None  # None: when a cache is given and the teacher is frozen
    cache_results: bool | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.mix, MixConfig):
            raise ValueError(f"mix must be a MixConfig (build it with StageSettings.for_method), got {self.mix!r}")
        _whole("variants_per_sample", self.variants_per_sample, 1)
        _whole("mask_draws", self.mask_draws, 1)
        _whole("saliency_layer", self.saliency_layer, 0)
        if isinstance(self.original_probability, bool) or not 0 <= self.original_probability < 1:
            raise ValueError(f"original_probability must be in [0, 1), got {self.original_probability!r}")
        if self.saliency_method not in SALIENCY_METHODS:
            raise ValueError(f"saliency_method must be one of {SALIENCY_METHODS}, got {self.saliency_method!r}")
        for name in ("compose_standard", "cache_saliency", "cache_results"):
            value = getattr(self, name)
            if not isinstance(value, bool) and not (value is None and name != "compose_standard"):
                raise ValueError(f"{name} must be true or false, got {value!r}")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def for_method(cls, method: str, values: Mapping[str, Any] | None = None, where: str = "settings"):
        """Settings for ``method`` from plain values (a YAML mapping, CLI options): ``mix`` is a mapping of
        MixConfig fields merged over the preset's; every other key is a field of this class."""
        values = dict(values or {})
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ValueError(f"{where}: unknown setting(s) {unknown}; known: {cls.field_names()}")
        mix = values.pop("mix", None)
        if isinstance(mix, MixConfig):
            raise ValueError(f"{where}: give mix as a mapping of settings here; a MixConfig goes to the constructor")
        try:
            return cls(mix=mix_for(method, mix, f"{where}: mix"), **values)
        except TypeError as error:
            raise ValueError(f"{where}: {error}") from error

    def with_changes(self, **changes: Any) -> StageSettings:
        """A copy with some fields replaced (validated again)."""
        return replace(self, **changes)

    def describe(self) -> dict[str, Any]:
        """Plain values, as recorded beside results."""
        values = {name: getattr(self, name) for name in self.field_names()}
        values["mix"] = {name: getattr(self.mix, name) for name in MixConfig.field_names()}
        return values
