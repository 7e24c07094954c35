"""The experiment's YAML, strictly: unknown keys are refused with the list of known ones, and every method entry
says which method runs with which settings (so the name recorded is the one that ran).

A method entry is a name (a method such as ``cutmix`` or a preset such as ``meddiffusemix-hard-mask``) or a
mapping::

    - name: meddiffusemix-q80        # the label in tables and run folders
      method: meddiffusemix          # a method or preset
      mix: {quantile: 0.8}           # MixConfig fields
      variants_per_sample: 2         # any StageSettings field
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ..augment.methods import resolve
from ..augment.settings import StageSettings

__all__ = ["ExperimentConfig", "MethodConfig", "load_experiment_config"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass(frozen=True)
class MethodConfig:
    name: str
    method: str
    settings: StageSettings = field(default_factory=StageSettings)

    def describe(self) -> dict[str, Any]:
        """What ran, as recorded next to each run's metrics."""
        spec, _ = resolve(self.method)
        return {
            "name": self.name,
            "method": self.method,
            "base_method": spec.name,
            "settings": self.settings.describe(),
        }


@dataclass(frozen=True)
class ExperimentConfig:
    dataset: str
    out: str
    methods: tuple[MethodConfig, ...]
    seeds: tuple[int, ...] = (0,)
    fractions: tuple[float, ...] = (1.0,)
    epochs: int = 5
    steps: int | None = None  # optimizer steps per run, whatever the train fraction (overrides epochs)
    batch_size: int = 64
    lr: float = 1e-3
    workers: int = 0
    model: str = "cnn"
    loss: str = "ce"
    device: str | None = None
    teacher: str | None = None
    teacher_model: str = "cnn"
    generator: str | None = None
    variant_cache: str | None = None
    report_splits: tuple[str, ...] = ("val", "test")
    evidence_split: str = "train"
    evidence_batches: int | None = None  # None: the whole split
    min_teacher_val_auc: float | None = None  # refuse to run (one line) with a weaker teacher
    saliency_methods: tuple[str, ...] = ("gradcam", "gradcam-multiscale", "gradients", "integrated-gradients")
    jobs: int = 1  # cells trained at once, in processes of their own sharing the cores (torch threads = cores / jobs)

    def __post_init__(self) -> None:
        if not self.methods:
            raise ValueError("methods: the list is empty")
        names = [m.name for m in self.methods]
        if len(set(names)) != len(names):
            raise ValueError(f"methods: names must be unique, got {names}")
        from ..augment.saliency import METHODS as SALIENCY_METHODS

        unknown = sorted(set(self.saliency_methods) - set(SALIENCY_METHODS))
        if unknown:
            raise ValueError(f"saliency_methods: unknown {unknown}; known: {list(SALIENCY_METHODS)}")
        if not self.seeds:
            raise ValueError("seeds: the list is empty")
        for fraction in self.fractions:
            if not 0 < fraction <= 1:
                raise ValueError(f"fractions: {fraction} is not in (0, 1]")
        for name in ("epochs", "batch_size", "steps", "jobs"):
            value = getattr(self, name)
            if name == "steps" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a whole number ≥ 1, got {value!r}")


def _method(entry: Any, where: str) -> MethodConfig:
    if isinstance(entry, str):
        return MethodConfig(entry, entry, StageSettings.for_method(entry, {}, where))
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where}: expected a method name or a mapping with name/method, got {entry!r}")
    values = dict(entry)
    if "method" not in values:
        raise ValueError(f"{where}: a method mapping needs 'method' (a method or preset name)")
    method = str(values.pop("method"))
    resolve(method)
    name = str(values.pop("name", method))
    if not _NAME.match(name):
        raise ValueError(f"{where}: name {name!r} must be letters, digits and _ . + - (it names a run folder)")
    return MethodConfig(name, method, StageSettings.for_method(method, values, where))


def _tuple(value: Any) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def load_experiment_config(path: str | Path) -> ExperimentConfig:
    """Read and check an experiment YAML; every error names the file and the key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"experiment config {path} not found") from None
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML ({error})") from error
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of settings at the top level")
    known = [f.name for f in fields(ExperimentConfig)]
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; known: {sorted(known)}")
    missing = [name for name in ("dataset", "out", "methods") if name not in raw]
    if missing:
        raise ValueError(f"{path}: missing {missing}")
    values = dict(raw)
    values["methods"] = tuple(
        _method(entry, f"{path}: methods[{index}]") for index, entry in enumerate(_tuple(raw["methods"]))
    )
    for name in ("seeds", "fractions", "report_splits", "saliency_methods"):
        if name in values:
            values[name] = _tuple(values[name])
    try:
        return ExperimentConfig(**values)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: {error}") from error
