"""Small shard datasets with uneven shards for the loader tests, and the node save/load contract check."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from builders import make_imagefolder

from meddiffuse_stream.convert import ConvertOptions, ImageFolderSource, convert_dataset


def uneven_dataset(root: Path, samples: int = 103, shard_size: int = 10, size: int = 8) -> Path:
    """One split, ``samples`` images in shards of ``shard_size`` (the last shard shorter)."""
    folder = make_imagefolder(root / "in", {"a": samples // 2, "b": samples - samples // 2}, size=size)
    out = root / "ds"
    convert_dataset(ImageFolderSource(), str(folder), str(out),
                    ConvertOptions(splits={"train": 1.0}, shard_size=shard_size), progress=False)  # fmt: skip
    return out


def keys_of(item: Any) -> list[str]:
    if isinstance(item, dict) and "key" in item:
        return list(item["key"]) if isinstance(item["key"], list) else [item["key"]]
    return [getattr(item, "key", None) or str(getattr(item, "ref", item))]


def check_state_contract(make: Callable[[], Any], stops: list[int]) -> None:
    """The contract every stage keeps: a node reset to the state taken after k items yields what the original
    yields after k — mid-epoch, at the end, and from the start of the next reset."""
    reference = make()
    reference.reset(None)
    full = [keys_of(item) for item in reference]
    for stop in stops:
        node = make()
        node.reset(None)
        for _ in range(stop):
            next(node)
        state = node.get_state()
        restored = make()
        restored.reset(state)
        assert [keys_of(item) for item in restored] == full[stop:], f"diverged after restoring at {stop}"
