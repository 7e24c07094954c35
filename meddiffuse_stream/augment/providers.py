"""Saliency maps and diffusion variants behind caches keyed by what produced them.

A saliency entry is named by the sample (key and content hash), the saliency method and the teacher's identity
(a hash of its weights); a variant entry by the sample, the generator's identity, its strength and the variant
index. Swapping or refreshing the teacher, or retraining the generator, can therefore never read an old entry.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..counters import Counters
from .cache import VariantCache, cached_batch, entry_name
from .saliency import SaliencyExtractor, model_identity

__all__ = ["SaliencyProvider", "VariantProvider", "variant_seed_of"]


def variant_seed_of(variant_seed: int, key: str, index: int) -> int:
    """The noise seed of variant ``index`` of sample ``key``: the same in the stage and in warm-cache."""
    text = f"{variant_seed}|{key}|{index}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


class SaliencyProvider:
    """The teacher's maps for a batch; cached per sample when the teacher is frozen and a cache is given."""

    def __init__(
        self,
        teacher: torch.nn.Module,
        extractor: SaliencyExtractor,
        cache: VariantCache | None,
        counters: Counters,
        use_cache: bool,
    ) -> None:
        self.teacher = teacher
        self.extractor = extractor
        self.cache = cache if use_cache else None
        self.counters = counters
        self.teacher_identity = model_identity(teacher)

    @property
    def identity(self) -> str:
        """Method and teacher: what a map (and anything computed from it) depends on."""
        return f"{self.extractor.name}-{self.teacher_identity}"

    def refresh(self, weights: dict[str, torch.Tensor]) -> None:
        """Load new teacher weights; its identity (and so every cache key) changes with them."""
        self.teacher.load_state_dict(weights)
        self.teacher_identity = model_identity(self.teacher)

    def confidence(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The teacher's probability of each image's own label, ``(B,)``."""
        with torch.no_grad():
            was_training = self.teacher.training
            probabilities = torch.softmax(self.teacher.eval()(images).float(), dim=1)
            self.teacher.train(was_training)
        return probabilities.gather(1, labels.view(-1, 1)).squeeze(1)

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """A multi-label teacher's probability of every finding, ``(B, C)``: each logit's sigmoid."""
        with torch.no_grad():
            was_training = self.teacher.training
            logits = self.teacher.eval()(images).float()
            self.teacher.train(was_training)
        return torch.sigmoid(logits)

    def class_maps(
        self,
        images: torch.Tensor,
        owner: torch.Tensor,
        classes: torch.Tensor,
        keys: Sequence[str],
        contents: Callable[[], list[str]],
    ) -> torch.Tensor:
        """Map p of image ``owner[p]`` for finding ``classes[p]``, ``(P, 1, H, W)``, in one batched call (cached
        per sample and finding when the teacher is frozen)."""
        if self.cache is None or len(owner) == 0:
            return self.extractor.for_classes(images, owner, classes)
        rows, found = owner.tolist(), classes.tolist()
        hashes = contents()
        names = [
            entry_name(keys[r], hashes[r], f"saliency-{self.identity}", 0, f"c{c}")
            for r, c in zip(rows, found, strict=True)
        ]
        like = images.new_empty((len(rows), 1, *images.shape[-2:]))
        return cached_batch(
            self.cache,
            names,
            lambda missing: self.extractor.for_classes(images, owner[missing], classes[missing]),
            like,
            self.counters,
        )

    def maps(
        self, images: torch.Tensor, labels: torch.Tensor, keys: Sequence[str], contents: Callable[[], list[str]]
    ) -> torch.Tensor:
        if self.cache is None:
            return self.extractor(images, labels)
        names = [entry_name(k, c, f"saliency-{self.identity}", 0, 0) for k, c in zip(keys, contents(), strict=True)]
        return cached_batch(
            self.cache, names, lambda rows: self.extractor(images[rows], labels[rows]), images[:, :1], self.counters
        )


class VariantProvider:
    """Variant ``index`` of each sample: from the cache, else generated in one batched call and stored."""

    def __init__(self, generator: Any, cache: VariantCache | None, counters: Counters, variant_seed: int) -> None:
        self.generator = generator
        self.cache = cache
        self.counters = counters
        self.variant_seed = variant_seed

    @property
    def identity(self) -> str:
        return self.generator.identity if self.generator is not None else "cached-only"

    @property
    def strength(self) -> float:
        return float(getattr(self.generator, "strength", 0.0))

    def names(self, keys: Sequence[str], contents: list[str], choices: np.ndarray) -> list[str]:
        return [
            entry_name(k, c, self.identity, self.strength, int(v))
            for k, c, v in zip(keys, contents, choices, strict=True)
        ]

    def variants(
        self, images: torch.Tensor, labels: torch.Tensor, keys: Sequence[str], contents: list[str], choices: np.ndarray
    ) -> torch.Tensor:
        seeds = [variant_seed_of(self.variant_seed, k, int(v)) for k, v in zip(keys, choices, strict=True)]

        def generate(rows: torch.Tensor) -> torch.Tensor:
            if self.generator is None:
                raise FileNotFoundError(
                    f"variant cache miss for {keys[int(rows[0])]!r} (variant {int(choices[int(rows[0])])}) and no "
                    "generator= to fill it: run `meddiffuse-stream warm-cache` with as many --variants as the stage "
                    "uses, or pass generator="
                )
            self.counters["generator_calls"] += 1
            self.counters["generated"] += len(rows)
            return self.generator(images[rows], labels[rows], [seeds[i] for i in rows.tolist()])

        return cached_batch(self.cache, self.names(keys, contents, choices), generate, images, self.counters)
