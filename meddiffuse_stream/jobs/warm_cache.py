"""Warming the variant cache in bulk: every sample's M variants, split across Indexed-Job completions or ranks.

A part takes the samples of ``rank=index, world_size=count`` of the split (the loader's own partition), so N
parts cover every sample; entries already in the cache are skipped, so a re-run or a retried completion only
fills what is missing.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from tqdm.auto import tqdm

from ..augment.cache import VariantCache, content_hashes, entry_name
from ..augment.diffusion import load_generator
from ..augment.stage import variant_seed_of
from .stage_factory import default_device

__all__ = ["default_part", "warm_cache"]


def default_part() -> tuple[int, int]:
    """``(index, count)`` from a Kubernetes Indexed Job, else from torchrun, else ``(0, 1)``."""
    if "JOB_COMPLETION_INDEX" in os.environ:
        return int(os.environ["JOB_COMPLETION_INDEX"]), int(os.environ.get("JOB_COMPLETIONS", "1"))
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def warm_cache(
    dataset: str,
    generator_path: str,
    cache_url: str,
    *,
    variants: int = 1,
    index: int | None = None,
    count: int | None = None,
    split: str | None = None,
    batch_size: int = 64,
    variant_seed: int = 0,
    device: str | None = None,
    storage_options: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, int]:
    from ..loader import MedDiffuseLoader

    default_index, default_count = default_part()
    index = default_index if index is None else index
    count = default_count if count is None else count
    if not 0 <= index < count:
        raise ValueError(f"--index {index} is outside --count {count}")
    target = default_device(device)
    generator = load_generator(generator_path).to(target)
    cache = VariantCache(cache_url, storage_options)
    loader = MedDiffuseLoader(
        dataset,
        batch_size,
        split=split,
        shuffle=False,
        rank=index,
        world_size=count,
        as_dict=True,
        storage_options=storage_options,
    )
    identity, strength = generator.identity, getattr(generator, "strength", 0.0)
    totals = {"samples": 0, "generated": 0, "already_cached": 0}
    bar = tqdm(total=len(loader), desc=f"warm-cache {index + 1}/{count}", unit="batch", disable=not progress)
    for batch in loader:
        images = batch["image"].to(target)
        labels = batch["label"].to(target)
        totals["samples"] += len(images)
        contents = content_hashes(batch["image"])  # once per batch, for all M variants
        for variant in range(variants):
            names = [entry_name(k, c, identity, strength, variant) for k, c in zip(batch["key"], contents, strict=True)]
            missing = [row for row, name in enumerate(names) if not cache.location.exists(name)]
            totals["already_cached"] += len(names) - len(missing)
            if not missing:
                continue
            seeds = [variant_seed_of(variant_seed, batch["key"][row], variant) for row in missing]
            rows = torch.as_tensor(missing, device=target)
            produced = generator(images[rows], labels[rows], seeds).to(torch.float16)
            for row, name in enumerate(names[position] for position in missing):
                if not cache.put(name, produced[row].cpu().numpy()):
                    raise PermissionError(f"variant cache {cache_url} is not writable: warm-cache needs write access")
            totals["generated"] += len(missing)
        bar.update(1)
    bar.close()
    loader.close()
    return totals
