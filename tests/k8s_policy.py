"""The rules every rendered overlay must keep, as one function that lists what breaks them (empty = compliant)."""

from __future__ import annotations

import re
from typing import Any

from k8s_manifests import PodSpec, by_name, pod_specs, references

SECRET_NAME = re.compile(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY|PRIVATE|CREDENTIAL", re.IGNORECASE)
TAG = re.compile(r"^[^@]+:(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})$|^[^@]+@sha256:[0-9a-f]{64}$")
# what Kubernetes (Indexed Jobs) and the training operator add to a container's environment
INJECTED_INDEXED = {"JOB_COMPLETION_INDEX"}
INJECTED_OPERATOR = {
    "MASTER_ADDR",
    "MASTER_PORT",
    "WORLD_SIZE",
    "RANK",
    "PET_NNODES",
    "PET_NODE_RANK",
    "PET_NPROC_PER_NODE",
    "PET_MASTER_ADDR",
    "PET_MASTER_PORT",
    "PYTHONUNBUFFERED",
}
MODEL_PODS = ("meddiffuse-generator", "meddiffuse-teacher", "meddiffuse-warm-cache", "meddiffuse-train")


def _quantity(text: str | int) -> float:
    units = {"": 1, "m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(text))
    if match is None or match.group(2) not in units:
        raise ValueError(f"not a quantity: {text!r}")
    return float(match.group(1)) * units[match.group(2)]


def _secrets(objects: tuple[dict[str, Any], ...]) -> list[str]:
    problems = []
    for obj in objects:
        if obj["kind"] == "Secret":
            problems.append(f"Secret {obj['metadata']['name']} is rendered with its values; reference it instead")
        if obj["kind"] == "ConfigMap":
            problems += [
                f"ConfigMap {obj['metadata']['name']} holds {key}"
                for key in obj.get("data", {})
                if SECRET_NAME.search(key)
            ]
    return problems


def _container(pod: PodSpec, container: dict[str, Any], objects: tuple[dict[str, Any], ...]) -> list[str]:
    where = f"{pod.name} container {container['name']}"
    problems = []
    for entry in container.get("env", []):
        if SECRET_NAME.search(entry["name"]) and "value" in entry:
            problems.append(f"{where}: {entry['name']} has an inline value; use a secretKeyRef")
    image = container.get("image", "")
    match = TAG.match(image)
    if match is None or match.group("tag") == "latest":
        problems.append(f"{where}: image {image!r} is not pinned by tag or digest (and never :latest)")
    context = container.get("securityContext", {})
    pod_context = pod.template["spec"].get("securityContext", {})
    if context.get("allowPrivilegeEscalation") is not False:
        problems.append(f"{where}: allowPrivilegeEscalation must be false")
    if context.get("readOnlyRootFilesystem") is not True:
        problems.append(f"{where}: readOnlyRootFilesystem must be true")
    if context.get("capabilities", {}).get("drop") != ["ALL"] or context.get("capabilities", {}).get("add"):
        problems.append(f"{where}: capabilities must drop ALL and add none")
    if context.get("privileged"):
        problems.append(f"{where}: privileged")
    if not (context.get("runAsNonRoot") or pod_context.get("runAsNonRoot")):
        problems.append(f"{where}: runAsNonRoot must be true")
    if context.get("runAsUser", pod_context.get("runAsUser")) in (0, None):
        problems.append(f"{where}: runAsUser must be a non-zero uid")
    resources = container.get("resources", {})
    for resource in ("cpu", "memory"):
        request, limit = resources.get("requests", {}).get(resource), resources.get("limits", {}).get(resource)
        if request is None or limit is None:
            problems.append(f"{where}: {resource} request and limit must both be set")
        elif _quantity(request) > _quantity(limit):
            problems.append(f"{where}: {resource} request {request} exceeds its limit {limit}")
    volumes = {volume["name"]: volume for volume in pod.template["spec"].get("volumes", [])}
    mounts = {mount["mountPath"]: mount["name"] for mount in container.get("volumeMounts", [])}
    for path, name in mounts.items():
        if name not in volumes:
            problems.append(f"{where}: mount {path} names no volume {name!r}")
    shm = volumes.get(mounts.get("/dev/shm", ""), {})
    if shm.get("emptyDir", {}).get("medium") != "Memory":
        problems.append(f"{where}: /dev/shm must be a memory emptyDir (DataLoader workers share tensors there)")
    if "emptyDir" not in volumes.get(mounts.get("/tmp", ""), {}):
        problems.append(f"{where}: /tmp must be a writable emptyDir (the root filesystem is read-only)")
    return problems


def _references(pod: PodSpec, container: dict[str, Any], objects: tuple[dict[str, Any], ...]) -> list[str]:
    """Every $(VAR) in command and args is defined, every ConfigMap and claim a pod names is rendered too."""
    where = f"{pod.name} container {container['name']}"
    problems, defined = [], {entry["name"] for entry in container.get("env", [])}
    for source in container.get("envFrom", []):
        try:
            defined |= set(by_name(objects, "ConfigMap", source["configMapRef"]["name"]).get("data", {}))
        except KeyError as missing:
            problems.append(f"{where}: {missing}")
    defined |= INJECTED_INDEXED if pod.indexed else set()
    defined |= INJECTED_OPERATOR if pod.role else set()
    for text in [*container.get("command", []), *container.get("args", [])]:
        problems += [f"{where}: $({name}) is defined nowhere" for name in sorted(references(text) - defined)]
    for volume in pod.template["spec"].get("volumes", []):
        claim = volume.get("persistentVolumeClaim", {}).get("claimName")
        if claim and not any(o["kind"] == "PersistentVolumeClaim" and o["metadata"]["name"] == claim for o in objects):
            problems.append(f"{pod.name}: claim {claim} is not part of the overlay")
    return problems


def _restarts(pod: PodSpec) -> list[str]:
    """Preempted pods come back and continue: retries allowed, disruptions not counted, training resumes."""
    spec, problems = pod.workload["spec"], []
    if pod.workload["kind"] == "Job":
        rules = spec.get("podFailurePolicy", {}).get("rules", [])
        if not any(
            rule["action"] == "Ignore"
            and any(
                c["type"] == "DisruptionTarget" and c.get("status") == "True" for c in rule.get("onPodConditions", [])
            )
            for rule in rules
        ):
            problems.append(f"{pod.name}: podFailurePolicy must ignore DisruptionTarget (preemption, drain)")
        if spec.get("backoffLimit", spec.get("backoffLimitPerIndex", 0)) < 1:
            problems.append(f"{pod.name}: no retries (backoffLimit or backoffLimitPerIndex)")
        if pod.indexed:
            env = {e["name"]: e.get("value") for c in pod.containers for e in c.get("env", [])}
            if "JOB_COMPLETIONS" in env and env["JOB_COMPLETIONS"] != str(spec["completions"]):
                problems.append(f"{pod.name}: JOB_COMPLETIONS {env['JOB_COMPLETIONS']} != completions")
            if "NNODES" in env and not env["NNODES"] == str(spec["completions"]) == str(spec["parallelism"]):
                problems.append(f"{pod.name}: NNODES, completions and parallelism must agree (all ranks at once)")
    else:
        if pod.workload["spec"]["pytorchReplicaSpecs"][pod.role].get("restartPolicy") not in ("OnFailure", "ExitCode"):
            problems.append(f"{pod.name}: restartPolicy must restart failed or preempted pods")
        if pod.workload["spec"].get("runPolicy", {}).get("backoffLimit", 0) < 1:
            problems.append(f"{pod.name}: runPolicy.backoffLimit must allow restarts")
    trains = any("train" in c.get("command", []) + c.get("args", [])[:10] for c in pod.containers)
    if trains and not any("--resume" in c.get("args", []) for c in pod.containers):
        problems.append(f"{pod.name}: a training pod must pass --resume so a replaced pod continues")
    return problems


def violations(objects: tuple[dict[str, Any], ...], *, gpu: bool) -> list[str]:
    """What in ``objects`` breaks the project's rules; ``gpu``: model pods must request one GPU, others none."""
    problems = _secrets(objects)
    for pod in pod_specs(objects):
        spec = pod.template["spec"]
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{pod.name}: automountServiceAccountToken must be false (the jobs never call the API)")
        if spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"):
            problems.append(f"{pod.name}: host namespaces are not allowed")
        problems += _restarts(pod)
        for container in pod.containers:
            problems += _container(pod, container, objects) + _references(pod, container, objects)
            wants = gpu and pod.workload["metadata"]["name"] in MODEL_PODS
            limit = container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
            if wants != (limit is not None):
                problems.append(f"{pod.name}: GPU limit {limit!r}, expected {'one' if wants else 'none'}")
    return problems
