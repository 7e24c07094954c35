"""Conversion of a source into shards: plan, build shards in parallel, resume, then write the dataset files.

The plan is a pure function of the discovered inputs and the options, so a re-run builds the same shards with the
same names. Each finished shard leaves a small record in ``.progress/``; a re-run skips every shard whose record
matches the plan and whose bytes still hash to the recorded sha256. ``dataset.json`` is written last, so it never
lists a shard that is not complete.

What "the same input" means for a resume: a source file is unchanged while its size and its modification time in
nanoseconds (``st_mtime_ns``; on object storage its ETag) are unchanged. Any write to a file — a finished download,
a re-export, ``touch`` — changes its mtime, so its shard is rebuilt; a tool that rewrites a file and then restores
its old mtime and size (``rsync --times`` of a same-sized edit) hides the change: ``touch`` such files, or start
with a fresh OUT.

One conversion per OUT: :mod:`.lock` makes a second one fail at once.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import multiprocessing
import sys
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..geometry import GEOMETRY_MODES, GeometryMode
from ..shardfmt.manifest import DATASET_JSON, FORMAT_VERSION
from ..storage import Location, sha256_of
from ..user_errors import check_storage_options
from .base import (
    DEFAULT_MAX_FILE_BYTES,
    DEFAULT_MAX_PIXELS,
    FRAME_CHOICES,
    ConversionError,
    Discovery,
    ReadRules,
    SourceFormat,
    SourceItem,
)
from .build import ShardResult, ShardTask, build_shard
from .class_counts import class_counts, small_class_warnings
from .finalize import ConversionSummary, remove_orphans, write_dataset_files
from .lock import acquire_lock
from .ownership import PROGRESS_DIR, check_plan, claim, survey_out
from .preflight import check_destination, excluded_paths, probe
from .splits import DEFAULT_SPLITS, assign_splits, patients_in_several_splits

__all__ = ["PROGRESS_DIR", "ConversionError", "ConvertOptions", "ShardResult", "convert_dataset"]


@dataclass(frozen=True)
class ConvertOptions:
    """How to cut the source into shards; every field but ``workers`` is part of the plan's fingerprint."""

    splits: Mapping[str, float] | None = None  # None: the dataset's official splits, else DEFAULT_SPLITS
    seed: int = 0
    workers: int = 1
    shard_size: int = 1000
    shard_bytes: int = 1 << 30  # planned from the inputs' sizes on disk, an upper-bound estimate
    resize: int | None = None
    resize_mode: GeometryMode = "crop"  # with ``resize``: the loader's crop or letterbox, or stretch
    name: str | None = None
    frames: str = "middle"  # multi-frame DICOM / multi-page images: middle frame, all frames, or reject the input
    channels: int | None = None  # 1 or 3: every sample converted to grey or RGB
    max_pixels: int = DEFAULT_MAX_PIXELS  # per input (all kept frames), checked from headers before decoding
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES  # per input file, checked before reading


