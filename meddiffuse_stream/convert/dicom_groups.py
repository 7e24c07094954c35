"""Enhanced multi-frame DICOM (Enhanced CT / MR / XA, ...) keeps each frame's rescale and window in functional
groups, not at the top level: ``PerFrameFunctionalGroupsSequence[i]`` for frame ``i``, else
``SharedFunctionalGroupsSequence[0]`` for every frame. A frame's settings are gathered into a small flat data set
that the grey path reads like a single-frame file, and what was used is recorded (``functional_groups``)."""

from __future__ import annotations

from typing import Any

__all__ = ["frame_view"]

# the top-level elements the grey path reads, copied into each frame's view
_TOP_LEVEL = (
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "PhotometricInterpretation",
    "RescaleSlope",
    "RescaleIntercept",
    "RescaleType",
    "ModalityLUTSequence",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "VOILUTSequence",
)
# functional group macro -> the elements it carries
_MACROS = {
    "PixelValueTransformationSequence": ("RescaleSlope", "RescaleIntercept", "RescaleType"),
    "FrameVOILUTSequence": ("WindowCenter", "WindowWidth", "VOILUTFunction", "VOILUTSequence"),
}


def frame_view(ds: Any, index: int | None) -> tuple[Any, str | None]:
    """``(view, source)``: the data set frame ``index`` is read with — ``ds`` itself when it has no functional
    groups, else a flat copy whose rescale and window come from the per-frame group (``source`` "per-frame") or
    the shared one ("shared"), which replace the top-level elements of the same macro."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    shared = ds.get("SharedFunctionalGroupsSequence")
    if not per_frame and not shared:
        return ds, None
    from pydicom.dataset import Dataset

    view = Dataset()
    for keyword in _TOP_LEVEL:
        if keyword in ds:
            view[keyword] = ds[keyword]
    used: set[str] = set()
    groups = [("shared", shared[0] if shared else None)]
    if per_frame and index is not None and index < len(per_frame):
        groups.append(("per-frame", per_frame[index]))
    elif per_frame and index is None and len(per_frame) == 1:
        groups.append(("per-frame", per_frame[0]))
    for source, group in groups:  # the per-frame group last: it wins over the shared one
        if group is None:
            continue
        for macro, keywords in _MACROS.items():
            items = group.get(macro)
            if not items:
                continue
            for keyword in keywords:
                if keyword in view:
                    del view[keyword]
                if keyword in items[0]:
                    view[keyword] = items[0][keyword]
            used.add(source)
    applied = "per-frame" if "per-frame" in used else "shared" if used else None
    return view, applied
