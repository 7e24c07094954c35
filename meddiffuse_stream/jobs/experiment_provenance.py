"""What an experiment's results came from, written beside them so a table can be checked against its inputs.

``provenance.json``: the commit (and whether the work tree had changes), the experiment file and its parsed
settings, every method as it ran, the dataset, teacher and generator by content hash, the library versions, the
machine's cores, and the wall time of the run that wrote the report (with how many cells it trained then).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

__all__ = ["file_digest", "git_state", "write_provenance"]


def file_digest(path: str | Path | None) -> str | None:
    """sha256 (16 hex) of a local file; None for None or a path that is not a file."""
    if not path or not Path(path).is_file():
        return None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def git_state(where: str | Path = ".") -> dict[str, Any]:
    """The commit checked out at ``where`` and whether tracked files differ from it (None outside a git tree)."""

    def run(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=where, capture_output=True, text=True, timeout=30, check=True)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    commit = run("rev-parse", "HEAD")
    changed = run("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if changed is None else bool(changed)}


def write_provenance(
    out: Path, config_path: str | Path, config: Any, methods: list[dict[str, Any]], extra: dict[str, Any]
) -> Path:
    """Write ``out/provenance.json``; ``extra`` holds the run's own facts (wall time, cells, generator id)."""
    import torch

    from .._version import __version__

    document = {
        "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git": git_state(Path(__file__).resolve().parent),  # the code that ran (an editable install's checkout)
        "experiment_file": {"path": str(config_path), "sha256": file_digest(config_path)},
        "settings": {
            name: getattr(config, name)
            for name in ("dataset", "seeds", "fractions", "epochs", "steps", "batch_size", "lr", "model", "loss")
        },
        "methods": methods,
        "inputs": {
            "dataset_json": file_digest(Path(config.dataset) / "dataset.json"),
            "teacher": {"path": config.teacher, "model": config.teacher_model, "sha256": file_digest(config.teacher)},
            "generator": {
                "path": config.generator,
                "config_sha256": file_digest(Path(config.generator) / "meddiffuse_generator.json")
                if config.generator
                else None,
            },
        },
        "software": {
            "meddiffuse_stream": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "machine": {"cores": len(os.sched_getaffinity(0)), "platform": platform.platform()},
        **extra,
    }
    path = out / "provenance.json"
    path.write_text(json.dumps(document, indent=1, default=str) + "\n")
    return path
