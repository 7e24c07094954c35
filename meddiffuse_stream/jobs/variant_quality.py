"""The generator alone, before any method uses it: are its variants faithful, and are they diverse?

Over a split, with every cached variant index 0..M-1 of each sample:

- ``accuracy``: the teacher's accuracy per class on the originals and on the variants (label fidelity);
- ``distance``: the mean |variant - original| in grey levels (how far the strength takes an image);
- ``spread``: the mean per-pixel standard deviation across a sample's M variants, in grey levels (diversity: 0
  means every variant is the same picture);
- ``frechet``: the Fréchet distance between the teacher's penultimate features (``embed``) of the originals and
  of the variants, beside ``frechet_real``: the same distance between two halves of the originals (the floor that
  sampling alone gives). Lower is closer to real images.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch

from ..loader import MedDiffuseLoader

__all__ = ["frechet_distance", "variant_quality"]


def frechet_distance(first: torch.Tensor, second: torch.Tensor) -> float:
    """Fréchet distance of two feature sets ``(N, D)`` as Gaussians: |μ1 - μ2|² + tr(Σ1 + Σ2 - 2 (Σ1^½ Σ2 Σ1^½)^½)."""
    first, second = first.double(), second.double()
    mean_gap = float(((first.mean(0) - second.mean(0)) ** 2).sum())
    one, two = torch.cov(first.T), torch.cov(second.T)
    values, vectors = torch.linalg.eigh(one)
    root = vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T
    middle = torch.linalg.eigvalsh(root @ two @ root).clamp(min=0).sqrt().sum()
    return mean_gap + float(torch.trace(one) + torch.trace(two) - 2 * middle)


@torch.no_grad()
def variant_quality(
    dataset: str,
    stage: Any,
    teacher: torch.nn.Module,
    *,
    split: str = "train",
    batch_size: int = 64,
    max_batches: int | None = None,
) -> dict[str, Any]:
    """What :mod:`variant_quality` measures, for ``stage``'s variant provider (M = ``stage.variants_per_sample``)."""
    from ..augment.cache import content_hashes

    correct: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    real: list[torch.Tensor] = []
    generated: list[torch.Tensor] = []
    distance = spread = 0.0
    pixels = 0
    embed = getattr(teacher, "embed", None)
    head = getattr(teacher, "head", None)  # forward is head(embed(x)) for the models here: one backbone pass
    with MedDiffuseLoader(dataset, batch_size, split=split, as_dict=True, shuffle=False) as loader:
        names = list(loader.dataset.class_names)
        for index, batch in enumerate(loader):
            if max_batches is not None and index >= max_batches:
                break
            images = batch["image"].to(stage.device)
            labels = batch["label"].to(stage.device)
            contents = content_hashes(images)
            variants = [
                stage.variants.variants(images, labels, batch["key"], contents, torch.full((len(images),), v).numpy())
                for v in range(stage.variants_per_sample)
            ]
            stacked = torch.stack(variants).float()
            distance += float((stacked - images.float()).abs().mean(dim=(2, 3, 4)).mean(dim=0).sum())
            if len(variants) > 1:
                spread += float(stacked.std(dim=0).mean(dim=(1, 2, 3)).sum())
            pixels += len(images)
            for number, (kind, pictures) in enumerate([("original", images)] + [("variant", v) for v in variants]):
                with torch.no_grad():  # the features of the originals and first variants feed the head once
                    features = embed(pictures) if embed is not None and head is not None else None
                    logits = teacher(pictures) if features is None or head is None else head(features)
                predicted = logits.argmax(dim=1)
                for label in labels.unique().tolist():
                    of_class = labels == label
                    entry = correct[f"{kind}:{names[label]}"]
                    entry[0] += float((predicted[of_class] == label).sum())
                    entry[1] += float(of_class.sum())
                if number < 2 and embed is not None:
                    with torch.no_grad():
                        found = features if features is not None else embed(pictures)
                    (real if number == 0 else generated).append(found.float().cpu())
    report: dict[str, Any] = {
        "accuracy": {name: hits / total for name, (hits, total) in sorted(correct.items()) if total},
        "distance": 255 * distance / max(pixels, 1),
        "spread": 255 * spread / max(pixels, 1) if stage.variants_per_sample > 1 else None,
        "samples": pixels,
    }
    if real:
        features, fakes = torch.cat(real), torch.cat(generated)
        half = len(features) // 2
        report["frechet"] = frechet_distance(features, fakes)
        report["frechet_real"] = frechet_distance(features[:half], features[half:])
    return report
