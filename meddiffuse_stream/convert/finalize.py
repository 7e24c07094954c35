"""The files beside the shards — ``index.parquet``, ``rejects.jsonl``, ``dataset.json`` — and the run summary."""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..shardfmt.manifest import FORMAT_VERSION, REJECTS_JSONL, write_manifest
from ..shardfmt.parquet import write_sample_index
from ..storage import Location
from .base import Discovery

if TYPE_CHECKING:
    from .pipeline import ShardResult

__all__ = ["ConversionSummary", "remove_orphans", "write_dataset_files"]

_SHARD_PATH = re.compile(r"^([a-z][a-z0-9_]*)/\1-\d{6}\.tar$")


@dataclass
class ConversionSummary:
    """Counts of one conversion; ``converted + rejected == found`` always holds."""

    out: str
    found: int
    converted: int
    rejected: int
    shards: int
    reused_shards: int
    seconds: float
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)
    reject_reasons: dict[str, int] = field(default_factory=dict)

    def table(self) -> str:
        """A plain-text summary for the end of a CLI run."""
        classes = sorted({c for s in self.splits.values() for c in s["classes"]})
        header = ["split", "samples", "patients", "shards", *classes]
        rows = [
            [name, s["samples"], s["patients"], s["shards"], *(s["classes"].get(c, 0) for c in classes)]
            for name, s in self.splits.items()
        ]
        widths = [max(len(str(x)) for x in column) for column in zip(header, *rows, strict=True)]
        lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)) for line in [header, *rows]]
        rate = self.converted / self.seconds if self.seconds > 0 else 0.0
        lines.append(
            f"found {self.found}  converted {self.converted}  rejected {self.rejected}  "
            f"shards {self.shards} ({self.reused_shards} reused)  {self.seconds:.1f}s  {rate:.0f} img/s"
        )
        for reason, count in sorted(self.reject_reasons.items(), key=lambda kv: -kv[1])[:10]:
            lines.append(f"  rejected {count:>6}  {reason}")
        if self.rejected:
            lines.append(f"  every rejected input is listed in {self.out.rstrip('/')}/{REJECTS_JSONL}")
        return "\n".join(lines)


def remove_orphans(out: Location, keep: set[str]) -> None:
    """Delete shards of an earlier plan (and temporary files) that the current plan does not produce."""
    for path in out.list_files():
        if (_SHARD_PATH.match(path) and path not in keep) or ".tar.tmp-" in path:
            out.remove(path)


def write_dataset_files(
    out: Location,
    *,
    source_format: str,
    name: str,
    discovery: Discovery,
    results: list[ShardResult],
    options: dict[str, Any],
    reused: int,
    seconds: float,
) -> ConversionSummary:
    """Write index, rejects and — last, as the commit point — ``dataset.json``."""
    rows = [row for result in results for row in result.rows]
    rejects = [r.as_row() for r in discovery.rejects] + [row for result in results for row in result.rejects]
    converted = len(rows)
    if converted + len(rejects) != discovery.found:
        raise AssertionError(f"accounting broke: {converted} converted + {len(rejects)} rejected != {discovery.found}")
    write_sample_index(out, rows)
    out.write_bytes(REJECTS_JSONL, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rejects).encode())
    shards = [r for r in results if r.samples]
    splits = _split_stats(rows, shards, discovery.class_names)
    info = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "source_format": source_format,
        "created_by": f"meddiffuse-stream {__version__}",
        "class_names": discovery.class_names,
        "num_classes": len(discovery.class_names),
        "has_roi": discovery.has_roi,
        "official_splits": discovery.official_splits,
        "options": options,
        "counts": {"found": discovery.found, "converted": converted, "rejected": len(rejects)},
        "splits": splits,
        "shards": [
            {"path": r.name, "split": r.split, "samples": r.samples, "bytes": r.bytes, "sha256": r.sha256}
            for r in shards
        ],
    }
    write_manifest(out, info)  # validated as a loader will read it
    return ConversionSummary(
        out=out.url,
        found=discovery.found,
        converted=converted,
        rejected=len(rejects),
        shards=len(shards),
        reused_shards=reused,
        seconds=seconds,
        splits=splits,
        reject_reasons=dict(Counter(_reason_kind(r["reason"]) for r in rejects)),
    )


def _split_stats(rows: list[dict[str, Any]], shards: list[ShardResult], class_names: list[str]) -> dict[str, Any]:
    stats: dict[str, dict[str, Any]] = {}
    for split in dict.fromkeys(r.split for r in shards):
        in_split = [row for row in rows if row["split"] == split]
        counts = Counter(row["class_name"] for row in in_split)
        stats[split] = {
            "samples": len(in_split),
            "patients": len({row["patient_id"] or row["key"] for row in in_split}),
            "shards": sum(1 for r in shards if r.split == split),
            "classes": {c: counts.get(c, 0) for c in class_names},
        }
    return stats


def _reason_kind(reason: str) -> str:
    """Group reasons for the summary: the text before the first colon, digits blanked."""
    return re.sub(r"\d+", "N", reason.split(":")[0])[:80]
