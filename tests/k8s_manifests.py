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
OVERLAYS = ("cpu-smoke", "gpu", "gpu-indexed", "gpu-jobset")
LAUNCHER = K8S / "base" / "launch.py"
JOBSET_CRD = K8S / "schemas" / "jobset.x-k8s.io_jobsets.v0.12.0.yaml"
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
    role: str | None  # PyTorchJob replica type or JobSet replicated job, else None
    template: dict[str, Any]
    count: int
    job: dict[str, Any] | None = None  # the Job (spec) that runs the pods: the Job itself, or a JobSet's child Job

    @property
    def name(self) -> str:
        suffix = f"/{self.role}" if self.role else ""
        return f"{self.workload['kind']} {self.workload['metadata']['name']}{suffix}"

    @property
    def indexed(self) -> bool:
        return self.job is not None and self.job["spec"].get("completionMode") == "Indexed"

    @property
    def operator(self) -> bool:
        """Pods of the Kubeflow training operator (PyTorchJob), which injects the rendezvous environment."""
        return self.workload["kind"] == "PyTorchJob"

    @property
    def containers(self) -> list[dict[str, Any]]:
        return self.template["spec"]["containers"]


def pod_specs(objects: tuple[dict[str, Any], ...]) -> Iterator[PodSpec]:
    for obj in objects:
        if obj["kind"] == "Job":
            yield PodSpec(obj, None, obj["spec"]["template"], int(obj["spec"].get("completions", 1)), obj)
        elif obj["kind"] == "PyTorchJob":
            for role, replica in obj["spec"]["pytorchReplicaSpecs"].items():
                yield PodSpec(obj, role, replica["template"], int(replica.get("replicas", 1)))
        elif obj["kind"] == "JobSet":
            for replicated in obj["spec"]["replicatedJobs"]:
                job = {"apiVersion": "batch/v1", "kind": "Job", **replicated["template"]}
                pods = int(replicated.get("replicas", 1)) * int(job["spec"].get("completions", 1))
                yield PodSpec(obj, replicated["name"], job["spec"]["template"], pods, job)


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


_LABEL_REF = re.compile(r"^metadata\.labels\['([^']+)'\]$")


def container_env(
    container: dict[str, Any],
    objects: tuple[dict[str, Any], ...],
    secrets: Mapping[str, Mapping[str, str]],
    injected: Mapping[str, str],
    pod_labels: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment the kubelet would give ``container``: envFrom, env in order (``fieldRef`` to a label read
    from ``pod_labels``, the labels the controller gives the pod), then what the Job controller or the training
    operator appends (``injected``)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(by_name(objects, "ConfigMap", source["configMapRef"]["name"]).get("data", {}))
    for entry in container.get("env", []):
        source = entry.get("valueFrom", {})
        if "value" in entry:
            env[entry["name"]] = expand(str(entry["value"]), env)
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            env[entry["name"]] = secrets[ref["name"]][ref["key"]]
        elif "fieldRef" in source and _LABEL_REF.match(source["fieldRef"]["fieldPath"]):
            label = _LABEL_REF.match(source["fieldRef"]["fieldPath"]).group(1)
            if pod_labels is None or label not in pod_labels:
                raise AssertionError(f"env {entry['name']}: the pod has no label {label} here")
            env[entry["name"]] = pod_labels[label]
        else:
            raise AssertionError(f"env {entry['name']}: only value, secretKeyRef and fieldRef to a label are emulated")
    env.update(injected)
    return env


def controller_labels(pod: PodSpec, name: str | None = None, index: int = 0) -> dict[str, str]:
    """The labels Kubernetes' Job controller or the JobSet controller puts on pod ``index`` of ``pod`` (what the
    manifests read through the downward API); ``name`` overrides the workload's name."""
    name = name or pod.workload["metadata"]["name"]
    if pod.workload["kind"] == "JobSet":
        return {
            "jobset.sigs.k8s.io/jobset-name": name,
            "jobset.sigs.k8s.io/jobset-uid": f"uid-{name}",
            "jobset.sigs.k8s.io/replicatedjob-name": str(pod.role),
            "jobset.sigs.k8s.io/restart-attempt": "0",
            "batch.kubernetes.io/job-name": f"{name}-{pod.role}-0",
            "batch.kubernetes.io/controller-uid": f"uid-{name}-{pod.role}-0",
            "batch.kubernetes.io/job-completion-index": str(index),
        }
    if pod.workload["kind"] == "Job":
        return {
            "batch.kubernetes.io/job-name": name,
            "batch.kubernetes.io/controller-uid": f"uid-{name}",
            "batch.kubernetes.io/job-completion-index": str(index),
        }
    return {}


def load_launcher():
    """k8s/base/launch.py as a module: the pods' entry point, run here as the pods run it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("meddiffuse_k8s_launch", LAUNCHER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _closed(schema: Any) -> Any:
    """An OpenAPI v3 schema of a CRD as strict field validation applies it: objects with ``properties`` and no
    ``x-kubernetes-preserve-unknown-fields`` or ``additionalProperties`` accept no other field."""
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {key: _closed(value) for key, value in schema.items()}
    if (
        "properties" in closed
        and "additionalProperties" not in closed
        and not closed.get("x-kubernetes-preserve-unknown-fields")
    ):
        closed["additionalProperties"] = False
    if closed.get("x-kubernetes-int-or-string"):
        closed.pop("type", None)
        closed["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    return closed


@cache
def crd_schema(path: Path = JOBSET_CRD, version: str = "v1alpha2") -> dict[str, Any]:
    """The ``openAPIV3Schema`` of ``version`` in the vendored CRD at ``path``, closed as strict validation reads it,
    with ``apiVersion``, ``kind`` and ``metadata.name`` required as the API server requires them."""
    crd = yaml.safe_load(path.read_text())
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema = _closed(served["schema"]["openAPIV3Schema"])
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata", "spec"})
    schema["properties"]["apiVersion"] = {"const": f"{group}/{version}"}
    schema["properties"]["kind"] = {"const": kind}
    schema["properties"]["metadata"] = {"type": "object", "required": ["name"]}
    return schema


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
