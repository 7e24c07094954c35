"""A CSV manifest ``path,label[,patient_id,...]``: paths relative to the CSV's folder, extra columns kept."""

from __future__ import annotations

import csv
import io
import posixpath
from dataclasses import dataclass

from ..storage import Location
from .base import Discovery, Reject, SourceItem
from .files import FileSource, KeyAllocator

__all__ = ["CsvSource", "resolve_classes"]

_REQUIRED = ("path", "label")


def resolve_classes(labels: list[str], classes: tuple[str, ...] | None) -> list[str]:
    """The class list: as given, else ``0..max`` for integer labels, else the sorted distinct names."""
    if classes:
        return list(classes)
    if labels and all(_as_int(v) is not None for v in labels):
        return [str(i) for i in range(max(0, *(int(v) for v in labels)) + 1)]
    return sorted({v for v in labels if _as_int(v) is None})


def _as_int(value: str) -> int | None:
    try:
        return int(value)
    except ValueError:
        return None


@dataclass(frozen=True)
class CsvSource(FileSource):
    """SRC is the manifest file itself (local or any fsspec URL)."""

    name = "csv"
    classes: tuple[str, ...] | None = None

    def discover(self, src: Location) -> Discovery:
        if not src.isfile():
            raise ValueError(f"{src.display()} is not a file: for the csv format SRC is the manifest, e.g. data.csv")
        text = src.read_path(src.root).decode("utf-8-sig")
        reader = csv.DictReader(io.StringIO(text))
        missing = [c for c in _REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{src.display()}: header lacks column(s) {missing}; expected path,label[,patient_id]")
        rows = list(reader)
        class_names = resolve_classes([r["label"].strip() for r in rows], self.classes)
        if not class_names:
            raise ValueError(f"{src.display()}: no usable labels; pass --classes to name the classes")
        index = {name: i for i, name in enumerate(class_names)}
        base = posixpath.dirname(src.root)
        existing = src.find_sizes(base)
        first_line: dict[str, int] = {}
        keys = KeyAllocator()
        items, rejects = [], []
        for line, row in enumerate(rows, start=2):
            path = (row.get("path") or "").strip()
            label_text = (row.get("label") or "").strip()
            source = path or f"{src.display()}:{line}"
            label = index.get(label_text)
            if label is None and (number := _as_int(label_text)) is not None and 0 <= number < len(class_names):
                label = number
            full = posixpath.normpath(posixpath.join(base, path)) if path else ""
            if not path:
                rejects.append(Reject(source, f"line {line}: empty path"))
            elif label is None:
                rejects.append(Reject(source, f"line {line}: label {label_text!r} is not one of {class_names}"))
            elif full not in existing:
                rejects.append(Reject(source, f"line {line}: referenced file is missing"))
            elif full in first_line:
                rejects.append(Reject(source, f"line {line}: duplicate of line {first_line[full]}"))
            else:
                first_line[full] = line
                extra = {k: v for k, v in row.items() if k not in ("path", "label", "patient_id") and k}
                key = keys(path, *posixpath.splitext(path)[0].split("/"))
                patient = (row.get("patient_id") or "").strip() or None
                items.append(SourceItem(key, label, path, full, patient, None, extra, existing[full]))
        return Discovery(class_names, items, rejects)
