"""Which files in OUT this tool wrote, so a conversion never deletes or overwrites anyone else's.

OUT is ours when it is empty or carries a mark only a conversion leaves: a ``dataset.json`` whose ``created_by`` is
meddiffuse-stream, progress records in ``.progress/``, or the lock file ``.convert.lock``. Anything else — a folder
of another tool's ``train/train-000000.tar`` files, say — is refused before a byte is written, with what was found.

Inside an OUT that is ours, a shard is ours only when a record names it: ``dataset.json``, its progress record, or
``.progress/claimed.list``, which lists every shard name a run is about to write *before* it writes one (so a run
killed between writing a shard and recording it still knows the shard as its own). A stranger's file under a
shard name is never removed as an orphan, and a plan that would overwrite one is refused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

from ..shardfmt.manifest import DATASET_JSON, MAX_MANIFEST_BYTES
from ..shardfmt.safejson import loads_limited
from ..storage import Location, StorageNotFoundError
from .base import ConversionError
from .lock import LOCK_NAME

__all__ = ["CLAIM_RECORD", "PROGRESS_DIR", "OutState", "check_plan", "claim", "survey_out"]

PROGRESS_DIR = ".progress"
CLAIM_RECORD = f"{PROGRESS_DIR}/claimed.list"  # not *.json: progress records are counted by that name
_CREATOR = "meddiffuse-stream"
_SHARD = re.compile(r"^([a-z][a-z0-9_]*)/\1-\d{6}\.tar$")
_RECORD = re.compile(r"^\.progress/([a-z][a-z0-9_]*)-(\d{6})\.json$")
_TEMPORARY = re.compile(r"^(.+)\.tmp-[0-9a-f]{8}$")
_SHOWN = 5


@dataclass(frozen=True)
class OutState:
    """What OUT held before this run: every file, whether it is ours, and the shards our records name."""

    out: Location
    files: tuple[str, ...]
    ours: bool
    owned_shards: frozenset[str]

    def is_owned(self, path: str) -> bool:
        """A shard a record names, or a temporary file of one (``train/train-000000.tar.tmp-1a2b3c4d``)."""
        temporary = _TEMPORARY.match(path)
        name = temporary.group(1) if temporary else path
        return self.ours and bool(_SHARD.match(name)) and (name in self.owned_shards or temporary is not None)


def survey_out(out: Location) -> OutState:
    """List OUT once and decide whether it is ours; raise :class:`ConversionError` naming what it holds if not."""
    try:
        files = tuple(out.list_files())
    except StorageNotFoundError:  # an OUT bucket not made yet is empty: the conversion makes it (or says why not)
        files = ()
    if not files:
        return OutState(out, files, True, frozenset())
    manifest = _document(out, DATASET_JSON) if DATASET_JSON in files else None  # read once, for both questions
    created_by = _creator(manifest)
    marked = any(p.startswith(f"{PROGRESS_DIR}/") or p == LOCK_NAME for p in files)
    foreign_manifest = DATASET_JSON in files and not (created_by or "").startswith(_CREATOR)
    if foreign_manifest or not (marked or created_by):
        why = (
            f"its dataset.json was written by {created_by!r:.60}"
            if created_by
            else "its dataset.json is not one meddiffuse-stream wrote"
            if DATASET_JSON in files
            else "it has no dataset.json and no .progress/ of an earlier conversion"
        )
        raise ConversionError(
            f"OUT {out.display()} is not empty and was not written by meddiffuse-stream ({why}): it holds "
            f"{_listing(files)}; nothing there is deleted or overwritten: convert into an empty folder, or move "
            "those files away first"
        )
    owned: set[str] = set()
    if created_by:
        owned.update(_manifest_shards(manifest))
    for path in files:
        record = _RECORD.match(path)
        if record:
            owned.add(f"{record.group(1)}/{record.group(1)}-{record.group(2)}.tar")
    if CLAIM_RECORD in files:
        owned.update(_claimed(out))
    return OutState(out, files, True, frozenset(owned))


def check_plan(state: OutState, planned: Iterable[str]) -> None:
    """Refuse a plan that would overwrite a file under a shard name that no record of ours names."""
    present = set(state.files)
    strangers = sorted(name for name in planned if name in present and not state.is_owned(name))
    if strangers:
        raise ConversionError(
            f"OUT {state.out.display()} holds {_listing(strangers)}, which meddiffuse-stream did not write (no "
            "record of it): this conversion would overwrite it; move it away or convert into another OUT"
        )


def claim(state: OutState, names: Iterable[str], *, only: bool = False) -> OutState:
    """Record ``names`` as ours before they are written (``only``: as all that is ours, once the rest is gone)."""
    owned = frozenset(set(names) if only else state.owned_shards | set(names))
    state.out.write_bytes(CLAIM_RECORD, json.dumps(sorted(owned)).encode())
    return OutState(state.out, state.files, True, owned)


def _listing(paths: Iterable[str]) -> str:
    paths = list(paths)
    shown = ", ".join(_printable(p) for p in paths[:_SHOWN])
    return f"{shown}{f' and {len(paths) - _SHOWN} more' if len(paths) > _SHOWN else ''} ({len(paths)} file(s))"


def _printable(path: str) -> str:
    """A listed name as text that cannot move a terminal's cursor: control characters escaped."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in path)


def _document(out: Location, name: str) -> object:
    try:
        return loads_limited(out.read_bytes(name), max_bytes=MAX_MANIFEST_BYTES)
    except (OSError, ValueError):
        return None


def _creator(document: object) -> str | None:
    created_by = document.get("created_by") if isinstance(document, dict) else None
    return created_by if isinstance(created_by, str) else None


def _manifest_shards(document: object) -> set[str]:
    shards = document.get("shards") if isinstance(document, dict) else None
    return {s["path"] for s in shards or [] if isinstance(s, dict) and isinstance(s.get("path"), str)}


def _claimed(out: Location) -> set[str]:
    document = _document(out, CLAIM_RECORD)
    return {name for name in document if isinstance(name, str)} if isinstance(document, list) else set()
