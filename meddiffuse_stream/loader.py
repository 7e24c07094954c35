"""``MedDiffuseLoader``: a drop-in DataLoader over shard datasets, exactly once per epoch, resumable mid-epoch.

It builds the default graph of :mod:`meddiffuse_stream.nodes` (``loader.root`` is its root node) and gives it the
DataLoader and StatefulDataLoader habits training frameworks rely on:

- each ``iter()`` is a full pass — the next epoch, or the one ``set_epoch`` named; after ``load_state_dict`` the
  next pass resumes exactly, and a state taken at an epoch's end resumes at the next epoch's first batch;
- every rank yields the same number of batches (no DDP hang), every sample once per epoch across ranks and workers
  (up to ``world_size - 1`` repeats, marked ``is_padding``; ``even_batches=False`` repeats none, for metrics);
- rank and world size are read when an epoch starts, so a loader built before the process group exists, or
  pickled into another process (``ddp_spawn``, ``mp.spawn``), shards by the rank it runs on;
- the position in a state is shared by all ranks: any rank's state resumes any rank (frameworks save rank 0's).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch

from .counters import Counters
from .nodes.chain import Stage, WorkerChain
from .nodes.decode import DecodeOptions, check_member_keys
from .nodes.epochs import EpochSource
from .nodes.frameworks import BatchSamplerStandIn, EpochSetter, gradient_state_pass
from .nodes.graph import Graph, default_graph
from .nodes.plan import EpochPlan
from .nodes.present import StandInRows
from .nodes.source import DatasetSource, open_dataset
from .nodes.stages import Map
from .nodes.workers import resume_position, version2_uneven_position
from .options import (
    ConformOptions,
    Dtype,
    LabelOptions,
    OnError,
    ReadOptions,
    ResizeMode,
    Task,
    WorkerMethod,
    WorkerOptions,
    check_count,
    either,
    reject_unknown,
)
from .storage import DEFAULT_CACHE_BYTES, RetryPolicy

__all__ = ["MedDiffuseLoader", "sample_shape"]

STATE_VERSION = 3  # 3: even_batches=False lays its last step out anew (a version-2 state of one resumes at a boundary)


class MedDiffuseLoader:
    """Stream ``source`` in batches: a dataset folder (local or any fsspec URL), a folder or prefix of WebDataset
    shards (``.tar``, ``.tar.gz``, ``.tgz``), a glob or brace pattern of them, a list of their URLs, or a shard
    index (``…/x.json``). Shards that are symbolic links are followed inside ``link_root`` (default: the folder
    named); ``split`` picks the shards of one split (see :mod:`meddiffuse_stream.nodes.source`).

    ``for images, labels in loader`` gives float32 ``(B, C, H, W)`` in [0, 1] and int64 labels; with
    ``as_dict=True`` dicts with ``image``, ``label``, ``key``, ``is_padding`` and, where the dataset has them,
    ``roi`` and ``meta``. ``dtype="uint8"`` (or ``"uint16"``) delivers the stored integers instead, a quarter (half)
    of the bytes, for the device to convert: ``meddiffuse_stream.unit_float(images.to(device))``.

    A multi-label dataset (``task`` in dataset.json, or ``task="multi_label"`` for shards written elsewhere with a
    vector member, e.g. ``label_key="npy"``) gives ``label`` as float32 ``(B, C)`` and, where some findings are
    unknown, ``label_mask`` float32 ``(B, C)`` (1 = known): tuple mode is then ``for images, labels, label_mask in
    loader``. ``labels=False`` reads images alone (self-supervised pretraining, unlabeled shards): tuple mode gives
    the image tensor, dicts have no ``label``. Datasets with per-finding ROIs (``rois.png``) add ``rois`` ``(B, C, H,
    W)`` to the dicts. ``augment=`` on a multi-label dataset yields the stage's ``target`` (and ``target_mask``):
    label-mixing methods mix finding vectors and masks; the methods that cannot run there are refused by name.
    """

    def __init__(
        self,
        source: str | Sequence[str],
        batch_size: int,
        *,
        split: str | None = None,
        num_workers: int = 0,
        shuffle: bool | None = None,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = False,
        even_batches: bool = True,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        stages: Sequence[Stage] = (),
        resize: int | tuple[int, int] | None = None,
        resize_mode: ResizeMode = "crop",
        channels: int | None = None,
        augment: Any = None,
        device: str | torch.device | None = None,
        as_dict: bool = False,
        cache_dir: str | None = None,
        storage_options: Mapping[str, Any] | None = None,
        on_error: OnError = "raise",
        worker_method: WorkerMethod = "process",
        buffer_size: int = 1000,
        prefetch: int | None = None,
        retry: RetryPolicy | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        mp_context: str | None = None,
        pin_memory: bool = False,
        persistent_workers: bool = True,
        prefetch_factor: int | None = None,
        collate_fn: Callable[[list[dict[str, Any]]], Any] | None = None,
        worker_init_fn: Callable[[int], None] | None = None,
        timeout: float = 0,
        multiprocessing_context: str | None = None,
        image_key: str | None = None,
        label_key: str | None = None,
        labels: bool = True,
        task: Task | None = None,
        dtype: Dtype = "float32",
        link_root: str | None = None,
        **dataloader_only: Any,
    ) -> None:
        reject_unknown(dataloader_only)
        check_member_keys(image_key, label_key)
        if collate_fn is not None and augment is not None:
            raise ValueError("collate_fn= and augment= do not go together: the device stage needs the default batch")
        self.batch_size = check_count("batch_size", batch_size, 1)
        self.num_workers = check_count("num_workers", num_workers, 0)
        mp_context = either("mp_context", mp_context, "multiprocessing_context", multiprocessing_context, "fork")
        workers = WorkerOptions(
            method=worker_method,
            prefetch=either("prefetch", prefetch, "prefetch_factor", prefetch_factor, 2),
            mp_context=mp_context,
            persistent=persistent_workers,
            timeout=timeout,
            init_fn=worker_init_fn,
        )
        read = ReadOptions(retry or RetryPolicy(), cache_dir, cache_bytes)
        conform = ConformOptions.of(resize, resize_mode, channels)
        self.counters = counters = Counters()  # the retry hook holds the counters, not the loader: no cycle
        self.dataset: DatasetSource = open_dataset(
            source,
            split,
            storage_options,
            retry=read.retry,
            on_retry=lambda _: counters.add("retries"),
            link_root=link_root,
        )
        self.source = source
        self.split = self.dataset.split  # None for shards without splits
        self.as_dict = as_dict
        self.drop_last = drop_last
        self.pin_memory = pin_memory
        self.collate_fn = collate_fn
        self._epochs = EpochSource(
            tuple(s.samples for s in self.dataset.shards),
            self.batch_size,
            seed=seed,
            rank=rank,
            world_size=world_size,
            num_workers=self.num_workers,
            shuffle=self.split in (None, "train") if shuffle is None else shuffle,
            drop_last=drop_last,
            buffer_size=check_count("buffer_size", buffer_size, 1),
            even=even_batches,
        )
        self.labels = LabelOptions.of(labels, task, self.dataset.task, self.dataset.label_mask)
        if augment is not None and self.labels.kind == "none":
            raise ValueError("labels=False and augment= do not go together: the augmentations mix labels")
        if augment is not None and self.labels.kind == "findings":
            _refuse_on_findings(augment)
        decode = DecodeOptions(
            num_classes=len(self.dataset.class_names) or None,
            with_roi=as_dict,
            with_meta=as_dict,
            image_key=_suffix_case(image_key),
            label_key=_suffix_case(label_key),
            class_names=self.dataset.class_names,
            labels=self.labels,
        )
        user_stages = ((functools.partial(Map, fn=transform),) if transform is not None else ()) + tuple(stages)
        chain = WorkerChain(
            self.dataset,
            decode,
            user_stages,
            on_error=on_error,
            conform=conform,
            collate_fn=collate_fn,
            read=read,
            dtype=dtype,
        )
        if chain.dtype != "float32" and transform is not None:
            raise ValueError(
                f"dtype={chain.dtype!r} delivers the stored integers, but transform= sees and returns float "
                "images: drop dtype= or run the transform on the device after unit_float"
            )
        self.dtype = chain.dtype
        self.augment = self._build_stage(augment, seed, device)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self._graph: Graph = default_graph(
            self._epochs,
            chain,
            workers=workers,
            pin_memory=pin_memory,
            device=device,
            augment=self.augment,
            counters=self.counters,
            details=as_dict,  # the stage's saliency and variant planes only when someone will see them
            cpu_threads=max(1, cores - self.num_workers) if self.num_workers > 0 else None,  # what workers leave
        )
        self._pending: tuple[int, int] | None = None  # where the next pass starts, if not the next epoch
        self._restored = False  # the pending start came from load_state_dict or skip (set_epoch keeps it)
        self._pending_stage: dict[str, Any] | None = None
        self._pass = 0
        self._stand_ins = StandInRows()
        # workers start now: spawning, imports and the first shard fetches overlap the caller's model set-up
        self._graph.workers.prepare()

    # --- the DataLoader surface -------------------------------------------------------------------------
    @property
    def root(self) -> Any:
        """The root node of the loader's graph (dict batches), for ``torchdata.nodes.Loader`` or a graph of yours."""
        return self._graph.root

    @property
    def graph(self) -> Graph:
        return self._graph

    @property
    def epoch(self) -> int:
        """The epoch of the pass in progress (or the one the next pass starts, after ``set_epoch`` or a restore)."""
        return self._position()[0]

    @property
    def plan(self) -> EpochPlan:
        """The plan of the pass in progress or of the next one, with the rank and world size of now."""
        running = self._graph.workers.plan
        if self._pending is not None:
            return self._epochs.plan_for(self._pending[0])
        if running is not None and self._graph.position()[1] < running.num_batches:
            return running
        return self._epochs.plan_for(self._epochs.next_epoch)  # read now: the rank may have changed since

    @property
    def sampler(self) -> EpochSetter:
        """What frameworks call ``set_epoch`` on (Lightning does at every epoch start)."""
        return EpochSetter(self)

    @property
    def batch_sampler(self) -> BatchSamplerStandIn:
        """Batches are cut in the workers: this stands in with ``batch_size``, ``drop_last``, ``sampler`` and
        ``len()``; iterating it (``accelerator.skip_first_batches`` does) raises, naming :meth:`skip`."""
        return BatchSamplerStandIn(self)

    def __len__(self) -> int:
        """Batches per pass on this rank."""
        return self.plan.num_batches

    def set_epoch(self, epoch: int) -> None:
        """The next pass is ``epoch`` from its first batch (as ``DistributedSampler.set_epoch``) — unless a restored
        state of that same epoch is waiting: then it resumes there."""
        epoch = check_count("epoch", epoch, 0)
        if self._restored and self._pending is not None and self._pending[0] == epoch:
            return
        self._pending, self._pending_stage, self._restored = (epoch, 0), None, False

    def skip(self, batches: int) -> MedDiffuseLoader:
        """The next pass starts ``batches`` later, without reading them (``accelerator.skip_first_batches``)."""
        batches = check_count("batches", batches, 0)
        epoch, start = self._pending if self._pending is not None else (self._epochs.next_epoch, 0)
        total = self._epochs.plan_for(epoch).num_batches
        if start + batches > total:
            raise ValueError(f"cannot skip {batches} batches from batch {start}: epoch {epoch} has {total}")
        self._pending, self._restored = (epoch, start + batches), True
        return self

    def __iter__(self) -> Iterator[Any]:
        return self._run()

    def _run(self) -> Iterator[Any]:
        self._pass += 1
        token = self._pass
        pending, self._pending, self._restored = self._pending, None, False
        stage, self._pending_stage = self._pending_stage, None
        root = self._graph.root
        root.reset(None if pending is None else self._graph.state_at(*pending, None, stage))
        plan = self._graph.workers.plan
        assert plan is not None
        last = plan.num_batches - 1 - (pending[1] if pending is not None else 0)  # the index of the last batch
        with gradient_state_pass(plan.last_step_samples) as accelerate:  # see nodes/frameworks.py
            for index in itertools.count():
                batch = next(root, None)
                if batch is None:
                    return
                if accelerate is not None:
                    accelerate.end_of_dataloader = index == last
                yield self._present(batch)
                if self._pass != token:
                    return  # a newer iter() or load_state_dict() took over the graph; this iterator is spent

    def _present(self, batch: Any) -> Any:
        """Tuple mode: ``(images, labels)``; ``(images, labels, label_mask)`` for multi-label datasets with
        unknowns (a mask dropped silently would train on unknowns as negatives); images alone with labels=False."""
        if self.as_dict or self.collate_fn is not None:
            return batch
        keep = self._stand_ins.keep(batch, self._graph.workers.plan)  # rows standing in for dropped samples go
        if self.labels.kind == "none":
            parts: tuple[Any, ...] = (batch["image"],)
        elif self.labels.mask:  # with augment=, the targets and mask the stage made (mixed, for label mixing)
            name = "target" if self.augment is not None else "label"
            parts = (batch["image"], batch[name], batch[f"{name}_mask"])
        else:
            parts = (batch["image"], batch["target" if self.augment is not None else "label"])
        if keep is not None:  # see nodes/present.py
            parts = tuple(part[keep] for part in parts)
        return parts[0] if len(parts) == 1 else parts

    def close(self) -> None:
        """Stop worker processes and the device stage's thread now (they also stop at garbage collection and at
        interpreter exit); the loader starts new ones if it is iterated again."""
        self._graph.close()

    def __enter__(self) -> MedDiffuseLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- state ----------------------------------------------------------------------------------------------
    def _position(self) -> tuple[int, int]:
        if self._pending is not None:
            return self._pending
        return self._graph.position()

    def _fingerprint(self) -> str:
        text = "|".join(f"{s.path}:{s.samples}:{s.sha256}" for s in self.dataset.shards)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def state_dict(self) -> dict[str, Any]:
        """Where the loader is — epoch and batches yielded in it, shared by every rank — with the settings the
        order depends on, this rank's counters and the device stage's state."""
        epoch, batches = self._position()
        stage = None
        if self.augment is not None:
            stage = self._pending_stage if self._pending_stage is not None else self._graph.stage_state()
        plan = self.plan
        return {
            "version": STATE_VERSION,
            "epoch": epoch,
            "batches": batches,
            "split": self.split,
            "dataset": self._fingerprint(),
            "settings": plan.layout(),
            "rank": plan.rank,
            "counters": self.counters.as_dict(),
            "augment": stage,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue where ``state`` was taken — by this rank or any other (the position is shared). Resuming in
        the middle of an epoch needs the saved world size, workers, batch size and order settings; a state taken
        at an epoch's end (or start) resumes with any of them. An iterator of this loader that is still running
        ends (``StopIteration`` at its next step); the next ``iter()`` resumes."""
        version = state.get("version")
        if version not in (1, 2, STATE_VERSION):
            raise ValueError(f"loader state version {version!r} is not {STATE_VERSION} (or 1, 2)")
        if state["dataset"] != self._fingerprint() or state["split"] != self.split:
            raise ValueError(
                f"this loader state belongs to another dataset or split ({state['split']!r}); "
                f"it cannot resume {self.source!r} split {self.split!r}"
            )
        epoch, batches = int(state["epoch"]), int(state["batches"])
        settings = dict(state["settings"])
        saved_rank = settings.pop("rank", state.get("rank"))
        if version == 1:  # states before the even_batches setting and the layout check
            settings.update(samples=self.dataset.total, even=True)
        if version == 2 and settings.get("even") is False and not settings.get("drop_last") and batches:
            epoch, batches = version2_uneven_position(epoch, batches, settings, saved_rank)
        plan = self._epochs.plan_for(epoch)
        start = resume_position(plan, batches, settings)
        if self.augment is not None and state.get("augment") is None:
            raise ValueError("this loader state was saved without augment=; construct the loader as saved")
        self._pending = (epoch + 1, 0) if start == plan.num_batches else (epoch, start)
        self._pass += 1  # a live iterator ends at its next step: the workers are about to be sent elsewhere
        self._restored = True
        self._pending_stage = dict(state["augment"]) if self.augment is not None else None
        if saved_rank == plan.rank:  # another rank's counts are not this rank's
            self.counters.clear()
            self.counters.update(state.get("counters", {}))
        self._graph.workers.prepare(*self._pending)

    # --- the device stage -----------------------------------------------------------------------------------
    def _build_stage(self, augment: Any, seed: int, device: str | torch.device | None) -> Any:
        """``None``, a method name that needs no models, or a configured ``AugmentStage``."""
        if augment is None:
            return None
        from .augment import AugmentStage

        if isinstance(augment, AugmentStage):
            return augment
        if not isinstance(augment, str):
            raise TypeError(f"augment must be None, a method name or an AugmentStage, got {type(augment).__name__}")
        try:
            return AugmentStage(augment, len(self.dataset.class_names) or 2, seed=seed, device=device)
        except ValueError as error:
            raise ValueError(f"{error}; build it with meddiffuse_stream.augment.AugmentStage(...)") from error


def _refuse_on_findings(augment: Any) -> None:
    """``ValueError`` naming the methods that do not run on multi-label data, if ``augment`` is one of them."""
    from .augment.methods import multi_label_refusal

    name = augment if isinstance(augment, str) else getattr(augment, "method", None)
    reason = multi_label_refusal(name) if isinstance(name, str) else None
    if reason is not None:
        raise ValueError(reason)


def _suffix_case(key: str | None) -> str | None:
    """A member suffix as the reader keys members (lower case: ``.JPEG`` is ``jpeg``); a JSON field keeps its case."""
    if key is None or key.startswith("json:"):
        return key
    return key.lower()


def sample_shape(source: str | Sequence[str], storage_options: Mapping[str, Any] | None = None) -> tuple[int, int, int]:
    """``(channels, image size, classes)`` of a dataset, from its first sample: what a model for it must take (the
    classes of a multi-label dataset: its findings)."""
    probe = MedDiffuseLoader(source, 1, shuffle=False, storage_options=storage_options, as_dict=True)
    try:
        batch = next(iter(probe))
    finally:
        probe.close()
    images = batch["image"]
    classes = len(probe.dataset.class_names) or (batch["label"].shape[-1] if batch["label"].ndim == 2 else 0)
    return images.shape[1], images.shape[-1], classes
