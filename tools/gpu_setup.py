"""Set-up for ``make gpu-check`` on a bare GPU machine: a CUDA build of torch, then what the project needs besides.

torch: an interpreter that already holds a CUDA build (``$GPU_PYTHON``, this one, ``python3``) is used as it is —
GPU images ship torch built for their driver, and the project asks only for ``torch>=2.4``. Without one, torch
comes from the registry (PyPI's Linux wheels are CUDA builds; ``TORCH_INDEX=`` names another index, such as
https://download.pytorch.org/whl/cu128), and a CPU build is refused.

The rest (``pyproject.toml``: the base requirements, the extras ``torch``, ``augment`` and ``demo``, and the test
runner) is resolved by that interpreter's pip against what it already has (``pip install --dry-run --report``);
only what it lacks is installed, with ``--target .gpu/site`` (put first on ``PYTHONPATH``), so the interpreter's
own packages are never changed. A machine without a registry gets wheels carried in ``.whl`` (``make gpu-wheels``
makes them here): then nothing is fetched (``--no-index --find-links .whl``). Standard library only: it runs
before anything is installed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["SetupError", "Toolchain", "prepare", "probe", "requirements"]

EXTRAS = ("torch", "augment", "demo")
TEST_RUNNER = ("pytest", "pytest-timeout")
PROBE = """
import json, platform, sys
info = {"python": sys.executable, "python_version": platform.python_version(), "torch": None}
try:
    import torch
    info.update(torch=torch.__version__, cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
    if info["cuda_available"]:
        info.update(gpu=torch.cuda.get_device_name(0), gpus=torch.cuda.device_count(),
                    cudnn=torch.backends.cudnn.version(), nccl=".".join(map(str, torch.cuda.nccl.version())))
except Exception as error:
    info["torch_error"] = f"{type(error).__name__}: {error}"
print(json.dumps(info))
"""


class SetupError(RuntimeError):
    """Set-up cannot give the check what it needs; the message says what to do."""


@dataclass
class Toolchain:
    """The interpreter the parts run under and the environment that completes it."""

    python: str
    info: dict
    pythonpath: list[str] = field(default_factory=list)
    installed: list[str] = field(default_factory=list)

    def environ(self) -> dict[str, str]:
        paths = [*self.pythonpath, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "PYTHONUNBUFFERED": "1"}


def probe(python: str, pythonpath: list[str] | None = None, timeout: float = 120) -> dict | None:
    """What ``python`` has: its torch, whether that is a CUDA build, the GPU it sees (``None`` if it cannot run)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(pythonpath or [])}
    try:
        done = subprocess.run([python, "-c", PROBE], capture_output=True, text=True, timeout=timeout, env=env)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def requirements(pyproject: Path) -> list[str]:
    """The project's requirements for the check: base, the extras in ``EXTRAS`` (self-references expanded) and
    the test runner, as written in ``pyproject.toml``."""
    try:
        import tomllib
    except ModuleNotFoundError as error:  # the project supports 3.10; this check's set-up needs 3.11+
        raise SetupError(f"gpu-check needs Python 3.11+ to read {pyproject}: set GPU_PYTHON") from error
    project = tomllib.loads(pyproject.read_text())["project"]
    name, extras = project["name"], project["optional-dependencies"]
    found: list[str] = list(project["dependencies"])

    def expand(extra: str) -> None:
        for requirement in extras[extra]:
            match = re.fullmatch(rf"{re.escape(name)}\[([^\]]+)\]", requirement.strip())
            if match:
                for inner in match.group(1).split(","):
                    expand(inner.strip())
            elif requirement not in found:
                found.append(requirement)

    for extra in EXTRAS:
        expand(extra)
    for requirement in extras["dev"]:
        if re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0] in TEST_RUNNER:
            found.append(requirement)
    return found


def _sources(wheels: Path | None, torch_index: str | None) -> list[str]:
    if wheels is not None:
        return ["--no-index", "--find-links", str(wheels)]
    return ["--extra-index-url", torch_index] if torch_index else []


def _pip(python: str, arguments: list[str], timeout: float, site: Path | None = None) -> subprocess.CompletedProcess:
    """pip of ``python``; with ``site`` on its path, so what was installed there counts as installed."""
    command = [python, "-m", "pip", "--disable-pip-version-check", *arguments]
    env = {**os.environ, "PYTHONPATH": str(site)} if site is not None else None
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as error:
        raise SetupError(f"pip took over {timeout:.0f} s: {' '.join(command)}") from error


