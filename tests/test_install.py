"""The ordinary install: ``pip install <clone>`` with no extras (no torch) gives a CLI that shows its version and help
and converts a folder of PNGs; a command that needs torch says which extra to install, in one line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from builders import make_imagefolder

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

_SKIP = shutil.ignore_patterns(
    ".venv", ".git", ".demo", ".paper", ".bench", "shards", "*.egg-info", "build", "__pycache__"
)


@pytest.fixture(scope="module")
def core_install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the package installed from a copy of the source tree, core dependencies only."""
    root = tmp_path_factory.mktemp("install")
    source = root / "clone"
    shutil.copytree(REPO, source, ignore=_SKIP)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(source)],
        capture_output=True,
        text=True,
        timeout=800,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return venv


def _run(venv: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        [str(venv / "bin" / "meddiffuse-stream"), *args], capture_output=True, text=True, timeout=300, cwd=cwd, env=env
    )


def test_the_core_install_has_no_torch_and_a_working_cli(core_install: Path, tmp_path: Path) -> None:
    probe = subprocess.run(
        [str(core_install / "bin" / "python"), "-c", "import importlib.util as u; print(u.find_spec('torch'))"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.stdout.strip() == "None", "the core install must not pull torch"
    version = _run(core_install, "--version")
    assert version.returncode == 0 and version.stdout.startswith("meddiffuse-stream "), version.stderr
    assert _run(core_install, "shard", "--help").returncode == 0
    source = make_imagefolder(tmp_path / "in", {"normal": 6, "pneumonia": 6}, size=16)
    converted = _run(core_install, "shard", "imagefolder", str(source), str(tmp_path / "out"), "--quiet")
    assert converted.returncode == 0, converted.stderr
    assert "converted 12" in converted.stdout and (tmp_path / "out" / "dataset.json").exists()


def test_a_command_that_needs_torch_names_the_extra(core_install: Path, tmp_path: Path) -> None:
    result = _run(core_install, "train", str(tmp_path), "--out", str(tmp_path / "run"))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "needs torch" in result.stderr and ".[torch]" in result.stderr
