"""The rules every rendered overlay must keep, as one function that lists what breaks them (empty = compliant)."""

from __future__ import annotations

import re
from typing import Any

from k8s_manifests import PodSpec, by_name, pod_specs, references

SECRET_NAME = re.compile(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY|PRIVATE|CREDENTIAL", re.IGNORECASE)
TAG = re.compile(r"^[^@]+:(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})$|^[^@]+@sha256:[0-9a-f]{64}$")
# what Kubernetes (Indexed Jobs) and the training operator add to a container's environment
INJECTED_INDEXED = {"JOB_COMPLETION_INDEX"}
LOG_RESERVE = 512 * 2**20  # container logs (kubelet rotates them at 10 Mi x 5) and the read-only root's writable layer
LAUNCHER_COMMAND = ["python", "/opt/meddiffuse/launch.py"]
KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
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
MODEL_COMPONENTS = ("generator", "teacher", "warm-cache", "train")  # app.kubernetes.io/component of the model pods


def _quantity(text: str | int) -> float:
    units = {
        "": 1,
        "m": 1e-3,
        "Ki": 2**10,
        "Mi": 2**20,
        "Gi": 2**30,
        "Ti": 2**40,
        "k": 1e3,
        "M": 1e6,
        "G": 1e9,
        "T": 1e12,
    }
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


def _storage(pod: PodSpec, container: dict[str, Any], objects: tuple[dict[str, Any], ...]) -> list[str]:
    """Nothing a pod writes can get it evicted: its ephemeral-storage limit (and request) covers every disk-backed
    emptyDir it mounts plus logs, every memory emptyDir fits its memory limit, and a shard cache sits on a volume of
    its own whose size (SHARD_CACHE_SIZE, the one value) the loader is sized from."""
    where = f"{pod.name} container {container['name']}"
    problems = []
    volumes = {volume["name"]: volume for volume in pod.template["spec"].get("volumes", [])}
    mounted = {mount["name"] for mount in container.get("volumeMounts", [])}
    resources = container.get("resources", {})
    disk = 0.0
    for name in sorted(mounted & set(volumes)):
        empty = volumes[name].get("emptyDir")
        if empty is None:
            continue
        if "sizeLimit" not in empty:
            problems.append(f"{where}: emptyDir {name} has no sizeLimit")
            continue
        if empty.get("medium") == "Memory":
            memory = resources.get("limits", {}).get("memory")
            if memory is None or _quantity(empty["sizeLimit"]) > _quantity(memory):
                problems.append(
                    f"{where}: memory emptyDir {name} ({empty['sizeLimit']}) exceeds the memory limit "
                    f"{memory} (it is counted in it)"
                )
        else:
            disk += _quantity(empty["sizeLimit"])
    limit = resources.get("limits", {}).get("ephemeral-storage")
    request = resources.get("requests", {}).get("ephemeral-storage")
    if limit is None or request is None:
        problems.append(f"{where}: ephemeral-storage request and limit must both be set")
    else:
        if _quantity(limit) < disk + LOG_RESERVE:
            problems.append(
                f"{where}: ephemeral-storage limit {limit} does not cover its disk-backed emptyDirs "
                f"({disk / 2**30:g}Gi) plus {LOG_RESERVE >> 20}Mi for logs: the kubelet would evict "
                "the pod"
            )
        if _quantity(request) < disk:
            problems.append(
                f"{where}: ephemeral-storage request {request} is below its emptyDirs' "
                f"{disk / 2**30:g}Gi (first evicted under node disk pressure)"
            )
    args = [*container.get("command", []), *container.get("args", [])]
    cache = next((a.split("=", 1)[1] for a in args if a.startswith("--shard-cache=")), None)
    if cache is not None:
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        holder = max((p for p in mounts if cache == p or cache.startswith(p.rstrip("/") + "/")), key=len, default=None)
        volume = volumes.get(mounts.get(holder, ""), {})
        claim = volume.get("ephemeral", {}).get("volumeClaimTemplate", {}).get("spec", {})
        size = claim.get("resources", {}).get("requests", {}).get("storage")
        config: dict[str, str] = {}
        for source in container.get("envFrom", []):
            config |= next(
                (
                    o.get("data", {})
                    for o in objects
                    if o["kind"] == "ConfigMap" and o["metadata"]["name"] == source.get("configMapRef", {}).get("name")
                ),
                {},
            )
        if not claim:
            problems.append(
                f"{where}: the shard cache {cache} must sit on a generic ephemeral volume of its own "
                "(an emptyDir counts against the pod's ephemeral storage)"
            )
        elif size != config.get("SHARD_CACHE_SIZE"):
            problems.append(
                f"{where}: cache volume of {size}, but SHARD_CACHE_SIZE is "
                f"{config.get('SHARD_CACHE_SIZE')} (the shard-cache component sizes it)"
            )
        if args[:2] != LAUNCHER_COMMAND or "--shard-cache-size=$(SHARD_CACHE_SIZE)" not in args:
            problems.append(
                f"{where}: the loader's cache must be sized from its volume: run through the launcher "
                "with --shard-cache-size=$(SHARD_CACHE_SIZE)"
            )
        if any(a.startswith("--shard-cache-bytes") for a in args):
            problems.append(f"{where}: a fixed --shard-cache-bytes beside the cache's volume size (one value)")
    return problems


def _launcher(pod: PodSpec, container: dict[str, Any], objects: tuple[dict[str, Any], ...]) -> list[str]:
    """torchrun only through the launcher (usage errors exit 2, a rank's exit code reaches the pod), which the pod
    mounts from the rendered ConfigMap."""
    where = f"{pod.name} container {container['name']}"
    args = [*container.get("command", []), *container.get("args", [])]
    problems = []
    if "torchrun" in args and args[:2] != LAUNCHER_COMMAND:
        problems.append(
            f"{where}: torchrun must run through {' '.join(LAUNCHER_COMMAND)} (torchrun exits 1 for a "
            "rejected flag, which podFailurePolicy cannot tell from a crash)"
        )
    if args[:2] == LAUNCHER_COMMAND:
        volumes = {v["name"]: v for v in pod.template["spec"].get("volumes", [])}
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        source = volumes.get(mounts.get("/opt/meddiffuse", ""), {}).get("configMap", {}).get("name")
        if source is None:
            problems.append(f"{where}: /opt/meddiffuse must mount the launcher's ConfigMap")
        elif "launch.py" not in next(
            (o.get("data", {}) for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == source), {}
        ):
            problems.append(f"{where}: ConfigMap {source} holding launch.py is not part of the overlay")
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
    defined |= INJECTED_OPERATOR if pod.operator else set()
    for text in [*container.get("command", []), *container.get("args", [])]:
        problems += [f"{where}: $({name}) is defined nowhere" for name in sorted(references(text) - defined)]
    for volume in pod.template["spec"].get("volumes", []):
        claim = volume.get("persistentVolumeClaim", {}).get("claimName")
        if claim and not any(o["kind"] == "PersistentVolumeClaim" and o["metadata"]["name"] == claim for o in objects):
            problems.append(f"{pod.name}: claim {claim} is not part of the overlay")
    return problems


def _failure_policy(pod: PodSpec) -> list[str]:
    """A Job's pods: disruptions not counted, exit 2 (a usage error) fails the Job at once."""
    spec, problems = pod.job["spec"], []
    rules = spec.get("podFailurePolicy", {}).get("rules", [])
    if not any(
        rule["action"] == "Ignore"
        and any(c["type"] == "DisruptionTarget" and c.get("status") == "True" for c in rule.get("onPodConditions", []))
        for rule in rules
    ):
        problems.append(f"{pod.name}: podFailurePolicy must ignore DisruptionTarget (preemption, drain)")
    for container in pod.containers:
        if not any(
            rule["action"] == "FailJob"
            and rule.get("onExitCodes", {}).get("operator") == "In"
            and 2 in rule["onExitCodes"].get("values", [])
            and rule["onExitCodes"].get("containerName") in (None, container["name"])
            for rule in rules
        ):
            problems.append(f"{pod.name}: exit 2 of {container['name']} (a usage error) must fail the Job at once")
    if pod.template["spec"].get("restartPolicy") != "Never":
        problems.append(f"{pod.name}: podFailurePolicy needs restartPolicy Never")
    return problems


def _jobset(pod: PodSpec) -> list[str]:
    """The JobSet: one gang (queued through Kueue), a usage error fails it, other failures restart it a few times,
    every rank starts with the others (the number of nodes torchrun waits for is the number of pods)."""
    spec, problems = pod.workload["spec"], []
    if not pod.workload["metadata"].get("labels", {}).get(KUEUE_QUEUE):
        problems.append(f"{pod.name}: no {KUEUE_QUEUE} label (Kueue admits the JobSet as one gang)")
    rules = spec.get("failurePolicy", {}).get("rules", [])
    first = next(
        (
            r
            for r in rules
            if "PodFailurePolicy" in r.get("onJobFailureReasons", []) or not r.get("onJobFailureReasons")
        ),
        None,
    )
    if first is None or first["action"] != "FailJobSet":
        problems.append(f"{pod.name}: a Job failed by its podFailurePolicy (exit 2) must fail the JobSet at once")
    if spec.get("failurePolicy", {}).get("maxRestarts", 0) < 1:
        problems.append(f"{pod.name}: failurePolicy.maxRestarts must allow restarting the gang")
    if spec.get("successPolicy", {}).get("operator") != "All":
        problems.append(f"{pod.name}: successPolicy must wait for every replicated job")
    network = spec.get("network", {})
    if network.get("enableDNSHostnames") is not True or network.get("publishNotReadyAddresses") is not True:
        problems.append(f"{pod.name}: pods must resolve each other (enableDNSHostnames, publishNotReadyAddresses)")
    job = pod.job["spec"]
    if job.get("completions", 1) != job.get("parallelism", 1):
        problems.append(f"{pod.name}: completions and parallelism must agree (every rank at once)")
    pods = sum(
        int(r.get("replicas", 1)) * int(r["template"]["spec"].get("parallelism", 1)) for r in spec["replicatedJobs"]
    )
    env = {e["name"]: e.get("value") for c in pod.containers for e in c.get("env", [])}
    if "NNODES" in env and env["NNODES"] != str(pods):
        problems.append(f"{pod.name}: NNODES {env['NNODES']} but the JobSet runs {pods} pods")
    return problems


def _restarts(pod: PodSpec) -> list[str]:
    """Preempted pods come back and continue: retries allowed, disruptions not counted, training resumes."""
    spec, problems = pod.workload["spec"], []
    if pod.workload["kind"] == "JobSet":
        problems += _failure_policy(pod) + _jobset(pod)
    elif pod.workload["kind"] == "Job":
        problems += _failure_policy(pod)
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

    def argv(c: dict[str, Any]) -> list[str]:
        return [*c.get("command", []), *c.get("args", [])]

    trains = any(
        ["meddiffuse-stream", "train"] == argv(c)[i : i + 2] for c in pod.containers for i in range(len(argv(c)))
    )
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
            problems += _storage(pod, container, objects) + _launcher(pod, container, objects)
            component = pod.workload["metadata"].get("labels", {}).get("app.kubernetes.io/component")
            wants = gpu and component in MODEL_COMPONENTS
            limit = container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
            if wants != (limit is not None):
                problems.append(f"{pod.name}: GPU limit {limit!r}, expected {'one' if wants else 'none'}")
    return problems
