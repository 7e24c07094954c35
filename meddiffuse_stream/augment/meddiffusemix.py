"""MedDiffuseMix: mix a diffusion variant in where the teacher's evidence is not, then check the evidence stayed.

Per sample and epoch the stage draws a variant index ``v`` (of M) and a mask draw ``d`` (of D). The draw seeds the
sample's random field (and the random-mask ablation's box) from ``(key, d)`` alone, so the result for
``(sample, v, d)`` is a pure function of the sample, the teacher, the generator and the configuration: with a
frozen teacher it is cached, and a warm epoch makes no model call at all.

Per image:

1. evidence unknown — a flat saliency map, or the teacher's probability of the label below ``min_confidence`` —
   means the image is not mixed (``no_evidence`` / ``unconfident``);
2. otherwise W from :func:`meddiffuse_stream.augment.mix.mix_weight` (exactly 0 on the evidence and its margin)
   and ``x_aug = (1 - W) x + W x̃``, x̃ the donor: the sample's diffusion variant, or for the controls that isolate
   what diffusion adds, Gaussian noise of the image's own mean and spread (``noise``) or another training image of
   the same class from the batch (``other-image``; never cached: it depends on the batch);
3. the check: the top-k region of the teacher's saliency on ``x_aug`` must overlap the original's (IoU ≥
   ``min_iou``) and the label's probability may drop by at most ``max_prob_drop``; a failing image is retried with
   half the strength (``retries`` times), then kept as it was (``rejected``).

On multi-label batches steps 1–3 run per finding and the protected region is the union of every finding's
(:mod:`.meddiffusemix_findings`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch

from ..counters import Counters
from .cache import VariantCache, entry_name, host_to
from .methods.context import Augmented, BatchInputs
from .mix import MixConfig, evidence_iou, is_flat, mix, mix_weight, protected_region, random_field, top_fraction_iou
from .mixer_common import STATUSES, MixStatus, mask_rng
from .providers import SaliencyProvider, VariantProvider

__all__ = ["DONORS", "STATUSES", "MedDiffuseMixer", "MixStatus", "mask_rng", "noise_donor"]

DONORS = ("variant", "noise", "other-image")


def noise_donor(images: torch.Tensor, generators: Sequence[np.random.Generator]) -> torch.Tensor:
    """Per image, i.i.d. Gaussian noise with the image's mean and standard deviation, clipped to [0, 1]."""
    draws = torch.stack([torch.as_tensor(g.standard_normal(images.shape[1:]), dtype=torch.float32) for g in generators])
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    spread = images.std(dim=(1, 2, 3), keepdim=True)
    return (mean + spread * draws.to(images)).clamp(0, 1)


def _partners(labels: torch.Tensor, rows: list[int], rng: np.random.Generator) -> list[int | None]:
    """For each of ``rows``, another row of the batch with the same label — the same class, or on multi-label data
    the same finding vector — drawn from ``rng``, else None."""
    flat = labels.view(len(labels), -1)
    same_as = (
        (flat[:, None, :] == flat[None, :, :]).all(dim=2).tolist()
    )  # (B, B): rows with equal labels, on the host once
    chosen: list[int | None] = []
    for row in rows:
        same = [other for other, equal in enumerate(same_as[row]) if equal and other != row]
        chosen.append(int(rng.choice(same)) if same else None)
    return chosen


