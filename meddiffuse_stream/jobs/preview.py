"""Preview pictures: per sample, original | saliency overlay | diffusion variant | mixing weight W | result, with
the label and the ROI outline, so a clinician can judge by eye whether the evidence survived."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["COLUMNS", "render_preview"]

COLUMNS = ("original", "saliency", "variant", "weight W", "result")


def _grey(image: torch.Tensor) -> np.ndarray:
    array = image.detach().cpu().float().numpy()
    return array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)


def render_preview(batch: dict[str, Any], class_names: list[str], out: str | Path, method: str) -> Path:
    """Write the grid for an augmented ``batch`` (as the loader yields it with ``as_dict=True``)."""
    original = batch["original"]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = len(batch["image"])
    figure, axes = plt.subplots(count, len(COLUMNS), figsize=(2.0 * len(COLUMNS), 2.0 * count), squeeze=False)
    for row in range(count):
        panels: list[tuple[np.ndarray | None, dict[str, Any]]] = [(_grey(original[row]), {"cmap": "gray"})]
        base = _grey(original[row])
        saliency = batch.get("saliency")
        panels.append((None if saliency is None else _grey(saliency[row]), {"cmap": "jet", "alpha": 0.45}))
        variant = batch.get("variant")
        panels.append((None if variant is None else _grey(variant[row]), {"cmap": "gray"}))
        panels.append((_grey(batch["mix_weight"][row]), {"cmap": "magma", "vmin": 0, "vmax": 1}))
        panels.append((_grey(batch["image"][row]), {"cmap": "gray"}))
        for column, (picture, style) in enumerate(panels):
            axis = axes[row][column]
            axis.set_xticks([])
            axis.set_yticks([])
            if column == 1 and picture is not None:
                axis.imshow(base, cmap="gray", vmin=0, vmax=1)
            if picture is None:
                axis.text(0.5, 0.5, "n/a", ha="center", va="center", transform=axis.transAxes)
            else:
                axis.imshow(picture, **({"vmin": 0, "vmax": 1} | style))
            if "roi" in batch and column in (0, 4) and batch["roi"][row].any():
                axis.contour(_grey(batch["roi"][row]), levels=[0.5], colors="lime", linewidths=0.8)
            if row == 0:
                axis.set_title(COLUMNS[column], fontsize=9)
        label = int(batch["label"][row])
        axes[row][0].set_ylabel(f"{class_names[label]}\n{batch['key'][row][-12:]}", fontsize=7)
    figure.suptitle(f"augment = {method}   (green: ROI outline)", fontsize=10)
    figure.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=80)
    plt.close(figure)
    return out
