"""Splits read from shard paths, for shards no ``dataset.json`` describes: ``train/…``, ``imagenet-train-000001.tar``,
``pcam_val_03.tgz``, ``data-test/part-7.tar``.

A path's split is a usual split name (:data:`KNOWN_SPLITS`) standing as a whole word — between ``-``, ``_``, ``.``
or ``/`` — in the shard's name or in one of its folders below the root; the innermost such word wins (the name
before its folders). ``contest-0.tar`` and ``trainval-0.tar`` carry none: a word, not a substring. The names are
kept as written (``valid`` is not renamed ``val``): ``split=`` must name what the shards say.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace

from .compressed import SHARD_SUFFIXES
from .manifest import ShardInfo

__all__ = ["KNOWN_SPLITS", "split_of_path", "with_path_splits"]

KNOWN_SPLITS = ("train", "training", "val", "valid", "validation", "dev", "test", "testing", "eval")
_WORDS = re.compile(r"[-_.]")


def _stem(name: str) -> str:
    for suffix in SHARD_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def split_of_path(path: str) -> str | None:
    """The split ``path`` (relative to the dataset's root) names, or None."""
    parts = path.split("/")
    for part in [_stem(parts[-1]), *reversed(parts[:-1])]:  # innermost first
        words = [w for w in _WORDS.split(part) if w in KNOWN_SPLITS]
        if words:
            return words[-1]
    return None


def with_path_splits(shards: Sequence[ShardInfo]) -> tuple[ShardInfo, ...]:
    """Each shard with its recorded split, else the one its path names (None where neither says)."""
    return tuple(s if s.split is not None else replace(s, split=split_of_path(s.path)) for s in shards)