class MedDiffuseMixer:
    """The method as the stage calls it: ``mixer(inputs) -> Augmented`` (statuses go to ``counters``)."""

    def __init__(
        self,
        config: MixConfig,
        saliency: SaliencyProvider,
        variants: VariantProvider,
        cache: VariantCache | None,
        counters: Counters,
        *,
        mask_seed: int = 0,
        cache_results: bool = True,
        donor: str = "variant",
    ) -> None:
        if donor not in DONORS:
            raise ValueError(f"donor must be one of {DONORS}, got {donor!r}")
        self.config = config
        self.saliency = saliency
        self.variants = variants
        self.donor = donor
        self.cache = cache if cache_results and donor != "other-image" else None
        self.counters = counters
        self.mask_seed = mask_seed

    @property
    def producer(self) -> str:
        settings = hashlib.sha256(repr(self.config).encode()).hexdigest()[:8]
        source = self.variants.identity if self.donor == "variant" else self.donor
        return f"meddiffusemix-v2-{source}-{self.saliency.identity}-{settings}-m{self.mask_seed}"

    def __call__(self, inputs: BatchInputs) -> Augmented:
        if self.cache is None:
            rows = torch.arange(len(inputs.images), device=inputs.images.device)
            out, weight, status, protected = self.compute(inputs, rows)
        else:
            out, weight, status, protected = self._cached(inputs)
        for code in status.tolist():
            self.counters[STATUSES[code]] += 1
        details = {}
        if inputs.details:  # read (or computed) only for callers that show them
            assert inputs.saliency is not None
            details = {"saliency": inputs.saliency(None), "protected": protected}
            if self.donor == "variant" and inputs.variants is not None:
                details["variant"] = inputs.variants(None)
        return Augmented(out, inputs.labels, weight, details=details)

    # --- results cache --------------------------------------------------------------------------------------
    def _cached(self, inputs: BatchInputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Entries ``[status, image planes, W, protected]`` as float16; the image is rebuilt as
        ``where(W > 0, stored, x)`` so pixels with W == 0 stay the input's own float32 values on the warm path too."""
        assert self.cache is not None and inputs.contents is not None
        images = inputs.images
        channels, pixels = images.shape[1], images[0, 0].numel()
        contents = inputs.contents()
        names = [
            entry_name(k, c, self.producer, self.variants.strength, f"{int(v)}.{int(d)}")
            for k, c, v, d in zip(inputs.keys, contents, inputs.variant_index, inputs.mask_draw, strict=True)
        ]
        found: dict[int, np.ndarray] = {}
        for row, name in enumerate(names):
            entry = self.cache.get(name)
            if entry is not None and entry.shape == (1 + (channels + 2) * pixels,):
                found[row] = entry
        self.counters["result_cache_hits"] += len(found)
        missing = [row for row in range(len(names)) if row not in found]
        if missing:
            rows = torch.as_tensor(missing, device=images.device)
            out, weight, status, protected = self.compute(inputs, rows)
            planes = [status.view(-1, 1).to(out), out.flatten(1), weight.flatten(1), protected.flatten(1).to(out)]
            packed = torch.cat(planes, dim=1).to(torch.float16).cpu().numpy()
            for position, row in enumerate(missing):
                found[row] = packed[position]
                self.cache.put(names[row], packed[position])
        stacked = host_to(np.stack([found[row] for row in range(len(names))]), images[:, 0, 0, 0].float())
        status = stacked[:, 0].round().long()
        out = stacked[:, 1 : 1 + channels * pixels].view_as(images).to(images.dtype)
        weight = stacked[:, 1 + channels * pixels : 1 + (channels + 1) * pixels].view_as(images[:, :1])
        protected = stacked[:, 1 + (channels + 1) * pixels :].view_as(images[:, :1]) > 0.5
        return torch.where(weight > 0, out, images), weight.to(images.dtype), status, protected

    # --- the mix-and-check loop -----------------------------------------------------------------------------
    def compute(
        self, inputs: BatchInputs, rows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(images, W, status, protected)`` for ``rows``; W and images rounded to float16 as the cache is.
        Multi-label batches protect the union of every finding's evidence (:mod:`.meddiffusemix_findings`)."""
        if inputs.multi_label:
            from .meddiffusemix_findings import compute_findings

            return compute_findings(self, inputs, rows)
        assert inputs.saliency is not None
        config = self.config
        images, labels = inputs.images[rows], inputs.labels[rows]
        keys = [inputs.keys[i] for i in rows.tolist()]
        draws = inputs.mask_draw[rows.cpu().numpy()]
        saliency = inputs.saliency(rows)
        status = torch.full((len(rows),), MixStatus.UNCHECKED, dtype=torch.long, device=images.device)
        confidence = self.saliency.confidence(images, labels)
        unknown = is_flat(saliency)
        unsure = ~unknown & (confidence < config.min_confidence)
        status[unknown] = MixStatus.NO_EVIDENCE
        status[unsure] = MixStatus.UNCONFIDENT
        weight = torch.zeros_like(images[:, :1])
        protected = torch.zeros_like(images[:, :1], dtype=torch.bool)
        out = images.clone()
        todo = torch.nonzero(~unknown & ~unsure).flatten()
        generators = [mask_rng(self.mask_seed, keys[i], int(draws[i])) for i in todo.tolist()]
        donors, todo, generators = self._donors(inputs, rows, todo, generators, status)
        if len(todo):
            fields, boxes = self._draws(saliency[todo], generators)
            region = boxes if boxes is not None else protected_region(saliency[todo], config)
            mixed, mixed_weight, mixed_status = self._mix_and_check(
                images[todo], labels[todo], saliency[todo], donors, fields, region, confidence[todo]
            )
            out[todo], weight[todo], status[todo], protected[todo] = mixed, mixed_weight, mixed_status, region
        weight = weight.to(torch.float16).to(images.dtype)
        out = torch.where(weight > 0, out.to(torch.float16).to(images.dtype), images)
        return out, weight, status, protected

    def _donors(self, inputs: BatchInputs, rows: torch.Tensor, todo: torch.Tensor, generators, status):
        """What is mixed in for the ``todo`` rows (and the rows that remain: ``other-image`` may find no partner)."""
        if len(todo) == 0:
            return None, todo, generators
        if self.donor == "variant":
            assert inputs.variants is not None
            return inputs.variants(rows[todo]), todo, generators
        images = inputs.images[rows[todo]]
        if self.donor == "noise":
            draws = inputs.mask_draw[rows.cpu().numpy()]
            copies = [mask_rng(self.mask_seed + 1, inputs.keys[int(rows[i])], int(draws[i])) for i in todo.tolist()]
            return noise_donor(images, copies), todo, generators  # seeds apart from the field's (mask_seed + 1)
        batch_rows = rows[todo].tolist()
        partners = _partners(inputs.labels, batch_rows, inputs.rng)
        found = [index for index, partner in enumerate(partners) if partner is not None]
        status[todo[[i for i, p in enumerate(partners) if p is None]]] = MixStatus.NO_DONOR
        donors = inputs.images[[partners[i] for i in found]]
        return donors, todo[found], [generators[i] for i in found]

    def _draws(self, saliency: torch.Tensor, generators: Sequence[np.random.Generator]):
        """Each sample's random field and, for the random-mask ablation, its box — one generator per sample."""
        _, _, height, width = saliency.shape
        fields = torch.cat([random_field(1, height, width, self.config.field_floor, g) for g in generators])
        boxes = None
        if self.config.random_mask:
            boxes = torch.cat([protected_region(saliency[i : i + 1], self.config, g) for i, g in enumerate(generators)])
        return fields.to(saliency.device), boxes

    def _weight(self, saliency, scale, fields, boxes) -> torch.Tensor:
        return mix_weight(saliency, self.config, scale, field=fields, protected=boxes)

    def _mix_and_check(self, images, labels, saliency, variants, fields, boxes, before):
        config = self.config
        scale = torch.ones(len(images), device=images.device)
        weight = self._weight(saliency, scale, fields, boxes)
        out = mix(images, variants, weight)
        status = torch.full((len(images),), MixStatus.UNCHECKED, dtype=torch.long, device=images.device)
        if not config.check:
            return out, weight, status
        pending = torch.arange(len(images), device=images.device)
        for attempt in range(config.retries + 1):
            candidates = out[pending]
            moved, after = self.saliency.extractor.with_probability(candidates, labels[pending])
            if config.iou_top is None:
                iou = evidence_iou(saliency[pending], moved, config)
            else:
                iou = top_fraction_iou(saliency[pending], moved, config.iou_top)
            passed = (iou >= config.min_iou) & (before[pending] - after <= config.max_prob_drop)
            status[pending[passed]] = MixStatus.ACCEPTED if attempt == 0 else MixStatus.ATTENUATED
            pending = pending[~passed]
            if len(pending) == 0:
                break
            if attempt < config.retries:
                scale[pending] *= 0.5
                weight[pending] = self._weight(
                    saliency[pending], scale[pending], fields[pending], None if boxes is None else boxes[pending]
                )
                out[pending] = mix(images[pending], variants[pending], weight[pending])
        if len(pending):
            status[pending] = MixStatus.REJECTED
            weight[pending] = 0
            out[pending] = images[pending]
        return out, weight, status
