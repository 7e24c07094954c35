"""A CSV manifest's text as rows with their true line numbers, and its labels as class indices.

Every problem that belongs to one row — bytes that are not valid in the manifest's encoding, a cell over the size
limit, too many fields, a blank or unknown label — rejects that row with its line number; only problems of the whole
manifest (no header, a duplicated column, labels that mix names and integers) stop the conversion.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

__all__ = [
    "MAX_CELL_CHARS",
    "ManifestRow",
    "integer_label_bound",
    "parse_manifest",
    "resolve_labels",
]

MAX_CELL_CHARS = 65_536  # a longer cell is a broken row (an unclosed quote swallowing the file), not data
_INTEGER = re.compile(r"[0-9]+")
_NEGATIVE = re.compile(r"-[0-9]+")
_SURROGATE = re.compile("[\udc00-\udcff]")  # undecodable bytes (surrogateescape) and NULs: one C-speed search


@dataclass
class ManifestRow:
    """One record: the line it starts on, its cells by column name, and why it is unusable (``None`` if fine)."""

    line: int
    cells: dict[str, str] = field(default_factory=dict)
    problem: str | None = None


def parse_manifest(
    raw: bytes, encoding: str, where: str, required: Sequence[str] = ("path", "label")
) -> tuple[list[str], list[ManifestRow]]:
    """Header and rows of a CSV manifest (or of a dataset's label table, whose ``required`` columns differ).
    Undecodable bytes never abort the run: they reject their row."""
    try:
        codecs.lookup(encoding)
    except LookupError as error:
        raise ValueError(f"--encoding {encoding!r} is not an encoding Python knows (e.g. utf-8, latin-1)") from error
    text = raw.decode(encoding, errors="surrogateescape").removeprefix("\ufeff").replace("\x00", "\udc00")
    records = _records(text)
    first = next(records, None)
    if first is None:
        raise ValueError(f"{where} is empty: a manifest needs a header line, e.g. path,label")
    header = _header(first[1], where, required)
    clean = _SURROGATE.search(text) is None  # then no cell needs its own search (a 223k-row table: 3x faster)
    rows = []
    for line, fields in records:
        if clean and len(fields) == len(header) and max(map(len, fields)) <= MAX_CELL_CHARS:
            rows.append(ManifestRow(line, dict(zip(header, fields, strict=True))))
        else:
            rows.append(_row(line, fields, header, encoding))
    return header, rows


def _records(text: str) -> Iterator[tuple[int, list[str]]]:
    """``(first line, fields)`` per record; blank lines are skipped but counted, quoted newlines kept."""
    with _field_limit(len(text) + 1):
        reader = csv.reader(io.StringIO(text, newline=""))
        previous_end = 0
        for fields in reader:
            start, previous_end = previous_end + 1, reader.line_num
            if fields and (fields[0].strip() or any(f.strip() for f in fields)):
                yield start, fields


@contextlib.contextmanager
def _field_limit(limit: int) -> Iterator[None]:
    """The csv module's field limit is process-wide; raised while parsing (cells are checked one by one)."""
    previous = csv.field_size_limit()
    csv.field_size_limit(max(previous, limit))
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def _header(fields: list[str], where: str, required: Sequence[str]) -> list[str]:
    names = [name.strip() or f"Unnamed: {i}" for i, name in enumerate(fields)]
    for name in names:
        if any(0xDC00 <= ord(ch) <= 0xDCFF for ch in name):
            raise ValueError(f"{where}: the header is not valid in the manifest's encoding; pass --encoding")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{where}: column {name!r} appears twice in the header; rename one of them")
        seen.add(name)
    missing = [c for c in required if c not in seen]
    if missing:
        raise ValueError(f"{where}: header lacks column(s) {missing}; expected {','.join(required)}[,...]")
    return names


def _row(line: int, fields: list[str], header: list[str], encoding: str) -> ManifestRow:
    row = ManifestRow(line)
    if len(fields) > len(header):
        row.problem = f"line {line}: {len(fields)} fields, but the header has {len(header)} columns"
        return row
    for name, value in zip(header, fields, strict=False):
        if len(value) > MAX_CELL_CHARS:
            row.problem = (
                f"line {line}: column {name!r} holds {len(value)} characters, over the limit of "
                f"{MAX_CELL_CHARS} (an unclosed quote?)"
            )
            return row
        bad = _SURROGATE.search(value)
        if bad is not None:
            byte = ord(bad.group()) - 0xDC00
            row.problem = (
                f"line {line}: a NUL byte in column {name!r}"
                if byte == 0
                else f"line {line}: byte 0x{byte:02x} in column {name!r} is not valid {encoding}; pass --encoding with "
                "the manifest's encoding (e.g. --encoding latin-1)"
            )
            return row
        row.cells[name] = value
    for name in header[len(fields) :]:
        row.cells[name] = ""
    return row


def integer_label_bound(distinct: int) -> int:
    """The largest integer label taken without ``--classes``: ``max(15, 2 × distinct labels − 1)``. A label above
    it is far more likely a typo (``1000000`` for ``1``) than a class of its own; its row is rejected."""
    return max(15, 2 * distinct - 1)


def resolve_labels(
    rows: Sequence[ManifestRow], classes: Sequence[str] | None, where: str
) -> tuple[list[str], dict[int, int | str]]:
    """Class names, and per line the class index or the reason the row is rejected.

    With ``classes``: a label is one of the names or an integer index below their count. Without: all labels are
    names (classes sorted by name) or all are integers ``0..N`` (see :func:`integer_label_bound`); a mix is refused.
    """
    labels = {row.line: row.cells.get("label", "").strip() for row in rows if row.problem is None}
    result: dict[int, int | str] = {}
    for line, text in labels.items():
        if not text:
            result[line] = f"line {line}: blank label"
    pending = {line: text for line, text in labels.items() if line not in result}
    if classes:
        names = list(classes)
        index = {name: i for i, name in enumerate(names)}
        for line, text in pending.items():
            if text in index:
                result[line] = index[text]
            elif _INTEGER.fullmatch(text) and int(text) < len(names):
                result[line] = int(text)
            else:
                result[line] = f"line {line}: label {text!r} is not one of {names} nor an index below {len(names)}"
        return names, result
    integers = {line: text for line, text in pending.items() if _INTEGER.fullmatch(text) or _NEGATIVE.fullmatch(text)}
    named = {line: text for line, text in pending.items() if line not in integers}
    if integers and named:
        name_line, name = next(iter(named.items()))
        int_line, number = next(iter(integers.items()))
        raise ValueError(
            f"{where}: labels mix class names ({name!r} on line {name_line}) and integers ({number!r} on line "
            f"{int_line}); pass --classes with every class name in label order, e.g. --classes normal,pneumonia"
        )
    if named:
        names = sorted(set(named.values()))
        index = {name: i for i, name in enumerate(names)}
        result.update({line: index[text] for line, text in named.items()})
        return names, result
    values = {line: int(text) for line, text in integers.items()}
    bound = integer_label_bound(len({v for v in values.values() if v >= 0}))
    for line, value in values.items():
        if value < 0:
            result[line] = f"line {line}: label {value} is negative"
        elif value > bound:
            result[line] = (
                f"line {line}: label {value} is far above the other labels (more than {bound}); a typo? "
                "pass --classes to declare that many classes"
            )
        else:
            result[line] = value
    kept = [v for v in result.values() if isinstance(v, int)]
    return [str(i) for i in range(max(kept) + 1)] if kept else [], result
