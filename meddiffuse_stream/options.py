"""The DataLoader surface of ``MedDiffuseLoader``'s arguments: type checks that say what was expected, DataLoader
spellings of our own settings, and a TypeError naming the equivalent for DataLoader arguments that have none."""

from __future__ import annotations

import numbers
from typing import Any

__all__ = ["DATALOADER_ONLY", "check_count", "either", "reject_unknown"]

DATALOADER_ONLY = {
    "sampler": "the order is the loader's epoch plan: use shuffle= and seed= (and set_epoch); for a subset of a "
    "dataset write one with `meddiffuse-stream` or pass another split=",
    "batch_sampler": "batches are cut from the epoch plan inside the workers: use batch_size= and drop_last=",
    "generator": "every random draw comes from seed= (the same seed gives the same batches)",
    "pin_memory_device": "use device= (batches are pinned and copied there without blocking)",
    "in_order": "batches always come in plan order: that is what makes state_dict() exact",
    "snapshot_every_n_steps": "state_dict() is exact after every batch, at no cost",
    "dataset": "the dataset is the first argument, source= (a shard folder, URL or pattern)",
}


def check_count(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int of at least ``minimum``; a TypeError for bools, floats, None and the like."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        hint = ""
        if name == "batch_size" and value is None:
            hint = " (DataLoader's batch_size=None, no batching, has no equivalent: this loader always batches)"
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r} ({type(value).__name__}){hint}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


def either(ours: str, our_value: Any, theirs: str, their_value: Any, default: Any) -> Any:
    """One setting with two spellings (ours and DataLoader's): at most one may be given."""
    if our_value is not None and their_value is not None and our_value != their_value:
        raise TypeError(f"{ours}= and {theirs}= are the same setting; pass one of them")
    if our_value is not None:
        return our_value
    return their_value if their_value is not None else default


def reject_unknown(extra: dict[str, Any]) -> None:
    """A TypeError for keyword arguments this loader does not take, naming the equivalent where there is one."""
    for name in extra:
        if name in DATALOADER_ONLY:
            raise TypeError(f"MedDiffuseLoader does not take {name}= (a DataLoader argument): {DATALOADER_ONLY[name]}")
        raise TypeError(f"MedDiffuseLoader() got an unexpected keyword argument {name!r}")
