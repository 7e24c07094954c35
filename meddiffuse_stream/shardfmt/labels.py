"""The multi-label model: a finding vector per sample, a mask where findings are unknown, and their counts.

In a converter a sample's findings are integers in class order: ``1`` positive, ``0`` negative, ``-1`` unknown
(CheXpert's uncertain under ``--uncertain ignore``, a blank cell where blank means "not read"). In a shard they are
two JSON members any WebDataset reader decodes: ``{key}.labels.json`` (``[0, 1, 0, …]``, unknown written as 0) and,
in datasets that have unknowns, ``{key}.label_mask.json`` (1 = known). JSON, not pickle: readable by anyone, safe
to open. The loader also reads ``.npy`` vectors and JSON lists of finding names that shards found elsewhere carry.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .members import LABEL_MASK, LABELS, READ_LABEL_MASK_SUFFIXES, READ_LABELS_SUFFIXES
from .safejson import loads_limited

__all__ = [
    "MAX_LABEL_BYTES",
    "UNKNOWN",
    "LabelCounts",
    "count_findings",
    "finding_members",
    "mix_label_masks",
    "mix_label_vectors",
    "parse_label_counts",
    "parse_label_mask",
    "parse_label_vector",
    "sample_findings",
]

UNKNOWN = -1
MAX_LABEL_BYTES = 1 << 20  # a label member larger than this is not a label vector


@dataclass(frozen=True)
class LabelCounts:
    """Samples of one class in one split: positive, negative and unknown (masked); they add up to the samples."""

    positive: int = 0
    negative: int = 0
    unknown: int = 0

    @property
    def total(self) -> int:
        return self.positive + self.negative + self.unknown

    def to_document(self) -> dict[str, int]:
        return {"positive": self.positive, "negative": self.negative, "unknown": self.unknown}


def count_findings(vectors: Sequence[Sequence[int]] | np.ndarray, class_names: Sequence[str]) -> dict[str, LabelCounts]:
    """Per class, the counts of an ``(N, C)`` array of 1 / 0 / -1 findings."""
    vectors = np.asarray(vectors, dtype=np.int64).reshape(-1, len(class_names))
    return {
        name: LabelCounts(
            int((vectors[:, k] == 1).sum()), int((vectors[:, k] == 0).sum()), int((vectors[:, k] == UNKNOWN).sum())
        )
        for k, name in enumerate(class_names)
    }


def finding_members(findings: Sequence[int], with_mask: bool) -> list[tuple[str, bytes]]:
    """``(suffix, bytes)`` of the :data:`~.members.LABELS` member and, when ``with_mask``, the
    :data:`~.members.LABEL_MASK` member, for one sample's findings."""
    bad = [v for v in findings if v not in (1, 0, UNKNOWN)]
    if bad:
        raise ValueError(f"findings must be 1, 0 or {UNKNOWN} (unknown), got {bad[0]!r}")
    values = [int(v) for v in findings]
    if UNKNOWN in values and not with_mask:
        raise ValueError("findings hold unknowns, so the sample needs a label mask")
    vector = "[" + ",".join("1" if v == 1 else "0" for v in values) + "]"
    members = [(LABELS, vector.encode("ascii"))]
    if with_mask:
        mask = "[" + ",".join("0" if v == UNKNOWN else "1" for v in values) + "]"
        members.append((LABEL_MASK, mask.encode("ascii")))
    return members


