"""``make gpu-check``: its dry run (the same script on the CPU at tiny sizes) passes, so the GPU run cannot rot;
its set-up installs what an interpreter lacks from carried wheels alone, as on a machine without a registry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

from gpu_setup import SetupError, install, plan, probe, requirements  # noqa: E402

PARTS = ("tests", "stage", "train_step", "torchrun")


@pytest.mark.slow
def test_the_dry_run_of_make_gpu_check_passes_every_part(tmp_path):
    out = tmp_path / "gpu.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}  # not the outer make's jobserver
    command = ["make", "-s", "gpu-check", "DRY_RUN=1", f"GPU_CHECK_ARGS=--out {out} --work {tmp_path / 'work'}"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["dry_run"] and report["setup"]["status"] == "ok" and report["machine"]["torch"]
    assert {name: part["status"] for name, part in report["parts"].items()} == dict.fromkeys(PARTS, "ok")
    parts = {name: part["results"] for name, part in report["parts"].items()}
    tests = parts["tests"]
    assert tests["skipped"] == len(tests["tests"]) >= 8 and tests["failed"] == tests["errors"] == 0
    [stage] = parts["stage"].values()
    for figure in ("ratio_batched_vs_per_sample", "ratio_warm_vs_cold", "ratio_meddiffusemix_vs_none"):
        assert stage[figure] > 0, figure
    [step] = parts["train_step"].values()
    assert step["compute_only_step_ms"] > 0 and step["meddiffusemix"]["generator_calls"] == 0
    for name in ("none", "standard", "meddiffusemix"):
        assert step[name]["step_ms"] > 0 and 0 <= step[name]["loader_wait_fraction"] <= 1, name
    smoke = parts["torchrun"]
    assert smoke["first_run"]["killed"] and 0 < smoke["killed_at_step"] < smoke["expected_steps"]
    assert smoke["steps"] == smoke["expected_steps"] and smoke["distributed"]["backend"] == "gloo"
    assert "part torchrun: ok" in out.with_suffix(".log").read_text()


def _wheel(folder: Path, name: str, version: str) -> Path:
    """A minimal pure-Python wheel of module ``name`` (a stand-in for a carried wheel)."""
    info = f"{name}-{version}.dist-info"
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name}/__init__.py", f"VERSION = {version!r}\n")
        archive.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        wheel = "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        archive.writestr(f"{info}/WHEEL", wheel)
        archive.writestr(f"{info}/RECORD", "")
    return path


def test_set_up_installs_only_what_is_missing_from_carried_wheels(tmp_path):
    wheels, site = tmp_path / "whl", tmp_path / "site"
    wheels.mkdir()
    _wheel(wheels, "mds_carried_probe", "1.2")
    wanted = ["numpy>=1.26", "mds-carried-probe>=1.0"]  # numpy is installed: only the probe is planned
    pins = plan(sys.executable, wanted, wheels, None, site=site)
    assert [pin.lower().replace("_", "-") for pin in pins] == ["mds-carried-probe==1.2"]
    install(sys.executable, pins, site, wheels, None)
    check = subprocess.run(
        [sys.executable, "-c", "import mds_carried_probe as m; print(m.VERSION)"],
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
    )
    assert check.stdout.strip() == "1.2", check.stderr
    assert plan(sys.executable, wanted, wheels, None, site=site) == [], "what was installed counts as installed"


def test_set_up_names_what_the_carried_wheels_lack(tmp_path):
    (tmp_path / "whl").mkdir()
    with pytest.raises(SetupError, match=r"(?s)mds-not-carried.*GPU_WHEELS"):
        plan(sys.executable, ["mds-not-carried>=1"], tmp_path / "whl", None)


def test_set_up_reads_the_project_requirements_and_probes_torch():
    wanted = requirements(REPO / "pyproject.toml")
    names = {requirement.split(">")[0].split("=")[0] for requirement in wanted}
    assert {"torch", "torchdata", "captum", "diffusers", "pydicom-data", "pytest", "pytest-timeout"} <= names
    assert not any(name.startswith("meddiffuse-stream") for name in names), "self-references are expanded"
    info = probe(sys.executable)
    assert info is not None and info["torch"] and info["cuda_available"] in (True, False)
