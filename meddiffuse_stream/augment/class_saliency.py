"""Per-finding evidence on multi-label data: which findings' saliency an image gets, and the maps of a batch.

On a multi-label image the diagnosis is every finding it has, so the evidence is the union of each positive
finding's evidence. An image's *evidence classes*:

- its known positive findings;
- its unknown findings (masked labels) that the teacher believes present (probability ≥ 0.5): a finding that may
  be there is protected too;
- for an image with none of these (no finding), the teacher's ``fallback`` top-scoring findings: where it would
  look for a finding, which is where a change is likeliest to make one.

The (image, finding) pairs are flattened, so one extractor call on ``images[owner]`` with ``target=classes`` gives
every map of the batch (:meth:`SaliencyExtractor.for_classes`) — no Python loop per image. :class:`ClassMaps`
holds the pairs, their maps and the teacher's confidence in what each pair's label says (``p`` for a finding said
or believed present, ``1 − p`` for an absent one), and folds pairs back into images: the per-pixel maximum of the
maps, the union of per-finding masks, "every finding of the image passed".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["FALLBACK_CLASSES", "ClassMaps", "evidence_classes", "pair_confidence"]

FALLBACK_CLASSES = 1  # an image without a finding: the teacher's top finding is its evidence class


def evidence_classes(
    labels: torch.Tensor,
    mask: torch.Tensor | None,
    probabilities: torch.Tensor,
    fallback: int = FALLBACK_CLASSES,
    believed: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(owner, classes, present)`` per (image, finding) pair, image-major: the batch row, the finding, and whether
    the finding is said (or, unknown, believed) present — ``False`` for a fallback class of an image with none."""
    if labels.shape != probabilities.shape or labels.dim() != 2:
        raise ValueError(f"labels {tuple(labels.shape)} and probabilities {tuple(probabilities.shape)}: need (B, C)")
    known = torch.ones_like(labels, dtype=torch.bool) if mask is None else mask > 0.5
    present = (known & (labels > 0.5)) | (~known & (probabilities >= believed))
    chosen = present.clone()
    empty = ~present.any(dim=1)
    if fallback > 0 and bool(empty.any()):
        top = probabilities.topk(min(fallback, labels.shape[1]), dim=1).indices
        extra = torch.zeros_like(chosen).scatter_(1, top, True)
        chosen |= extra & empty.view(-1, 1)
    owner, classes = chosen.nonzero(as_tuple=True)
    return owner, classes, present[owner, classes]


def pair_confidence(
    probabilities: torch.Tensor, owner: torch.Tensor, classes: torch.Tensor, present: torch.Tensor
) -> torch.Tensor:
    """``(P,)`` the teacher's confidence in each pair's label: ``p`` where present, ``1 − p`` where absent."""
    chosen = probabilities[owner, classes]
    return torch.where(present, chosen, 1 - chosen)


@dataclass(frozen=True)
class ClassMaps:
    """The saliency maps of one batch's (image, finding) pairs, and the way back to images."""

    owner: torch.Tensor  # (P,) long: the batch row of each map
    classes: torch.Tensor  # (P,) long: the finding
    present: torch.Tensor  # (P,) bool: the finding is said (or believed) present
    maps: torch.Tensor  # (P, 1, H, W) in [0, 1]
    confidence: torch.Tensor  # (P,) the teacher's confidence in the pair's label (see pair_confidence)
    count: int  # rows of the batch

    def combined(self) -> torch.Tensor:
        """``(count, 1, H, W)``: per image the per-pixel maximum of its maps (zeros for an image without any)."""
        flat = self.maps.flatten(1)
        out = torch.zeros((self.count, flat.shape[1]), device=flat.device, dtype=flat.dtype)
        index = self.owner.view(-1, 1).expand_as(flat)
        return out.scatter_reduce_(0, index, flat, "amax", include_self=True).view(self.count, *self.maps.shape[1:])

    def union(self, masks: torch.Tensor) -> torch.Tensor:
        """``(count, 1, H, W)`` booleans: per image the union of its pairs' ``masks`` ``(P, 1, H, W)``."""
        out = torch.zeros((self.count, *masks.shape[1:]), device=masks.device, dtype=torch.float32)
        return out.index_add_(0, self.owner, masks.float()) > 0

    def every(self, passed: torch.Tensor) -> torch.Tensor:
        """``(count,)``: every pair of the image passed (an image without pairs passes nothing: ``False``)."""
        failed = torch.zeros(self.count, device=passed.device).index_add_(0, self.owner, (~passed).float())
        return (failed == 0) & self.has_pairs()

    def any(self, flagged: torch.Tensor) -> torch.Tensor:
        """``(count,)``: some pair of the image is ``flagged``."""
        hits = torch.zeros(self.count, device=flagged.device).index_add_(0, self.owner, flagged.float())
        return hits > 0

    def has_pairs(self) -> torch.Tensor:
        """``(count,)``: the image has at least one evidence class."""
        return torch.bincount(self.owner, minlength=self.count)[: self.count] > 0

    def take(self, rows: torch.Tensor) -> ClassMaps:
        """The pairs of batch ``rows`` (in that order), their owners renumbered ``0 .. len(rows) − 1``."""
        position = torch.full((self.count,), -1, dtype=torch.long, device=self.owner.device)
        position[rows] = torch.arange(len(rows), device=self.owner.device)
        new_owner = position[self.owner]
        keep = torch.nonzero(new_owner >= 0).flatten()
        order = keep[torch.sort(new_owner[keep], stable=True).indices]  # image-major again
        return ClassMaps(
            new_owner[order],
            self.classes[order],
            self.present[order],
            self.maps[order],
            self.confidence[order],
            len(rows),
        )
