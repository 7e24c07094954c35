"""The loader's settings as frozen, typed objects, each checked once where it is made.

``MedDiffuseLoader`` turns its keyword arguments into these at its boundary (with DataLoader's spellings and a
``TypeError`` naming our equivalent for DataLoader arguments that have none); a graph composed by hand builds them
itself. Nodes below take them as they are: a value that reached a node has been checked.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from .storage import DEFAULT_CACHE_BYTES, RetryPolicy

__all__ = [
    "DATALOADER_ONLY",
    "DTYPES",
    "LABEL_KINDS",
    "ON_ERROR",
    "RESIZE_MODES",
    "TASKS",
    "WORKER_METHODS",
    "ConformOptions",
    "Dtype",
    "LabelKind",
    "LabelOptions",
    "OnError",
    "ReadOptions",
    "ResizeMode",
    "Task",
    "WorkerMethod",
    "WorkerOptions",
    "check_count",
    "check_dtype",
    "check_on_error",
    "either",
    "reject_unknown",
]

OnError = Literal["raise", "skip"]
Dtype = Literal["float32", "uint8", "uint16"]
ResizeMode = Literal["crop", "letterbox"]
WorkerMethod = Literal["process", "thread"]
Task = Literal["multi_class", "multi_label"]
LabelKind = Literal["class", "findings", "none"]  # a class index; a finding vector (and mask); no label
ON_ERROR: tuple[OnError, ...] = get_args(OnError)
DTYPES: tuple[Dtype, ...] = get_args(Dtype)
RESIZE_MODES: tuple[ResizeMode, ...] = get_args(ResizeMode)
WORKER_METHODS: tuple[WorkerMethod, ...] = get_args(WorkerMethod)
TASKS: tuple[Task, ...] = get_args(Task)
LABEL_KINDS: tuple[LabelKind, ...] = get_args(LabelKind)

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


def check_on_error(value: Any) -> OnError:
    if value not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {value!r}")
    return value


def check_dtype(dtype: Any) -> Dtype:
    """``dtype=`` as one of :data:`DTYPES` (numpy and torch dtypes of those names are accepted)."""
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise ValueError(
            f"dtype must be one of {DTYPES} (uint8/uint16: converted to float on the device), got {dtype!r}"
        )
    return name


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


def _target_size(resize: Any) -> tuple[int, int] | None:
    """``resize=`` as ``(height, width)``; an int is a square, None is none."""
    if resize is None:
        return None
    if isinstance(resize, bool) or not isinstance(resize, (int, tuple, list)):
        raise TypeError(f"resize must be an int or (height, width), got {resize!r}")
    size = (resize, resize) if isinstance(resize, int) else tuple(resize)
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
        raise ValueError(f"resize must be a positive int or two positive ints (height, width), got {resize!r}")
    return (size[0], size[1])


@dataclass(frozen=True)
class ConformOptions:
    """One size and channel count for every image, made in the workers: ``size`` ``(height, width)`` reached by
    covering and cutting the centre (``"crop"``) or fitting and padding (``"letterbox"``); ``channels`` 1 or 3."""

    size: tuple[int, int] | None = None
    mode: ResizeMode = "crop"
    channels: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {self.mode!r}")
        if self.channels is not None and (isinstance(self.channels, bool) or self.channels not in (1, 3)):
            raise ValueError(f"channels must be 1, 3 or None, got {self.channels!r}")
        object.__setattr__(self, "size", _target_size(self.size))

    @classmethod
    def of(cls, resize: Any = None, mode: Any = "crop", channels: Any = None) -> ConformOptions:
        """From the loader's ``resize=`` (an int or ``(height, width)``), ``resize_mode=`` and ``channels=``."""
        return cls(resize, mode, channels)

    @property
    def active(self) -> bool:
        """Whether anything is changed at all."""
        return self.size is not None or self.channels is not None


@dataclass(frozen=True)
class LabelOptions:
    """What a batch's ``label`` is: int64 class indices (``"class"``), float32 ``(B, C)`` finding vectors
    (``"findings"``, with a float32 ``label_mask`` where ``mask``: 1 = known), or nothing (``"none"``)."""

    kind: LabelKind = "class"
    mask: bool = False

    def __post_init__(self) -> None:
        if self.kind not in LABEL_KINDS:
            raise ValueError(f"label kind must be one of {LABEL_KINDS}, got {self.kind!r}")
        if self.mask and self.kind != "findings":
            raise ValueError("only finding vectors have a label mask")

    @classmethod
    def of(cls, labels: Any, task: Any, dataset_task: str, dataset_mask: bool) -> LabelOptions:
        """From the loader's ``labels=`` (False: images only) and ``task=`` (None: what dataset.json says; shards
        written elsewhere have none, and ``"multi_label"`` reads their finding vectors)."""
        if not isinstance(labels, bool):
            raise TypeError(f"labels must be True or False, got {labels!r}")
        if task is not None and task not in TASKS:
            raise ValueError(f"task must be one of {TASKS} or None (dataset.json's), got {task!r}")
        if not labels:
            return cls("none")
        if (task or dataset_task) == "multi_label":
            return cls("findings", dataset_mask)
        return cls("class")


@dataclass(frozen=True)
class ReadOptions:
    """How a worker fetches shards: the retry policy, and an optional local shard cache of ``cache_bytes``."""

    retry: RetryPolicy = field(default_factory=RetryPolicy)
    cache_dir: str | None = None
    cache_bytes: int = DEFAULT_CACHE_BYTES

    def __post_init__(self) -> None:
        check_count("cache_bytes", self.cache_bytes, 0)


@dataclass(frozen=True)
class WorkerOptions:
    """How the parallel stage runs: ``count`` workers (0: in the main process), processes or threads, the batches
    each holds ahead (``prefetch``), the start method, whether they live across passes, the wait limit in seconds
    for one batch (0: none), and a function each worker runs first."""

    count: int = 0
    method: WorkerMethod = "process"
    prefetch: int = 2
    mp_context: str = "fork"
    persistent: bool = True
    timeout: float = 0.0
    init_fn: Callable[[int], None] | None = None

    def __post_init__(self) -> None:
        check_count("num_workers", self.count, 0)
        check_count("prefetch", self.prefetch, 1)
        if self.method not in WORKER_METHODS:
            raise ValueError(f"worker_method must be one of {WORKER_METHODS}, got {self.method!r}")
        if not isinstance(self.timeout, (int, float)) or isinstance(self.timeout, bool) or self.timeout < 0:
            raise TypeError(f"timeout must be a number of seconds >= 0 (0: no limit), got {self.timeout!r}")
        object.__setattr__(self, "timeout", float(self.timeout))
