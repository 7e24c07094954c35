"""A CSV manifest ``path,label[,patient_id,...]``: paths relative to the CSV's folder (or absolute, locally).

Columns other than ``path``, ``label`` and ``patient_id`` are kept, under their own names, in each sample's
``columns`` mapping (in ``{key}.json`` and ``index.parquet``): a column called ``split``, ``key`` or ``height`` can
never overwrite the fields the pipeline writes. How rows are read and labels resolved: :mod:`.csv_rows`; multi-label
manifests (a column per finding, or one column listing the findings): :mod:`.csv_labels`.
"""

from __future__ import annotations

import argparse
import posixpath
from dataclasses import dataclass
from typing import Any

from ..storage import Location
from .base import DEFAULT_RULES, Discovery, ReadRules, Reject, SourceItem
from .csv_labels import BLANK_CHOICES, MultiLabelColumns
from .csv_rows import parse_manifest, resolve_labels
from .files import FileSource, KeyAllocator
from .scan import FoundFile, check_file, list_remote, relative_under

__all__ = ["CONSUMED_COLUMNS", "CsvSource"]

CONSUMED_COLUMNS = ("path", "label", "patient_id")


@dataclass(frozen=True)
class CsvSource(FileSource):
    """SRC is the manifest file itself (local or any fsspec URL)."""

    name = "csv"
    classes: tuple[str, ...] | None = None
    encoding: str = "utf-8"
    multi_label: MultiLabelColumns | None = None  # findings per row instead of one class label

    @classmethod
    def add_cli_options(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--classes", help="csv: class names in label order, e.g. normal,pneumonia")
        group.add_argument("--encoding", default="utf-8", help="csv: the manifest's text encoding")
        group.add_argument(
            "--label-columns",
            help="csv, multi-label: one column per finding, e.g. Atelectasis,Edema; cells 1, 0, -1 or blank",
        )
        group.add_argument(
            "--labels-column", help="csv, multi-label: the column listing each image's findings, e.g. findings"
        )
        group.add_argument("--label-separator", default="|", help="csv --labels-column: what separates findings")
        group.add_argument(
            "--blank-label",
            choices=BLANK_CHOICES,
            default="unknown",
            help="csv --label-columns: a blank cell is unknown (masked) or negative (CheXpert / MIMIC-CXR tables)",
        )

    @classmethod
    def cli_fields(cls, args: argparse.Namespace) -> dict[str, Any]:
        classes = tuple(c.strip() for c in args.classes.split(",")) if args.classes else None
        multi = None
        if args.label_columns or args.labels_column:
            columns = tuple(c.strip() for c in (args.label_columns or "").split(",") if c.strip())
            multi = MultiLabelColumns(
                columns,
                args.labels_column,
                args.label_separator,
                args.blank_label,
                getattr(args, "uncertain", "ignore"),
            )
        fields = {"classes": classes, "encoding": args.encoding, "multi_label": multi}
        return {**super().cli_fields(args), **fields}

    def discover(self, src: Location, rules: ReadRules = DEFAULT_RULES) -> Discovery:
        if not src.isfile():
            raise ValueError(f"{src.display()} is not a file: for the csv format SRC is the manifest, e.g. data.csv")
        where = src.display()
        multi = self.multi_label
        required = multi.required if multi else ("path", "label")
        _header, rows = parse_manifest(src.read_path(src.root), self.encoding, where, required)
        labels: dict[int, Any]
        if multi is None:
            class_names, labels = resolve_labels(rows, self.classes, where)
        else:
            try:
                class_names, labels = multi.resolve(rows, self.classes)
            except ValueError as error:
                raise ValueError(f"{where}: {error}") from None
        consumed = (*CONSUMED_COLUMNS, *(multi.required if multi else ()))
        if not class_names:
            raise ValueError(f"{where}: no usable labels; pass --classes to name the classes")
        base = posixpath.dirname(src.root)
        files = _FileLookup(src, base, rules)
        first_line: dict[str, int] = {}
        keys = KeyAllocator()
        items, rejects = [], []
        for row in rows:
            path = row.cells.get("path", "").strip()
            source = path or f"{where}:{row.line}"
            label = labels.get(row.line)
            full = _resolve(base, path, src.is_local) if path else None
            usable = label is not None and not isinstance(label, str)
            found = files(full) if full and row.problem is None and usable else None
            if row.problem is not None:
                rejects.append(Reject(source, row.problem))
            elif not path:
                rejects.append(Reject(source, f"line {row.line}: empty path"))
            elif isinstance(label, str):
                rejects.append(Reject(source, label))
            elif full is None:
                rejects.append(Reject(source, f"line {row.line}: {_outside(path)}"))
            elif not isinstance(found, FoundFile):
                rejects.append(Reject(source, f"line {row.line}: {found}"))
            elif full in first_line:
                rejects.append(Reject(source, f"line {row.line}: duplicate of line {first_line[full]}"))
            else:
                first_line[full] = row.line
                columns = {k: v for k, v in row.cells.items() if k not in consumed}
                meta: dict[str, Any] = {"columns": columns} if columns else {}
                key = keys(path, *posixpath.splitext(path.lstrip("/"))[0].split("/"))
                patient = row.cells.get("patient_id", "").strip() or None
                fields = (path, full, patient, None, meta, found.size, found.stamp)
                if isinstance(label, int):
                    items.append(SourceItem(key, label, *fields))
                else:
                    items.append(SourceItem(key, -1, *fields, findings=label))
        found = "the label column" if multi is None and not self.classes else ""  # not declared: checked, listed
        task = "multi_class" if multi is None else "multi_label"
        return Discovery(class_names, items, rejects, task=task, classes_from=found)


def _resolve(base: str, path: str, local: bool) -> str | None:
    """The file a row names. Locally any path the user can read (the manifest is theirs, as is the disk); on object
    storage only below the manifest's own folder, so a manifest cannot make the conversion read another prefix or
    bucket with the user's credentials (``None`` then)."""
    if local:
        return posixpath.normpath(path if path.startswith("/") else posixpath.join(base, path))
    if path.startswith("/") or "://" in path:
        return None
    return relative_under(base, path)


def _outside(path: str) -> str:
    kind = (
        "an absolute path or URL" if path.startswith("/") or "://" in path else "a path outside the manifest's folder"
    )
    return (
        f"{kind} in a manifest on object storage: not read (it could reach another prefix or bucket); give paths "
        "below the manifest's folder, without '..' leading out of it"
    )


class _FileLookup:
    """Classifies referenced files: one ``stat`` each locally, one listing of the manifest's folder remotely."""

    def __init__(self, src: Location, base: str, rules: ReadRules) -> None:
        self._src, self._base, self._rules = src, base, rules
        self._listing: dict[str, FoundFile | str] | None = None

    def __call__(self, full: str) -> FoundFile | str:
        if self._src.is_local or not full.startswith(self._base.rstrip("/") + "/"):
            return check_file(self._src, full, self._rules)
        if self._listing is None:
            self._listing = self._src.retrying(lambda: list_remote(self._src.fs, self._base, self._rules), self._base)
        return self._listing.get(full, "referenced file is missing")
