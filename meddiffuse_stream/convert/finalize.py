"""The files beside the shards — ``index.parquet``, ``rejects.jsonl``, ``dataset.json`` — and the run summary."""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._version import __version__
from ..shardfmt.manifest import REJECTS_JSONL, ShardInfo, build_manifest, split_stats, write_manifest
from ..shardfmt.parquet import write_sample_index
from ..storage import Location
from .base import Discovery
from .class_counts import found_classes_line
from .finding_table import finding_lines
from .ownership import OutState, claim

if TYPE_CHECKING:
    from .build import ShardResult

__all__ = ["ConversionSummary", "remove_orphans", "shape_warnings", "write_dataset_files"]


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
    samples: int = -1  # above ``converted`` when inputs gave several frames (--frames all); -1: as converted
    notes: dict[str, int] = field(default_factory=dict)  # counted facts: windows ignored, frames chosen, links ...
    warnings: list[str] = field(default_factory=list)  # what will bite later: mixed sizes or channel counts
    classes_found: str = ""  # classes found in folder names or a label column, with their samples

    def table(self) -> str:
        """A plain-text summary for the end of a CLI run."""
        classes = sorted({c for s in self.splits.values() for c in s.get("classes", {})})
        header = ["split", "samples", "patients", "shards", *classes]
        rows = [
            [name, s["samples"], s["patients"], s["shards"], *(s["classes"].get(c, 0) for c in classes)]
            for name, s in self.splits.items()
        ]
        widths = [max(len(str(x)) for x in column) for column in zip(header, *rows, strict=True)]
        lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)) for line in [header, *rows]]
        lines.extend(finding_lines(self.splits))  # multi-label: positives (and unknowns) per finding and split
        if self.classes_found:
            lines.append(self.classes_found)
        rate = self.converted / self.seconds if self.seconds > 0 else 0.0
        samples = f" ({self.samples} samples)" if self.samples > self.converted else ""
        lines.append(
            f"found {self.found}  converted {self.converted}{samples}  rejected {self.rejected}  "
            f"shards {self.shards} ({self.reused_shards} reused)  {self.seconds:.1f}s  {rate:.0f} img/s"
        )
        for reason, count in sorted(self.reject_reasons.items(), key=lambda kv: -kv[1])[:10]:
            lines.append(f"  rejected {count:>6}  {reason}")
        if self.rejected:
            lines.append(f"  every rejected input is listed in {self.out.rstrip('/')}/{REJECTS_JSONL}")
        for note, count in sorted(self.notes.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"  note {count:>6}  {note}")
        lines.extend(f"warning: {warning}" for warning in self.warnings)
        return "\n".join(lines)


def remove_orphans(out: Location, keep: set[str], state: OutState) -> None:
    """Delete shards of an earlier plan (and temporary files) that the current plan does not produce — only those
    a record of ours names: a stranger's file under a shard name is left where it is."""
    for path in out.list_files():
        if path not in keep and state.is_owned(path):
            out.remove(path)
    claim(state, keep, only=True)  # what is ours from now on: the shards dataset.json is about to list


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
    converted = sum(result.converted_inputs for result in results)
    notes = Counter(discovery.notes)
    for result in results:
        notes.update(result.notes)
    warnings = [*discovery.warnings, *shape_warnings(rows)]
    if converted + len(rejects) != discovery.found:
        raise AssertionError(f"accounting broke: {converted} converted + {len(rejects)} rejected != {discovery.found}")
    write_sample_index(out, rows)
    out.write_bytes(REJECTS_JSONL, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rejects).encode())
    shards = [ShardInfo(r.name, r.samples, r.bytes, r.sha256, r.split) for r in results if r.samples]
    stats = split_stats(rows, shards, discovery.class_names, discovery.task)
    manifest = build_manifest(
        shards,
        name=name,
        source_format=source_format,
        created_by=f"meddiffuse-stream {__version__}",
        class_names=tuple(discovery.class_names),
        has_roi=discovery.has_roi,
        task=discovery.task,
        label_mask=discovery.label_mask,
        official_splits=discovery.official_splits,
        options=options,
        counts={"found": discovery.found, "converted": converted, "rejected": len(rejects), "samples": len(rows)},
        notes=dict(notes),
        warnings=tuple(warnings),
        split_stats=stats,
    )
    splits = {split: entry.to_document() for split, entry in stats.items()}
    write_manifest(out, manifest)  # validated as a loader will read it
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
        samples=len(rows),
        notes=dict(notes),
        warnings=warnings,
        classes_found=_classes_found(discovery, rows),
    )


def _classes_found(discovery: Discovery, rows: list[dict[str, Any]]) -> str:
    """The summary's line of classes found (not declared), with the samples converted of each."""
    if not discovery.classes_from or discovery.task != "multi_class":
        return ""
    counted = Counter(row.get("label") for row in rows)
    counts = {name: counted.get(index, 0) for index, name in enumerate(discovery.class_names)}
    return found_classes_line(counts, discovery.classes_from)


def shape_warnings(rows: list[dict[str, Any]]) -> list[str]:
    """Mixed image sizes or channel counts: the loader batches only equal shapes, so say so now, with the fix."""
    warnings = []
    sizes = Counter(f"{row['width']}x{row['height']}" for row in rows)
    if len(sizes) > 1:
        common = ", ".join(f"{size}: {count}" for size, count in sizes.most_common(4))
        more = f" and {len(sizes) - 4} more" if len(sizes) > 4 else ""
        warnings.append(
            f"images have {len(sizes)} different sizes ({common}{more}); batches need one size: "
            "convert again with --resize N, or resize in the loader"
        )
    channels = Counter(int(row["channels"]) for row in rows)
    if len(channels) > 1:
        mix = ", ".join(f"{c} channel{'s' if c > 1 else ''}: {n}" for c, n in sorted(channels.items()))
        warnings.append(
            f"grey and colour images are mixed ({mix}); batches need one channel count: convert "
            "again with --channels 1 or --channels 3"
        )
    return warnings


def _reason_kind(reason: str) -> str:
    """Group reasons for the summary: the text before the first colon (after a manifest's "line N:"), digits
    blanked."""
    text = re.sub(r"^line \d+: ", "", reason)
    return re.sub(r"\d+", "N", text.split(":")[0])[:80]