def plan(
    python: str,
    wanted: list[str],
    wheels: Path | None,
    torch_index: str | None,
    *,
    site: Path | None = None,
    ignore_installed: bool = False,
    timeout: float = 180,
) -> list[str]:
    """``name==version`` of each distribution ``python`` (with ``site``) lacks for ``wanted``, as its pip resolves
    them."""
    arguments = ["install", "--dry-run", "--quiet", "--report", "-", *_sources(wheels, torch_index)]
    arguments += ["--ignore-installed"] if ignore_installed else []
    done = _pip(python, [*arguments, *wanted], timeout, site)
    if done.returncode != 0:
        where = f"the wheels in {wheels}" if wheels else "the registry"
        hint = "check the network, or carry wheels in .whl"
        if wheels:
            hint = "add what is missing to GPU_WHEELS in the Makefile, run `make gpu-wheels` here, carry .whl"
        raise SetupError(f"pip cannot resolve the project's needs from {where}: {done.stderr.strip()[-1500:]}\n{hint}")
    report = json.loads(done.stdout[done.stdout.index("{") :])
    return [f"{item['metadata']['name']}=={item['metadata']['version']}" for item in report.get("install", [])]


def install(
    python: str, pins: list[str], target: Path, wheels: Path | None, torch_index: str | None, timeout: float = 600
) -> None:
    """``pins`` into ``target``, exactly those (their needs were resolved by :func:`plan`)."""
    target.mkdir(parents=True, exist_ok=True)
    arguments = ["install", "--quiet", "--no-deps", "--no-compile", "--upgrade", "--target", str(target)]
    done = _pip(python, [*arguments, *_sources(wheels, torch_index), *pins], timeout)
    if done.returncode != 0:
        raise SetupError(f"pip could not install {' '.join(pins)} into {target}: {done.stderr.strip()[-1500:]}")


def _candidates() -> list[str]:
    found = [os.environ.get("GPU_PYTHON"), sys.executable, shutil.which("python3")]
    return list(dict.fromkeys(str(path) for path in found if path))


def _has_nvidia_gpu() -> bool:
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return listed.returncode == 0 and "GPU" in listed.stdout


def prepare(repo: Path, *, need_cuda: bool, log=print) -> Toolchain:
    """The toolchain for the check's parts; installs only what is missing (see the module docstring)."""
    site = repo / ".gpu" / "site"
    wheels = repo / ".whl" if (repo / ".whl").is_dir() else None
    torch_index = os.environ.get("TORCH_INDEX") or None
    probes = {python: probe(python) for python in _candidates()}
    log(f"interpreters: {json.dumps(probes)}")
    usable = {p: i for p, i in probes.items() if i is not None}
    if not usable:
        raise SetupError(f"none of {list(probes)} runs: set GPU_PYTHON to a Python 3.11+ interpreter")
    ready = [p for p, i in usable.items() if i.get("cuda_available") or (not need_cuda and i.get("torch"))]
    python = ready[0] if ready else next(iter(usable))
    chain = Toolchain(python, usable[python], pythonpath=[str(site), str(repo)])
    log(f"using {python}: torch {chain.info.get('torch')} (CUDA {chain.info.get('cuda')}), wheels: {wheels}")
    if need_cuda and not ready:
        if not _has_nvidia_gpu():
            raise SetupError("no NVIDIA GPU here (nvidia-smi lists none): run `make gpu-check DRY_RUN=1` on a CPU")
        pins = plan(python, ["torch>=2.4"], wheels, torch_index, ignore_installed=True)
        log(f"torch from {'the wheels' if wheels else 'the registry'}: {pins}")
        install(python, pins, site, wheels, torch_index)
        chain.installed += pins
        chain.info = probe(python, chain.pythonpath) or {}
        if not chain.info.get("cuda"):
            raise SetupError(
                f"torch {chain.info.get('torch')} is a CPU build: set TORCH_INDEX to a CUDA index, "
                "e.g. TORCH_INDEX=https://download.pytorch.org/whl/cu128"
            )
        if not chain.info.get("cuda_available"):
            raise SetupError(f"torch {chain.info.get('torch')} sees no GPU: {chain.info.get('torch_error', '')}")
    pins = plan(python, requirements(repo / "pyproject.toml"), wheels, torch_index, site=site)
    if any(pin.lower().startswith("torch==") for pin in pins):  # never replace the build found: refuse instead
        raise SetupError(
            f"torch {chain.info.get('torch')} of {python} is older than pyproject.toml asks for: "
            "use an interpreter with a newer CUDA build (GPU_PYTHON=...)"
        )
    if pins:
        log(f"installing into {site}: {' '.join(pins)}")
        install(python, pins, site, wheels, torch_index)
        chain.installed += pins
    return chain
