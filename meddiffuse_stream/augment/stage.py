"""The device stage: one object that turns a decoded batch into an augmented one, for every method.

It runs in the main process on ``device`` (never inside decode workers), batched: one saliency call, one
variant lookup and at most one generator call per batch. All randomness comes from one seeded
``numpy.random.Generator`` whose state, with the counters and the teacher version, is the stage's
``state_dict`` — part of the loader's, so a resumed run draws the same augmentations.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..counters import Counters
from . import baselines
from .cache import VariantCache, content_hashes, entry_name
from .mix import MixConfig, mix, mix_weight, top_fraction_iou
from .saliency import SaliencyExtractor

__all__ = ["AUGMENTS", "LABEL_MIXING", "NEEDS_SALIENCY", "NEEDS_VARIANTS", "AugmentStage", "variant_seed_of"]

AUGMENTS = ("none", "standard", "mixup", "cutmix", "saliencymix", "diffusemix", "genmix", "dafusion", "meddiffusemix")
LABEL_MIXING = ("mixup", "cutmix", "saliencymix")
NEEDS_SALIENCY = ("saliencymix", "meddiffusemix")
NEEDS_VARIANTS = ("diffusemix", "genmix", "dafusion", "meddiffusemix")


def variant_seed_of(variant_seed: int, key: str, index: int) -> int:
    """The noise seed of variant ``index`` of sample ``key``: the same in the stage and in warm-cache."""
    text = f"{variant_seed}|{key}|{index}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


class AugmentStage:
    """``stage(batch) -> batch`` with ``image`` augmented, ``target`` ((B,) labels or (B, K) soft targets) and
    ``mix_weight`` (B, 1, H, W): the share of each pixel that did not come from the original image."""

    def __init__(
        self,
        method: str,
        num_classes: int,
        *,
        teacher: torch.nn.Module | None = None,
        saliency_method: str = "gradcam",
        generator: Any = None,
        variant_cache: VariantCache | str | None = None,
        variants_per_sample: int = 1,
        mix_config: MixConfig | None = None,
        cache_saliency: bool = False,
        seed: int = 0,
        variant_seed: int = 0,
        refresh_every: int = 0,
        device: str | torch.device | None = None,
        storage_options: dict[str, Any] | None = None,
        cpu_threads: int | None = None,
    ) -> None:
        if method not in AUGMENTS:
            raise ValueError(f"augment must be one of {AUGMENTS}, got {method!r}")
        if method in NEEDS_SALIENCY and teacher is None:
            raise ValueError(f"augment={method!r} needs a saliency teacher: pass teacher= (a trained classifier)")
        if method in NEEDS_VARIANTS and generator is None and variant_cache is None:
            raise ValueError(f"augment={method!r} needs diffusion variants: pass generator= and/or variant_cache=")
        if variants_per_sample < 1:
            raise ValueError(f"variants_per_sample must be at least 1, got {variants_per_sample}")
        self.method = method
        self.num_classes = num_classes
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.teacher = teacher.to(self.device) if teacher is not None else None
        self.extractor = SaliencyExtractor(self.teacher, saliency_method) if self.teacher is not None else None
        self.generator = generator.to(self.device) if generator is not None else None
        self.counters = Counters()
        if isinstance(variant_cache, str):
            variant_cache = VariantCache(variant_cache, storage_options)
        self.cache = variant_cache
        if self.cache is not None:
            self.cache.counters = self.counters
        self.variants_per_sample = variants_per_sample
        self.mix_config = mix_config or MixConfig()
        self.cache_saliency = cache_saliency
        self.seed = seed
        self.variant_seed = variant_seed  # apart from seed: warm-cache must produce the same variants
        self.refresh_every = refresh_every  # training copies its model into the teacher every N steps (0: frozen)
        self.details = True  # return saliency and variant too (the loader turns this off without as_dict)
        # torch intra-op threads while the stage runs on the CPU. None: MedDiffuseLoader gives it the cores its
        # decode workers leave (a woken torch thread pool spins on the workers' cores: measured, 2 cores, 2
        # workers, warm cache, the loader with the stage at 0.48 of the plain loader with torch's 2 threads, 0.6-0.7
        # with 1); alone, torch's setting. 0: always torch's setting.
        self.cpu_threads = cpu_threads
        self.teacher_version = 0
        self.rng = np.random.default_rng(seed)

    # --- state -----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "counters": self.counters.as_dict(),
                "teacher_version": self.teacher_version, "method": self.method}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("method") != self.method:
            raise ValueError(f"augment state is for {state.get('method')!r}, this stage runs {self.method!r}")
        self.rng.bit_generator.state = state["rng"]
        self.counters.clear()
        self.counters.update(state["counters"])
        self.teacher_version = int(state["teacher_version"])

    def configure_for_loader(self, *, details: bool, cpu_threads: int | None) -> None:
        """What the loader it runs in decides: whether saliency and variant planes are returned (``details``, for
        ``as_dict``), and torch's CPU threads when the stage was not given its own ``cpu_threads``."""
        self.details = details
        if self.cpu_threads is None:
            self.cpu_threads = cpu_threads

    def maybe_refresh_teacher(self, model: torch.nn.Module, step: int, every: int) -> bool:
        """Copy the training model into the teacher every ``every`` steps (0: never); returns whether it did."""
        if every <= 0 or step == 0 or step % every:
            return False
        self.update_teacher({k: v.detach().clone() for k, v in model.state_dict().items()})
        return True

    def update_teacher(self, weights: dict[str, torch.Tensor]) -> None:
        """Refresh the saliency teacher from the training model (cached saliency of the old one is not reused)."""
        if self.teacher is None:
            raise ValueError("this stage has no teacher to update")
        self.teacher.load_state_dict(weights)
        self.teacher_version += 1

    # --- the work --------------------------------------------------------------------------------------------
    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The augmented batch: ``image``, ``target``, ``mix_weight`` and, with ``details``, saliency and variant."""
        if self.device.type != "cpu" or not self.cpu_threads:
            return self._apply(batch)
        previous = torch.get_num_threads()
        torch.set_num_threads(self.cpu_threads)
        try:
            return self._apply(batch)
        finally:
            torch.set_num_threads(previous)

    def _apply(self, batch: dict[str, Any]) -> dict[str, Any]:
        images = batch["image"].to(self.device, non_blocking=True)
        labels = batch["label"].to(self.device, non_blocking=True)
        keys: Sequence[str] = batch["key"]
        targets = F.one_hot(labels, self.num_classes).to(images.dtype)
        saliency = variants = None
        if self.method == "meddiffusemix" and self._whole_result_cacheable:
            out, weight, saliency, variants = self._meddiffusemix_cached(images, labels, keys, targets)
            soft = targets
        else:
            # variant entries are always named by content; saliency entries only when cached: hashed once, here
            contents = content_hashes(images) if self.method in NEEDS_VARIANTS else None
            if self.method in NEEDS_SALIENCY:
                saliency = self._saliency(images, labels, keys, contents)
            if self.method in NEEDS_VARIANTS:
                variants = self._variants(images, labels, keys, self._draw_choices(len(images)), contents)
            if self.method == "none":
                out, soft, weight = images, targets, torch.zeros_like(images[:, :1])
            elif self.method == "meddiffusemix":
                out, soft, weight = self._meddiffusemix(images, labels, targets, saliency, variants)
            elif self.method in ("standard", "mixup", "cutmix"):
                out, soft, weight = getattr(baselines, self.method)(images, targets, self.rng)
            elif self.method == "saliencymix":
                out, soft, weight = baselines.saliencymix(images, targets, self.rng, saliency)
            else:
                out, soft, weight = getattr(baselines, self.method)(images, targets, self.rng, variants)
        self.counters["batches"] += 1
        result = dict(batch, image=out, label=labels, mix_weight=weight, original=images)
        result["target"] = soft if self.method in LABEL_MIXING else labels
        if saliency is not None:
            result["saliency"] = saliency
        if variants is not None:
            result["variant"] = variants
        return result

    def _saliency(
        self, images: torch.Tensor, labels: torch.Tensor, keys: Sequence[str], contents: list[str] | None = None
    ) -> torch.Tensor:
        assert self.extractor is not None
        if not (self.cache_saliency and self.cache is not None):
            return self.extractor(images, labels)
        producer = f"saliency-{self.extractor.method}-teacher{self.teacher_version}"
        contents = contents if contents is not None else content_hashes(images)
        names = [entry_name(k, c, producer, 0, 0) for k, c in zip(keys, contents, strict=True)]
        return self._cached(names, lambda index: self.extractor(images[index], labels[index]), images[:, :1])

    def _draw_choices(self, count: int) -> np.ndarray:
        return self.rng.integers(0, self.variants_per_sample, count)

    @property
    def _whole_result_cacheable(self) -> bool:
        """With a frozen teacher and no random ablation, a sample's result is a pure function of (sample, variant
        index, teacher version, configuration): the checked result itself is cached, and a warm epoch makes no
        model call at all."""
        return self.cache_saliency and self.cache is not None and not self.mix_config.random_mask

    def _meddiffusemix_cached(self, images, labels, keys, targets):
        """Results (image, W) and details (saliency, variant) are separate entries: a loader that yields only
        ``(images, targets)`` sets ``details = False`` and reads half the bytes."""
        choices = self._draw_choices(len(images))
        config = hashlib.sha256(repr(self.mix_config).encode()).hexdigest()[:8]
        identity = self.generator.identity if self.generator is not None else "cached-only"
        producer = f"meddiffusemix-{identity}-teacher{self.teacher_version}-{config}"
        channels = images.shape[1]
        strength = getattr(self.generator, "strength", 0.0)
        contents = content_hashes(images)
        names = [entry_name(k, c, producer, strength, int(v)) for k, c, v in zip(keys, contents, choices, strict=True)]
        detail_names = [name[: -len(".bin")] + ".details.bin" for name in names]

        def details(index: torch.Tensor) -> torch.Tensor:
            rows = index.tolist()
            subset_keys, subset_contents = [keys[i] for i in rows], [contents[i] for i in rows]
            saliency = self._saliency(images[index], labels[index], subset_keys, subset_contents)
            variants = self._variants(images[index], labels[index], subset_keys, choices[rows], subset_contents)
            return torch.cat([saliency, variants], dim=1)

        def results(index: torch.Tensor) -> torch.Tensor:
            extra = details(index)
            saliency, variants = extra[:, :1], extra[:, 1:]
            out, _, weight = self._meddiffusemix(images[index], labels[index], targets[index], saliency, variants)
            if self.cache is not None:
                rounded = extra.to(torch.float16).cpu().numpy()
                for row, position in enumerate(index.tolist()):
                    self.cache.put(detail_names[position], rounded[row])
            return torch.cat([out, weight], dim=1)

        shape = (len(images), channels + 1, *images.shape[-2:])
        stacked = self._cached(names, results, images.new_empty(shape), counter="result_cache_hits")
        out, weight = stacked[:, :channels], stacked[:, channels:]
        if not self.details:
            return out, weight, None, None
        extra = self._cached(detail_names, details, images.new_empty(shape))
        return out, weight, extra[:, :1], extra[:, 1:]

    def _variants(
        self, images: torch.Tensor, labels: torch.Tensor, keys: Sequence[str], choices: np.ndarray, contents: list[str]
    ) -> torch.Tensor:
        identity = self.generator.identity if self.generator is not None else "cached-only"
        strength = getattr(self.generator, "strength", 0.0)
        names = [entry_name(k, c, identity, strength, int(v))
                 for k, c, v in zip(keys, contents, choices, strict=True)]  # fmt: skip
        seeds = [variant_seed_of(self.variant_seed, k, int(v)) for k, v in zip(keys, choices, strict=True)]

        def generate(index: torch.Tensor) -> torch.Tensor:
            if self.generator is None:
                raise FileNotFoundError("variant cache miss and no generator= to fill it: run warm-cache first")
            self.counters["generator_calls"] += 1
            self.counters["generated"] += len(index)
            return self.generator(images[index], labels[index], [seeds[i] for i in index.tolist()])

        return self._cached(names, generate, images)

    def _cached(self, names: list[str], produce: Any, like: torch.Tensor, counter: str = "") -> torch.Tensor:
        """Entries from the cache where present; the rest produced in one batched call and written back."""
        found_rows, found = [], []
        missing = []
        for index, name in enumerate(names):
            entry = self.cache.get(name) if self.cache is not None else None
            if entry is not None and entry.shape == tuple(like.shape[1:]):
                found_rows.append(index)
                found.append(entry)
            else:
                missing.append(index)
        if counter:
            self.counters[counter] += len(names) - len(missing)
        if not missing:  # the warm path: one stack, one conversion
            return torch.from_numpy(np.stack(found)).to(like)
        out = torch.empty_like(like)
        if found:
            out[torch.as_tensor(found_rows, device=like.device)] = torch.from_numpy(np.stack(found)).to(like)
        if missing:
            index = torch.as_tensor(missing, device=like.device)
            # rounded to the stored precision whether or not a cache is set: a run gives the same bytes cold or warm
            produced = produce(index).to(torch.float16).to(like.dtype)
            out[index] = produced
            if self.cache is not None:
                for row, position in enumerate(missing):
                    self.cache.put(names[position], produced[row].detach().cpu().numpy())
        return out

    def _meddiffusemix(self, images, labels, targets, saliency, variants):
        """Mix where saliency is low; check the evidence stayed; attenuate (halve) or fall back per image."""
        assert self.teacher is not None and self.extractor is not None
        config = self.mix_config
        scale = torch.ones(len(images), device=images.device)
        weight = mix_weight(saliency, config, scale, self.rng)
        out = mix(images, variants, weight)
        if not config.check:
            self.counters["accepted"] += len(images)
            return out, targets, weight
        with torch.no_grad():
            before = torch.softmax(self.teacher.eval()(images), dim=1).gather(1, labels.view(-1, 1)).squeeze(1)
        pending = torch.arange(len(images), device=images.device)
        for attempt in range(config.retries + 1):
            candidates = out[pending]
            moved = self.extractor(candidates, labels[pending])
            with torch.no_grad():
                after = torch.softmax(self.teacher(candidates), dim=1).gather(1, labels[pending].view(-1, 1)).squeeze(1)
            iou = top_fraction_iou(saliency[pending], moved, config.iou_top)
            passed = (iou >= config.min_iou) & (before[pending] - after <= config.max_prob_drop)
            self.counters["accepted" if attempt == 0 else "attenuated"] += int(passed.sum())
            pending = pending[~passed]
            if len(pending) == 0:
                break
            if attempt < config.retries:
                scale[pending] *= 0.5
                weight[pending] = mix_weight(saliency[pending], config, scale[pending], self.rng)
                out[pending] = mix(images[pending], variants[pending], weight[pending])
        if len(pending):
            self.counters["rejected"] += len(pending)
            weight[pending] = 0
            out[pending] = images[pending]
        return out, targets, weight
