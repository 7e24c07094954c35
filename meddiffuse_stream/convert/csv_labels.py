"""Multi-label rows of a CSV manifest: one column per finding (``--label-columns``), or one column listing the
positive findings (``--labels-column NAME --label-separator "|"``). Each row gets its finding vector (1 / 0 / -1
unknown) or the reason it is rejected, naming its line and column."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .csv_rows import ManifestRow
from .label_tables import UNCERTAIN_POLICIES, finding_value

__all__ = ["BLANK_CHOICES", "NO_FINDING", "MultiLabelColumns"]

BLANK_CHOICES = ("unknown", "negative")
NO_FINDING = "No Finding"  # in a --labels-column cell, alone: every finding negative (unless --classes names it)


@dataclass(frozen=True)
class MultiLabelColumns:
    """How a manifest holds its findings; exactly one of ``columns`` and ``names_column`` is set."""

    columns: tuple[str, ...] = ()
    names_column: str | None = None
    separator: str = "|"
    blank: str = "unknown"  # a blank --label-columns cell: unknown (masked) or negative (CheXpert, MIMIC-CXR)
    uncertain: str = "ignore"  # -1: unknown (masked), positive or negative

    def __post_init__(self) -> None:
        if bool(self.columns) == bool(self.names_column):
            raise ValueError("give either --label-columns A,B,... or --labels-column NAME, not both")
        if len(set(self.columns)) != len(self.columns):
            raise ValueError(f"--label-columns names a column twice: {list(self.columns)}")
        if self.blank not in BLANK_CHOICES:
            raise ValueError(f"--blank-label must be one of {', '.join(BLANK_CHOICES)}, got {self.blank!r}")
        if self.uncertain not in UNCERTAIN_POLICIES:
            raise ValueError(f"--uncertain must be one of {', '.join(UNCERTAIN_POLICIES)}, got {self.uncertain!r}")
        if self.names_column is not None and not self.separator:
            raise ValueError("--label-separator must not be empty")

    @property
    def required(self) -> tuple[str, ...]:
        """The columns the header must have."""
        return ("path", *self.columns) if self.columns else ("path", str(self.names_column))

    def resolve(
        self, rows: Sequence[ManifestRow], classes: Sequence[str] | None
    ) -> tuple[list[str], dict[int, tuple[int, ...] | str]]:
        """Class names in a fixed order, and per line the findings or the reason the row is rejected."""
        usable = [row for row in rows if row.problem is None]
        if self.columns:
            if classes:
                raise ValueError("--classes and --label-columns do not go together: the columns are the classes")
            return list(self.columns), {row.line: self._from_columns(row) for row in usable}
        cells = {row.line: self._names(row) for row in usable}
        names = list(classes) if classes else sorted({n for c in cells.values() for n in c} - {NO_FINDING})
        if not names:
            raise ValueError(f"column {self.names_column!r} names no finding in any row; pass --classes")
        return names, {line: self._from_names(line, found, names) for line, found in cells.items()}

    def _from_columns(self, row: ManifestRow) -> tuple[int, ...] | str:
        blank = -1 if self.blank == "unknown" else 0
        vector = []
        for column in self.columns:
            try:
                vector.append(finding_value(row.cells.get(column, ""), blank=blank, uncertain=self.uncertain))
            except ValueError as error:
                return f"line {row.line}: column {column!r}: {error}"
        return tuple(vector)

    def _names(self, row: ManifestRow) -> list[str]:
        text = row.cells.get(str(self.names_column), "")
        return [name.strip() for name in text.split(self.separator) if name.strip()]

    def _from_names(self, line: int, found: list[str], names: list[str]) -> tuple[int, ...] | str:
        where = f"line {line}: column {self.names_column!r}"
        if not found:  # a missing label is not the same as no finding: say which one it is
            return f"{where}: blank; list the findings, or write {NO_FINDING!r} for an image with none"
        if NO_FINDING in found and NO_FINDING not in names:
            if len(found) > 1:
                return f"{where}: {NO_FINDING!r} together with findings {[f for f in found if f != NO_FINDING]}"
            return (0,) * len(names)
        index = {name: k for k, name in enumerate(names)}
        unknown = [name for name in found if name not in index]
        if unknown:
            return f"{where}: {unknown[0][:40]!r} is not one of --classes {names}"
        vector = [0] * len(names)
        for name in found:
            vector[index[name]] = 1
        return tuple(vector)
