"""``SRC/<class name>/**/<image>``: the class is the top folder; the patient is the folder below it
(``<class>/<patient>/<image>``), or parsed from the file name with ``--patient-regex``.

An image lying directly in its class folder has no patient anyone can know: it is split as a patient of its own,
and the conversion says so on stderr and in the summary, since two images of one patient may then land in two
splits (the leak a medical split must not have).
"""

from __future__ import annotations

import argparse
import posixpath
import re
from dataclasses import dataclass
from typing import Any

from ..storage import Location
from .base import DEFAULT_RULES, Discovery, ReadRules, Reject, SourceItem
from .files import FileSource, KeyAllocator
from .scan import scan_files, scan_notes

__all__ = ["ImageFolderSource", "patient_from_name"]


def patient_from_name(pattern: str | None, path: str) -> str | None:
    """The patient id matched by ``pattern`` (group ``patient`` or group 1) in ``path``'s file name."""
    if not pattern:
        return None
    match = re.search(pattern, posixpath.basename(path))
    if match is None:
        raise ValueError(f"--patient-regex {pattern!r} does not match the file name")
    return match.groupdict().get("patient") or (match.group(1) if match.groups() else match.group(0))


def patient_folder(path: str) -> str | None:
    """``<class>/<patient>/…/<image>`` → ``<patient>`` (the same patient under two classes is one patient)."""
    parts = path.split("/")
    return parts[1] if len(parts) >= 3 else None


def _unknown_patients(items: list[SourceItem]) -> list[str]:
    unknown = [item.source for item in items if item.patient_id is None]
    if not unknown:
        return []
    return [
        f"{len(unknown)} of {len(items)} images (e.g. {unknown[0]}) lie directly in their class folder, so no patient "
        "is known: each is split as a patient of its own, and images of one patient may land in different splits; "
        "put them in <class>/<patient>/ folders or pass --patient-regex"
    ]


@dataclass(frozen=True)
class ImageFolderSource(FileSource):
    """Class-named folders; the patient from ``patient_regex``, else from the folder below the class folder."""

    name = "imagefolder"
    patient_regex: str | None = None

    @classmethod
    def add_cli_options(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--patient-regex", help="imagefolder: regex whose group 'patient' (or 1) is the patient id")

    @classmethod
    def cli_fields(cls, args: argparse.Namespace) -> dict[str, Any]:
        return {**super().cli_fields(args), "patient_regex": args.patient_regex}

    def discover(self, src: Location, rules: ReadRules = DEFAULT_RULES) -> Discovery:
        scan = scan_files(src, "", rules)
        nested = {p: f for p, f in scan.files.items() if "/" in p}
        refused = {p: reason for p, reason in scan.refused.items() if "/" in p}
        class_names = sorted({p.split("/", 1)[0] for p in (*nested, *refused)})
        if not class_names:
            raise ValueError(
                f"{src.display()}: no class folders found; expected SRC/<class name>/<image>, e.g. SRC/pneumonia/1.png"
            )
        index = {name: i for i, name in enumerate(class_names)}
        keys = KeyAllocator()
        items = []
        rejects = [Reject(path, reason) for path, reason in sorted(refused.items())]
        for path, found in nested.items():
            class_name = path.split("/", 1)[0]
            try:
                patient = patient_from_name(self.patient_regex, path) or patient_folder(path)
            except ValueError as error:
                rejects.append(Reject(path, str(error)))
                continue
            stem = posixpath.splitext(path)[0]
            key = keys(path, *stem.split("/"))
            items.append(
                SourceItem(
                    key,
                    index[class_name],
                    path,
                    src.path(path),
                    patient_id=patient,
                    size_hint=found.size,
                    stamp=found.stamp,
                )
            )
        return Discovery(
            class_names,
            items,
            rejects,
            notes=scan_notes(scan),
            warnings=_unknown_patients(items),
            classes_from="the folder names",
        )
