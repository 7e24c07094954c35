"""The device stage: one object that turns a decoded batch into an augmented one, for every method.

It runs in the main process on ``device`` (never inside decode workers), batched: one saliency call, one variant
lookup and at most one generator call per batch. All randomness comes from one seeded ``numpy.random.Generator``
per batch, drawn in a fixed order — which samples are shown as they are, which of the M variants and which of the
D mask draws each of the others gets, then the method's own draws. Inside a loader it is seeded from ``(seed,
epoch, rank, batch index)``: every epoch and rank a fresh draw, and a resumed run draws the same augmentations
whichever rank's state it loaded (frameworks load rank 0's everywhere). Called directly, the stage draws from its
own generator, whose state (with the counters and the teacher's identity) is its ``state_dict``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..counters import Counters
from ..nodes.to_torch import unit_float
from .cache import VariantCache
from .mask_planes import MaskPlanes
from .methods import METHODS, PRESETS, get_method, multi_label_refusal
from .methods.geometric import apply_standard, draw_standard
from .mix import MixConfig
from .providers import SaliencyProvider, VariantProvider, variant_seed_of
from .saliency import SaliencyExtractor
from .settings import StageSettings
from .stage_inputs import Rows, batch_inputs
from .teacher import TeacherHandle

__all__ = ["AUGMENTS", "LABEL_MIXING", "NEEDS_SALIENCY", "NEEDS_VARIANTS", "AugmentStage", "variant_seed_of"]

AUGMENTS = tuple(METHODS)
LABEL_MIXING = tuple(name for name, spec in METHODS.items() if spec.mixes_labels)
NEEDS_SALIENCY = tuple(name for name, spec in METHODS.items() if spec.needs_saliency)
NEEDS_VARIANTS = tuple(name for name, spec in METHODS.items() if spec.needs_variants)


def _settings(settings: StageSettings | None, shorthand: Mapping[str, Any]) -> StageSettings:
    """``settings``, with StageSettings fields given as keywords (``mix_config=`` for ``mix``) replaced in it."""
    known = {name for name in StageSettings.field_names() if name != "mix"} | {"mix_config"}
    unknown = sorted(set(shorthand) - known)
    if unknown:
        raise TypeError(f"AugmentStage got unexpected keyword(s) {unknown}; settings are {sorted(known)}")
    changes = {("mix" if name == "mix_config" else name): value for name, value in shorthand.items()}
    if changes.get("mix", MixConfig()) is None:
        changes.pop("mix")
    base = settings if settings is not None else StageSettings()
    try:
        return base.with_changes(**changes) if changes else base
    except ValueError as error:
        raise ValueError(f"AugmentStage: {error}") from error


class AugmentStage:
    """``stage(batch) -> batch`` with ``image`` augmented, ``target`` ((B,) labels or (B, K) soft targets),
    ``mix_weight`` (B, 1, H, W) — the share of each pixel that did not come from the original — ``original``,
    ``augmented`` (B,) (whether the sample was changed), ``shown_original`` (B,) (drawn to be shown as it is) and,
    where pixels moved, ``roi`` moved with them and ``original_roi``.

    ``variants_per_sample`` (M) and ``mask_draws`` (D) bound how many distinct MedDiffuseMix results a sample has
    (each cached once); ``original_probability`` is the share of samples shown unchanged by methods that replace
    content with generated content; ``compose_standard`` adds flips, rotations and intensity changes after the
    method (image and ROI alike). ``cache_saliency`` / ``cache_results`` (default: when a cache is given and the
    teacher is frozen) keep the teacher's maps / MedDiffuseMix's checked results in the variant cache.
    """

    def __init__(
        self,
        method: str,
        num_classes: int,
        *,
        settings: StageSettings | None = None,
        teacher: torch.nn.Module | None = None,
        generator: Any = None,
        variant_cache: VariantCache | str | None = None,
        seed: int = 0,
        variant_seed: int = 0,
        refresh_every: int = 0,
        device: str | torch.device | None = None,
        storage_options: dict[str, Any] | None = None,
        **shorthand: Any,
    ) -> None:
        if method in PRESETS:
            raise ValueError(
                f"{method!r} is a preset: build it with meddiffuse_stream.jobs.stage_factory.build_stage "
                f"or pass method={PRESETS[method].method!r} with settings=StageSettings.for_method({method!r})"
            )
        self.spec = get_method(method)
        self.settings = _settings(settings, shorthand)
        if self.spec.needs_saliency and teacher is None:
            raise ValueError(f"augment={method!r} needs a saliency teacher: pass teacher= (a trained classifier)")
        if self.spec.needs_variants and generator is None and variant_cache is None:
            raise ValueError(f"augment={method!r} needs diffusion variants: pass generator= and/or variant_cache=")
        self.method = method
        self.num_classes = num_classes
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.counters = Counters()
        self.cache = (
            VariantCache(variant_cache, storage_options, self.counters)
            if isinstance(variant_cache, str)
            else variant_cache
        )
        self.original_probability = self.settings.original_probability if self.spec.shows_originals else 0.0
        self.seed = seed
        self.variant_seed = variant_seed  # apart from seed: warm-cache must produce the same variants
        frozen = refresh_every <= 0
        # results and maps are cached (by default) only for a frozen teacher: a refreshed one changes identity
        # every N steps, so its entries would never be read again
        chosen = self.settings.cache_results
        self.cache_results = self.cache is not None and (frozen if chosen is None else chosen)
        self.saliency: SaliencyProvider | None = None
        self.teacher_handle: TeacherHandle | None = None
        if teacher is not None:
            teacher = teacher.to(self.device)
            extractor = SaliencyExtractor(teacher, self.settings.saliency_method, layer=self.settings.saliency_layer)
            chosen = self.settings.cache_saliency
            use_cache = (self.cache is not None and frozen) if chosen is None else chosen
            self.saliency = SaliencyProvider(teacher, extractor, self.cache, self.counters, use_cache)
            self.teacher_handle = TeacherHandle(self.saliency, refresh_every)
        elif refresh_every:
            raise ValueError("refresh_every needs a teacher= to refresh")
        if generator is not None:
            generator = generator.to(self.device)
        self.variants = VariantProvider(generator, self.cache, self.counters, variant_seed)
        self.rng = np.random.default_rng(seed)
        self._apply = self.spec.build(self)

    # the settings as attributes: what methods and callers read
    mix_config = property(lambda self: self.settings.mix)
    variants_per_sample = property(lambda self: self.settings.variants_per_sample)
    mask_draws = property(lambda self: self.settings.mask_draws)
    compose_standard = property(lambda self: self.settings.compose_standard)
    refresh_every = property(lambda self: self.teacher_handle.every if self.teacher_handle is not None else 0)

    @property
    def teacher(self) -> torch.nn.Module | None:
        return self.saliency.teacher if self.saliency is not None else None

    @property
    def generator(self) -> Any:
        return self.variants.generator

    def __getstate__(self) -> dict[str, Any]:
        """Picklable and copyable — a loader carrying the stage goes to ``ddp_spawn`` / ``mp.spawn`` ranks: the
        method's built functions stay behind and are made again from ``method``."""
        return {name: value for name, value in self.__dict__.items() if name not in ("_apply", "spec")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.spec = get_method(self.method)
        self._apply = self.spec.build(self)

    # --- state -----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        teacher = self.teacher_identity
        return {
            "rng": self.rng.bit_generator.state,
            "counters": self.counters.as_dict(),
            "teacher": teacher,
            "method": self.method,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("method") != self.method:
            raise ValueError(f"augment state is for {state.get('method')!r}, this stage runs {self.method!r}")
        mine = self.teacher_identity
        if state.get("teacher") != mine:
            raise ValueError(
                f"augment state was taken with teacher {state.get('teacher')} but this stage's teacher is {mine}: "
                "load the teacher the run was using (with refresh_every, its weights are in the training checkpoint)"
            )
        self.rng.bit_generator.state = state["rng"]
        self.counters.clear()
        self.counters.update(state["counters"])

    # --- the teacher (its refresh lives in TeacherHandle) ----------------------------------------------------
    def maybe_refresh_teacher(self, model: torch.nn.Module, step: int, every: int | None = None) -> bool:
        """Copy the training model into the teacher every ``every`` steps (default ``refresh_every``; 0: never)."""
        return self.teacher_handle is not None and self.teacher_handle.maybe_refresh(model, step, every)

    def update_teacher(self, weights: dict[str, torch.Tensor]) -> None:
        """Refresh the saliency teacher (applied before the next batch); no old map or result is reused after."""
        if self.teacher_handle is None:
            raise ValueError("this stage has no teacher to update")
        self.teacher_handle.offer(weights)

    @property
    def teacher_identity(self) -> str | None:
        """The identity of the teacher the next batch is augmented with (a pending refresh's, if one waits)."""
        return self.teacher_handle.identity if self.teacher_handle is not None else None

    def teacher_state(self) -> dict[str, torch.Tensor] | None:
        """A CPU copy of the weights the next batch is augmented with (for checkpoints of refreshed teachers)."""
        return self.teacher_handle.state() if self.teacher_handle is not None else None

    # --- the work --------------------------------------------------------------------------------------------
    def __call__(self, batch: dict[str, Any], *, details: bool = True) -> dict[str, Any]:
        """The augmented batch; with ``details``, the saliency and variant planes the method used, too.

        Multi-label batches (``label`` float ``(B, C)``) come back with ``target`` ``(B, C)`` — the finding vectors,
        mixed by label-mixing methods — and, where the batch has a ``label_mask``, ``target_mask`` ``(B, C)``
        (mixed: a finding is known only where both images know it). Per-finding ROIs (``rois``, ``(B, C, H, W)``)
        move with the pixels as ``roi`` does."""
        if self.teacher_handle is not None and self.teacher_handle.apply_pending():
            self._apply = self.spec.build(self)  # methods built around the old teacher's identity
        # a loader with dtype="uint8"/"uint16" delivers stored integers: they become float in [0, 1] here, on the
        # stage's device, after the (smaller) copy
        images = unit_float(batch["image"].to(self.device, non_blocking=True))
        labels = batch["label"].to(self.device, non_blocking=True)
        multi_label = labels.dim() == 2
        if multi_label and not self.spec.multi_label:
            raise ValueError(multi_label_refusal(self.method))
        label_mask = batch.get("label_mask") if multi_label else None
        if label_mask is not None:
            label_mask = label_mask.to(self.device, non_blocking=True).to(images.dtype)
        planes = MaskPlanes.of(batch, self.device)  # roi and rois, 0/1, moved together
        keys: Sequence[str] = batch["key"]
        count = len(images)
        rng = self._generator_for(batch)
        keep = (
            rng.random(count) < self.original_probability if self.original_probability else np.zeros(count, dtype=bool)
        )
        variant_index = rng.integers(0, self.variants_per_sample, count)
        mask_draw = rng.integers(0, self.mask_draws, count)
        targets = labels.to(images.dtype) if multi_label else F.one_hot(labels, self.num_classes).to(images.dtype)
        rows = torch.as_tensor(np.flatnonzero(~keep), device=self.device)
        out, weight = images.clone(), torch.zeros_like(images[:, :1])
        soft, soft_mask = (targets if self.spec.mixes_labels else labels), label_mask
        stacked = planes.stacked  # one concatenation per batch, read below
        moved, extra, extra_roi = stacked, {}, False
        if len(rows):
            picked = Rows(
                images[rows],
                labels[rows],
                targets[rows],
                [keys[i] for i in rows.tolist()],
                variant_index[~keep],
                mask_draw[~keep],
                None if stacked is None else stacked[rows],
                None if label_mask is None else label_mask[rows],
            )
            inputs = batch_inputs(picked, self.saliency, self.variants, self.spec.needs_variants, details, rng)
            result = self._apply(inputs)
            out[rows], weight[rows] = result.images.to(out.dtype), result.weight.to(weight.dtype)
            if self.spec.mixes_labels:
                soft = result.targets  # label-mixing methods never show originals: rows are all rows
                soft_mask = result.target_mask if label_mask is not None else None
            if result.roi is not None and stacked is not None:
                moved = stacked.clone()
                moved[rows] = result.roi.to(moved.dtype)
                extra_roi = True
            extra = {name: self._scatter(plane, rows, images) for name, plane in result.details.items()}
        augmented = torch.as_tensor(~keep, device=self.device)
        if not self.spec.geometric and not self.spec.mixes_labels:
            augmented &= weight.flatten(1).amax(dim=1) > 0
        if self.compose_standard:
            out, moved = apply_standard(out, draw_standard(count, rng), moved)
            augmented, extra_roi = torch.ones_like(augmented), stacked is not None
        self.counters["originals"] += int(keep.sum())
        self.counters["batches"] += 1
        result_batch = dict(
            batch,
            image=out,
            label=labels,
            target=soft,
            mix_weight=weight,
            original=images,
            augmented=augmented,
            shown_original=torch.as_tensor(keep, device=self.device),
        )
        if label_mask is not None:
            result_batch["label_mask"], result_batch["target_mask"] = label_mask, soft_mask
        # pixels moved: the masks moved with them (as decoded they stay beside them as original_roi / original_rois);
        # else they are returned on the stage's device, like every other tensor
        result_batch.update(planes.split(moved, moved=extra_roi))
        if details:
            result_batch.update(extra)
        return result_batch

    @staticmethod
    def _scatter(plane: torch.Tensor, rows: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """A detail plane of the augmented rows placed in a full batch (zeros for samples shown as they are)."""
        full = torch.zeros((len(images), *plane.shape[1:]), device=plane.device, dtype=plane.dtype)
        full[rows] = plane
        return full

    def warm_saliency(self, batch: dict[str, Any]) -> int:
        """Compute the teacher's maps of a batch as decoded and keep them in the cache (what every later draw of
        those samples reads); the number of maps made now. Lets runs that share a teacher extract each map once,
        before they start, instead of each on its first epoch."""
        if self.saliency is None or self.saliency.cache is None:
            raise ValueError(f"augment={self.method!r}: no saliency cache to warm (needs a teacher and a cache)")
        images = unit_float(batch["image"].to(self.device, non_blocking=True))
        labels = batch["label"].to(self.device, non_blocking=True)
        label_mask = batch.get("label_mask") if labels.dim() == 2 else None
        count = len(images)
        rows = Rows(
            images,
            labels,
            labels.to(images.dtype),
            list(batch["key"]),
            np.zeros(count, dtype=np.int64),
            np.zeros(count, dtype=np.int64),
            None,
            None if label_mask is None else label_mask.to(self.device).to(images.dtype),
        )
        before = self.counters["cache_misses"]
        inputs = batch_inputs(rows, self.saliency, self.variants, False, False, self.rng)
        assert inputs.saliency is not None, "a stage with a saliency provider gives its inputs saliency"
        inputs.saliency(None)
        return self.counters["cache_misses"] - before

    def _generator_for(self, batch: dict[str, Any]) -> np.random.Generator:
        """The batch's draws: seeded from ``(seed, epoch, rank, batch index)`` when the loader says where the batch
        sits — the same on a resumed run whichever rank's state it loaded, different on every rank — else the
        stage's own generator (a stage called directly, whose state is then in ``state_dict``)."""
        position = batch.get("position")
        if position is None:
            return self.rng
        epoch, rank, index = (int(v) for v in position)
        return np.random.default_rng([self.seed, epoch, rank, index])