def _numbers(data: bytes, suffix: str, where: str, class_names: Sequence[str]) -> np.ndarray:
    if len(data) > MAX_LABEL_BYTES:
        raise ValueError(f"{where}: label member of {len(data)} bytes is over {MAX_LABEL_BYTES}")
    if suffix.endswith("npy"):
        try:  # allow_pickle=False: an object array is refused, never unpickled
            value = np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError as error:
            raise ValueError(f"{where}: not a numeric .npy array ({error})") from None
        if value.dtype.kind not in "biuf":
            raise ValueError(f"{where}: .npy of dtype {value.dtype} is not a numeric label vector")
        return value.astype(np.float64).reshape(-1)
    value = loads_limited(data, max_bytes=MAX_LABEL_BYTES, max_depth=2)
    if isinstance(value, Mapping):  # {"labels": [...]} written by some tools
        value = value.get("labels", value.get("label"))
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        index = {name: k for k, name in enumerate(class_names)}
        unknown = [v for v in value if v not in index]
        if unknown:
            raise ValueError(f"{where}: finding {unknown[0]!r:.40} is not one of class_names {list(class_names)}")
        vector = np.zeros(len(class_names))
        vector[[index[v] for v in value]] = 1
        return vector
    if not isinstance(value, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise ValueError(f"{where}: expected a JSON list of numbers (or of finding names), got {str(value)[:40]!r}")
    return np.asarray(value, dtype=np.float64)


def parse_label_vector(data: bytes, suffix: str, class_names: Sequence[str], where: str) -> np.ndarray:
    """A float32 ``(C,)`` vector in [0, 1] from a ``.json`` or ``.npy`` member; ``ValueError`` naming ``where``."""
    vector = _numbers(data, suffix, where, class_names)
    if class_names and len(vector) != len(class_names):  # without class names (shards written elsewhere): any length
        raise ValueError(f"{where}: {len(vector)} labels, but the dataset has {len(class_names)} classes")
    if not np.all((vector >= 0) & (vector <= 1)):
        raise ValueError(f"{where}: labels must lie in [0, 1], got {vector[(vector < 0) | (vector > 1)][0]:g}")
    return vector.astype(np.float32)


def parse_label_mask(data: bytes, suffix: str, classes: int, where: str) -> np.ndarray:
    """A float32 ``(C,)`` mask of 0 / 1 (1 = known)."""
    mask = _numbers(data, suffix, where, ())
    if len(mask) != classes:
        raise ValueError(f"{where}: label mask of {len(mask)} entries, but the dataset has {classes} classes")
    if not np.all((mask == 0) | (mask == 1)):
        raise ValueError(f"{where}: a label mask holds 0 (unknown) or 1 (known) only")
    return mask.astype(np.float32)


def sample_findings(
    members: Mapping[str, bytes], key: str, class_names: Sequence[str], label_key: str | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """A sample's finding vector and mask (``None`` where it has no mask member: every finding known).

    The vector is the ``label_key`` member, else the first of :data:`~.members.READ_LABELS_SUFFIXES` present; the
    mask the first of :data:`~.members.READ_LABEL_MASK_SUFFIXES`. ``ValueError`` names the key and the member."""
    choices = (label_key,) if label_key else READ_LABELS_SUFFIXES
    suffix = next((s for s in choices if s in members), None)
    if suffix is None:
        wanted = f".{label_key}" if label_key else "." + ", .".join(READ_LABELS_SUFFIXES)
        raise ValueError(f"{key}: missing label: no {wanted} member (label_key= picks another)")
    vector = parse_label_vector(members[suffix], suffix, class_names, f"{key}.{suffix}")
    mask_suffix = next((s for s in READ_LABEL_MASK_SUFFIXES if s in members), None)
    if mask_suffix is None:
        return vector, None
    return vector, parse_label_mask(members[mask_suffix], mask_suffix, len(class_names), f"{key}.{mask_suffix}")


def parse_label_counts(value: Any, names: Sequence[str], samples: int | None, where: str) -> dict[str, LabelCounts]:
    """``splits.X.labels`` of ``dataset.json``: every class, counts that are non-negative and add up to samples."""
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: expected an object of class name to positive/negative/unknown counts")
    missing = [n for n in names if n not in value]
    extra = [n for n in value if n not in names]
    if missing or extra:
        raise ValueError(f"{where}: classes {missing or extra} do not match class_names")
    typed = {}
    for name in names:
        entry = value[name]
        if not isinstance(entry, Mapping) or set(entry) != {"positive", "negative", "unknown"}:
            raise ValueError(f"{where}.{name}: expected positive, negative and unknown counts")
        counts = [entry[k] for k in ("positive", "negative", "unknown")]
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
            raise ValueError(f"{where}.{name}: counts must be non-negative integers, got {counts}")
        typed[name] = LabelCounts(*counts)
        if samples is not None and typed[name].total != samples:
            raise ValueError(f"{where}.{name}: counts add up to {typed[name].total}, not the split's {samples}")
    return typed


def mix_label_vectors(targets: Any, other: Any, keep: Any) -> Any:
    """``keep × targets + (1 − keep) × other`` (``keep`` a scalar or ``(B, 1)``), for numpy arrays or tensors:
    Mixup / CutMix of multi-hot vectors, each finding mixed on its own (no sum-to-one, unlike softmax targets)."""
    return keep * targets + (1 - keep) * other


def mix_label_masks(mask: Any, other: Any) -> Any:
    """A mixed finding is known only where it is known in both images: its target mixes both."""
    return mask * other
