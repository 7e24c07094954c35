"""The k8s/ overlays as Kubernetes sees them: rendered objects, their pods, and each container's environment."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
OVERLAYS = ("cpu-smoke", "gpu", "gpu-indexed")
_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def kubectl() -> str | None:
    return shutil.which("kubectl")


@cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    """``kubectl kustomize k8s/overlays/OVERLAY``, parsed."""
    binary = kubectl()
    if binary is None:
        raise RuntimeError("kubectl is not installed")
    result = subprocess.run(
        [binary, "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=60
    )
    if result.returncode != 0:
        raise AssertionError(f"kubectl kustomize k8s/overlays/{overlay} failed:\n{result.stderr}")
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


@dataclass(frozen=True)
class PodSpec:
    """One kind of pod a workload creates: ``count`` of them, told apart by index (or operator rank)."""

    workload: dict[str, Any]
    role: str | None  # PyTorchJob replica type, else None
    template: dict[str, Any]
    count: int

    @property
    def name(self) -> str:
        suffix = f"/{self.role}" if self.role else ""
        return f"{self.workload['kind']} {self.workload['metadata']['name']}{suffix}"

    @property
    def indexed(self) -> bool:
        return self.workload["kind"] == "Job" and self.workload["spec"].get("completionMode") == "Indexed"

    @property
    def containers(self) -> list[dict[str, Any]]:
        return self.template["spec"]["containers"]


def pod_specs(objects: tuple[dict[str, Any], ...]) -> Iterator[PodSpec]:
    for obj in objects:
        if obj["kind"] == "Job":
            yield PodSpec(obj, None, obj["spec"]["template"], int(obj["spec"].get("completions", 1)))
        elif obj["kind"] == "PyTorchJob":
            for role, replica in obj["spec"]["pytorchReplicaSpecs"].items():
                yield PodSpec(obj, role, replica["template"], int(replica.get("replicas", 1)))


def by_name(objects: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    for obj in objects:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    raise KeyError(f"no {kind} {name} in the rendered objects")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: defined names are replaced, others left as written, ``$$`` is ``$``."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _REFERENCE.sub(substitute, text)


def references(text: str) -> set[str]:
    return {m.group(1) for m in _REFERENCE.finditer(text) if m.group(1)}


def container_env(
    container: dict[str, Any],
    objects: tuple[dict[str, Any], ...],
    secrets: Mapping[str, Mapping[str, str]],
    injected: Mapping[str, str],
) -> dict[str, str]:
    """The environment the kubelet would give ``container``: envFrom, env in order, then what the Job controller or
    the training operator appends (``injected``)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(by_name(objects, "ConfigMap", source["configMapRef"]["name"]).get("data", {}))
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = expand(str(entry["value"]), env)
        elif "secretKeyRef" in entry.get("valueFrom", {}):
            ref = entry["valueFrom"]["secretKeyRef"]
            env[entry["name"]] = secrets[ref["name"]][ref["key"]]
        else:
            raise AssertionError(f"env {entry['name']}: only value and secretKeyRef are emulated")
    env.update(injected)
    return env


def dockerfile_env() -> dict[str, str]:
    """The ``ENV`` settings of the Dockerfile (what every container starts with)."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            for pair in line[4:].split():
                name, _, value = pair.partition("=")
                env[name] = value
    return env
