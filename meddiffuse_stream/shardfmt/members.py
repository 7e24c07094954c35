"""The names of a sample's members: what this project writes, and the stock WebDataset suffixes it also reads.

A member is ``{key}.{suffix}`` inside a shard; the key ends at the first dot of the base name, so ``roi.png`` is one
suffix. Every module that writes or looks up a member takes its name from here.
"""

from __future__ import annotations

__all__ = [
    "IMAGE",
    "LABEL",
    "LABELS",
    "LABEL_MASK",
    "META",
    "READ_IMAGE_SUFFIXES",
    "READ_LABELS_SUFFIXES",
    "READ_LABEL_MASK_SUFFIXES",
    "READ_LABEL_SUFFIXES",
    "ROI",
    "ROIS",
    "ROIS_MAX_FINDINGS",
    "member_name",
]

IMAGE = "png"  # the image, 8- or 16-bit PNG (grey or RGB)
LABEL = "cls"  # the class index as ASCII digits
META = "json"  # per-sample metadata (patient, source, modality, ...)
ROI = "roi.png"  # an optional region-of-interest mask, 0 / 255
ROIS = "rois.png"  # optional per-finding ROIs of a multi-label sample: 8-bit grey, bit k set = finding k is there
ROIS_MAX_FINDINGS = 8  # the bits of one 8-bit pixel
LABELS = "labels.json"  # multi-label: the finding vector, a JSON list of 0 / 1 in class_names order
LABEL_MASK = "label_mask.json"  # multi-label with unknowns: 1 = known, 0 = unknown (masked out of the loss)

# what the loader accepts from shards written by anyone, in order of preference
READ_IMAGE_SUFFIXES = (IMAGE, "jpg", "jpeg", "webp", "tif", "tiff")
READ_LABEL_SUFFIXES = (LABEL, "class", "label", "txt")
READ_LABELS_SUFFIXES = (LABELS, "labels.npy", "npy")  # multi-label vectors; pickles (.pyd, .pickle) never
READ_LABEL_MASK_SUFFIXES = (LABEL_MASK, "label_mask.npy", "mask.json", "mask.npy")


def member_name(key: str, suffix: str) -> str:
    """``{key}.{suffix}``, the member's name inside the tar."""
    return f"{key}.{suffix}"
