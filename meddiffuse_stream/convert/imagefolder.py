"""``SRC/<class name>/**/<image>``: the class is the top folder, the patient optionally parsed from the name."""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

from ..storage import Location
from .base import Discovery, Reject, SourceItem
from .files import FileSource, KeyAllocator, list_inputs

__all__ = ["ImageFolderSource", "patient_from_name"]


def patient_from_name(pattern: str | None, path: str) -> str | None:
    """The patient id matched by ``pattern`` (group ``patient`` or group 1) in ``path``'s file name."""
    if not pattern:
        return None
    match = re.search(pattern, posixpath.basename(path))
    if match is None:
        raise ValueError(f"--patient-regex {pattern!r} does not match the file name")
    return match.groupdict().get("patient") or (match.group(1) if match.groups() else match.group(0))


@dataclass(frozen=True)
class ImageFolderSource(FileSource):
    """Class-named folders. Without ``patient_regex`` every image counts as its own patient."""

    name = "imagefolder"
    patient_regex: str | None = None

    def discover(self, src: Location) -> Discovery:
        files = list_inputs(src)
        nested = {p: s for p, s in files.items() if "/" in p}
        class_names = sorted({p.split("/", 1)[0] for p in nested})
        if not class_names:
            raise ValueError(
                f"{src.display()}: no class folders found; expected SRC/<class name>/<image>, e.g. SRC/pneumonia/1.png"
            )
        index = {name: i for i, name in enumerate(class_names)}
        keys = KeyAllocator()
        items, rejects = [], []
        for path, size in nested.items():
            class_name = path.split("/", 1)[0]
            try:
                patient = patient_from_name(self.patient_regex, path)
            except ValueError as error:
                rejects.append(Reject(path, str(error)))
                continue
            stem = posixpath.splitext(path)[0]
            key = keys(path, *stem.split("/"))
            items.append(SourceItem(key, index[class_name], path, src.path(path), patient_id=patient, size_hint=size))
        return Discovery(class_names, items, rejects)
