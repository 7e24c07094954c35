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
    convert_dataset(
        ImageFolderSource(),
        str(folder),
        str(out),
        ConvertOptions(splits={"train": 1.0}, shard_size=shard_size),
        progress=False,
    )
    return out


def keys_of(item: Any) -> list[str]:
    """What identifies an item of any node: batch or sample keys, a planned sample's ref, a plan's epoch."""
    if isinstance(item, dict) and "key" in item:
        return list(item["key"]) if isinstance(item["key"], list) else [item["key"]]
    if hasattr(item, "item"):  # PlannedSample
        item = item.item
    if hasattr(item, "epoch") and hasattr(item, "shard_sizes"):  # EpochPlan
        return [f"epoch {item.epoch} rank {item.rank}"]
    return [getattr(item, "key", None) or str(getattr(item, "ref", item))]


def _round_trip(state: dict[str, Any]) -> dict[str, Any]:
    """A state as a checkpoint gives it back: through torch.save and torch.load(weights_only=True)."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def check_state_contract(make: Callable[[], Any], stops: list[int]) -> None:
    """The contract every node keeps: a node reset to the state taken after k items yields what the original
    yields after k — mid-epoch, at the end — and the pass after it (``reset(None)``: the next epoch for a graph
    rooted in an EpochSource, the same share again for a per-worker node) is the original's next pass too.
    States survive a checkpoint round trip."""
    reference = make()
    reference.reset(None)
    full = [keys_of(item) for item in reference]
    reference.reset(None)
    following = [keys_of(item) for item in reference]
    assert full, "the contract needs a node that yields something"
    for stop in stops:
        node = make()
        node.reset(None)
        for _ in range(stop):
            next(node)
        state = _round_trip(node.state_dict())
        restored = make()
        restored.reset(state)
        assert [keys_of(item) for item in restored] == full[stop:], f"diverged after restoring at {stop}"
        restored.reset(None)
        assert [keys_of(item) for item in restored] == following, f"the pass after restoring at {stop} differs"
        for each in (node, restored):
            getattr(each, "close", lambda: None)()
    getattr(reference, "close", lambda: None)()