def convert_dataset(
    source: SourceFormat,
    src_url: str | None,
    out_url: str,
    options: ConvertOptions | None = None,
    *,
    storage_options: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> ConversionSummary:
    """Convert ``src_url`` (in ``source``'s layout) into a shard dataset at ``out_url``.

    ``src_url`` may be ``None`` for sources that make their own inputs (the demo dataset). Only one conversion may
    write an OUT at a time: a second one fails at once with :class:`~.lock.OutputLockedError`.
    """
    options = options or ConvertOptions()
    _check_options(options, src_url or "", out_url)
    started = time.perf_counter()
    for url in (out_url, src_url):
        if url is not None:
            check_storage_options(url, storage_options or {})
    out = Location(out_url, storage_options)
    src = Location(src_url, storage_options) if src_url is not None else out
    probe(out)  # remote storage answers within a bounded time, or this fails with one line
    if src is not out:
        probe(src)
    check_destination(out)
    rules = ReadRules(options.frames, options.max_pixels, options.max_file_bytes, excluded_paths(out), options.channels)
    state = survey_out(out)  # before anything is written: an OUT another tool wrote is refused untouched
    out.makedirs()
    with acquire_lock(out) as lock:
        discovery = source.discover(src, rules)
        if not discovery.items:
            reasons = "; ".join(sorted({r.reason for r in discovery.rejects})[:3]) or "no inputs found"
            raise ConversionError(f"nothing to convert in {src_url} ({discovery.found} inputs found): {reasons}")
        if discovery.classes_from:  # a misspelt class folder or label, said before the long part
            counts = class_counts(discovery.class_names, discovery.items)
            discovery.warnings.extend(small_class_warnings(counts, discovery.classes_from))
        for warning in discovery.warnings:  # before the long part, so a wrong layout can be stopped at once
            print(f"warning: {warning}", file=sys.stderr)
        tasks = plan_shards(source, discovery, options)
        _warn_of_leaks(discovery, tasks)
        check_plan(state, [task.name for task in tasks])
        results: dict[str, ShardResult] = {}
        pending = []
        for task in tasks:
            record = _load_verified_record(out, task)
            if record is None:
                pending.append(task)
            else:
                results[task.name] = record
        if pending:
            state = claim(state, [task.name for task in pending])  # recorded as ours before any is written
            out.remove(DATASET_JSON)  # it may list shards about to be rewritten
        for result in _build_all(source, src, out, pending, discovery.class_names, options, rules, progress):
            out.write_bytes(f"{PROGRESS_DIR}/{_record_name(result.name)}", json.dumps(asdict(result)).encode())
            results[result.name] = result
        ordered = [results[task.name] for task in tasks]
        lock.verify()  # a run that lost OUT to another must not commit
        kept = {r.name for r in ordered if r.samples}
        remove_orphans(out, kept, state)
        summary = write_dataset_files(
            out,
            source_format=source.name,
            name=options.name or source.name,
            discovery=discovery,
            results=ordered,
            options=_options_record(options),
            reused=len(tasks) - len(pending),
            seconds=time.perf_counter() - started,
        )
        if lock.stale:  # told to the user, not written into dataset.json (it names a host and a time)
            summary.notes[
                f"OUT was locked by a conversion that ended without releasing it ({lock.stale}): "
                "its stale lock was taken over"
            ] = 1
    if summary.converted == 0:
        raise ConversionError(
            f"nothing could be converted from {src_url}: all {summary.found} inputs were rejected "
            f"(reasons in {out.display('rejects.jsonl')})"
        )
    return summary


def _check_options(options: ConvertOptions, src_url: str, out_url: str) -> None:
    if options.shard_size < 1:
        raise ValueError(f"--shard-size must be at least 1, got {options.shard_size}")
    if options.shard_bytes < 1:
        raise ValueError(f"--shard-bytes must be at least 1, got {options.shard_bytes}")
    if options.resize is not None and options.resize < 8:
        raise ValueError(f"--resize must be at least 8 pixels, got {options.resize}")
    if options.resize_mode not in GEOMETRY_MODES:
        raise ValueError(f"--resize-mode must be one of {', '.join(GEOMETRY_MODES)}, got {options.resize_mode!r}")
    if options.channels not in (None, 1, 3):
        raise ValueError(f"--channels must be 1 (grey) or 3 (RGB), got {options.channels}")
    if options.frames not in FRAME_CHOICES:
        raise ValueError(f"--frames must be one of {', '.join(FRAME_CHOICES)}, got {options.frames!r}")
    if options.workers > 1 and any(u.startswith("memory://") for u in (src_url, out_url)):
        raise ValueError("memory:// is private to one process: use --workers 1 with it")


def plan_shards(source: SourceFormat, discovery: Discovery, options: ConvertOptions) -> list[ShardTask]:
    """Cut the inputs into shards: by split, in a seeded order, closed by count or by estimated bytes."""
    if discovery.official_splits:
        if options.splits is not None:
            raise ValueError(f"{source.name} has official splits, which are kept: leave --split out")
        split_of = {item.key: str(item.split) for item in discovery.items}
        names = sorted({str(item.split) for item in discovery.items}, key=_split_rank)
    else:
        fractions = dict(options.splits or DEFAULT_SPLITS)
        split_of = assign_splits(discovery.items, fractions, options.seed)
        names = list(fractions)
    decoding = [options.resize, options.frames, options.channels, options.max_pixels, options.max_file_bytes]
    if options.resize and options.resize_mode != "stretch":  # stretch was the only mode: its plans keep their prints
        decoding.append(options.resize_mode)
    # multi-label facts join the fingerprint only where they exist: multi-class plans keep their old fingerprints
    labels = [[discovery.task, discovery.label_mask]] if discovery.task != "multi_class" else []
    common = json.dumps(
        [FORMAT_VERSION, repr(source), discovery.class_names, decoding, *labels], sort_keys=True, default=str
    )
    tasks: list[ShardTask] = []
    for split in names:
        members = sorted((i for i in discovery.items if split_of[i.key] == split), key=lambda i: i.key)
        if discovery.preshuffle:
            rng = np.random.default_rng((options.seed, zlib.crc32(split.encode())))
            members = [members[i] for i in rng.permutation(len(members))]
        for index, chunk in enumerate(_chunks(members, options.shard_size, options.shard_bytes)):
            digest = hashlib.sha256(common.encode())
            for item in chunk:
                fields = [
                    item.key,
                    item.label,
                    item.source,
                    item.ref,
                    item.patient_id,
                    split,
                    item.meta,
                    item.size_hint,
                    item.stamp,  # size and mtime_ns (ETag remotely): a changed source file rebuilds its shard
                    *([item.findings] if item.findings is not None else []),
                ]
                digest.update(json.dumps(fields, sort_keys=True, default=str).encode())
            tasks.append(ShardTask(split, index, tuple(chunk), digest.hexdigest(), discovery.label_mask))
    return tasks


def _warn_of_leaks(discovery: Discovery, tasks: Sequence[ShardTask]) -> None:
    """An official split list that puts one patient on two sides is kept as released, and said loudly."""
    split_of = {item.key: task.split for task in tasks for item in task.items}
    leaks = patients_in_several_splits(discovery.items, split_of)
    if leaks:
        first = ", ".join(f"{p} ({'/'.join(s)})" for p, s in list(leaks.items())[:3])
        warning = (
            f"{len(leaks)} patient(s) have images in more than one split, e.g. {first}: the official split "
            "lists disagree with the patient ids; use --split fractions for a patient-level split"
        )
        discovery.warnings.append(warning)
        print(f"warning: {warning}", file=sys.stderr)


def _split_rank(split: str) -> tuple[int, str]:
    return ({"train": 0, "val": 1, "test": 2}.get(split, 3), split)


def _chunks(items: Sequence[SourceItem], max_count: int, max_bytes: int) -> list[list[SourceItem]]:
    chunks: list[list[SourceItem]] = [[]]
    size = 0
    for item in items:
        if chunks[-1] and (len(chunks[-1]) >= max_count or size + item.size_hint > max_bytes):
            chunks.append([])
            size = 0
        chunks[-1].append(item)
        size += item.size_hint
    return [c for c in chunks if c]


def _record_name(shard: str) -> str:
    return shard.split("/")[-1].replace(".tar", ".json")


def _load_verified_record(out: Location, task: ShardTask) -> ShardResult | None:
    """The progress record of a shard that is complete and intact, else ``None`` (the shard is rebuilt)."""
    path = f"{PROGRESS_DIR}/{_record_name(task.name)}"
    try:
        record = ShardResult(**json.loads(out.read_bytes(path)))
    except (FileNotFoundError, ValueError, TypeError):
        return None
    if record.fingerprint != task.fingerprint:
        return None
    if record.samples == 0:
        return record
    try:
        if out.size(task.name) != record.bytes or sha256_of(out, task.name, record.bytes) != record.sha256:
            return None
    except FileNotFoundError:
        return None
    return record


def _build_all(
    source: SourceFormat,
    src: Location,
    out: Location,
    tasks: list[ShardTask],
    class_names: list[str],
    options: ConvertOptions,
    rules: ReadRules,
    progress: bool,
):
    bar = tqdm(total=sum(len(t.items) for t in tasks), unit="img", desc="shard", disable=not progress)
    try:
        if options.workers <= 1 or len(tasks) <= 1:
            for task in tasks:
                result = build_shard(source, src, out, task, class_names, options.resize, rules, options.resize_mode)
                bar.update(len(task.items))
                yield result
            return
        context = multiprocessing.get_context("spawn")  # fork would share fsspec's event loop and sockets
        with concurrent.futures.ProcessPoolExecutor(min(options.workers, len(tasks)), mp_context=context) as pool:
            futures = {
                pool.submit(
                    build_shard, source, src, out, task, class_names, options.resize, rules, options.resize_mode
                ): task
                for task in tasks
            }
            for future in concurrent.futures.as_completed(futures):
                bar.update(len(futures[future].items))
                yield future.result()
    finally:
        bar.close()


def _options_record(options: ConvertOptions) -> dict[str, Any]:
    record = asdict(options)
    record["splits"] = dict(options.splits) if options.splits else None
    record.pop("workers")  # how fast it was built is not part of what was built
    if options.resize is None:
        record["resize_mode"] = None  # nothing was resized
    return record
