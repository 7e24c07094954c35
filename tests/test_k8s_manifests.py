"""The k8s/ overlays, offline: they render, pass Kubernetes' strict schemas, keep the policy, and parse as commands."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import subprocess

import jsonschema
import kubernetes_validate
import pytest
import yaml
from k8s_manifests import (
    K8S,
    OVERLAYS,
    ROOT,
    by_name,
    container_env,
    controller_labels,
    crd_schema,
    expand,
    kubectl,
    load_launcher,
    pod_specs,
    render,
)
from k8s_policy import violations

pytestmark = pytest.mark.skipif(kubectl() is None, reason="kubectl is not installed: the overlays cannot be rendered")

# the oldest Kubernetes the manifests support (k8s/README.md, "Versions"), one between, and the newest known
KUBERNETES_VERSIONS = ("1.29.0", "1.33.0", kubernetes_validate.utils.latest_version())
CORE_KINDS = {"ConfigMap", "Service", "PersistentVolumeClaim", "Job", "NetworkPolicy"}
VIOLATIONS = [
    "inline-secret",
    "latest",
    "untagged",
    "escalation",
    "writable-root",
    "cap-add",
    "no-limits",
    "no-shm",
    "undefined-var",
]


def _pytorchjob_schema() -> dict:
    return json.loads((K8S / "schemas" / "pytorchjob-v1.json").read_text())


def _kinds(overlay: str) -> dict[str, set[str]]:
    kinds: dict[str, set[str]] = {}
    for obj in render(overlay):
        kinds.setdefault(obj["kind"], set()).add(obj["metadata"]["name"])
    return kinds


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_the_whole_pipeline(overlay):
    kinds = _kinds(overlay)
    assert kinds["Job"] >= {"meddiffuse-convert", "meddiffuse-generator", "meddiffuse-teacher", "meddiffuse-warm-cache"}
    assert kinds["ConfigMap"] == {"meddiffuse-pipeline", "meddiffuse-launch"}
    assert kinds["PersistentVolumeClaim"] == {"meddiffuse-models", "meddiffuse-checkpoints"}
    if overlay == "gpu":
        assert kinds["PyTorchJob"] == {"meddiffuse-train"} and "Service" not in kinds
    elif overlay == "gpu-jobset":
        assert kinds["JobSet"] == {"meddiffuse-train"} and "Service" not in kinds, "the JobSet makes its Service"
        assert "meddiffuse-train" not in kinds["Job"]
    else:
        assert "meddiffuse-train" in kinds["Job"] and kinds["Service"] == {"meddiffuse-train"}
    launch = by_name(render(overlay), "ConfigMap", "meddiffuse-launch")
    assert launch["data"]["launch.py"] == (K8S / "base" / "launch.py").read_text()
    warm = by_name(render(overlay), "Job", "meddiffuse-warm-cache")
    assert warm["spec"]["completionMode"] == "Indexed"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_core_objects_pass_kubernetes_validate_strict(overlay, version):
    checked = 0
    for obj in render(overlay):
        if obj["kind"] in CORE_KINDS:
            kubernetes_validate.validate(obj, version, strict=True)
            checked += 1
    assert checked >= 7


def test_strict_validation_can_fail():
    job = copy.deepcopy(by_name(render("cpu-smoke"), "Job", "meddiffuse-convert"))
    job["spec"]["template"]["spec"]["containers"][0]["securityContex"] = {}  # a typo strict mode must catch
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, KUBERNETES_VERSIONS[0], strict=True)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_pytorchjob_matches_its_schema_and_its_pods_are_valid_pod_templates(version):
    job = by_name(render("gpu"), "PyTorchJob", "meddiffuse-train")
    jsonschema.Draft202012Validator(_pytorchjob_schema()).validate(job)
    for role, replica in job["spec"]["pytorchReplicaSpecs"].items():
        # a core PodTemplate wraps a PodTemplateSpec, so kubernetes-validate's own definition checks it strictly
        wrapper = {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": f"train-{role.lower()}"},
            "template": replica["template"],
        }
        kubernetes_validate.validate(wrapper, version, strict=True)


@pytest.mark.parametrize(
    "damage",
    [
        lambda job: job["spec"].update(pytorchReplicaSpec=job["spec"].pop("pytorchReplicaSpecs")),
        lambda job: job["spec"]["pytorchReplicaSpecs"]["Master"].update(replicas=2),
        lambda job: job["spec"]["pytorchReplicaSpecs"]["Worker"].update(restartPolicy="Sometimes"),
        lambda job: job["spec"].update(nprocPerNode=1),
        lambda job: job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0].update(
            name="trainer"
        ),
    ],
    ids=["typo", "two-masters", "restart-policy", "nproc-int", "container-name"],
)
def test_pytorchjob_schema_rejects_what_the_operator_would(damage):
    job = copy.deepcopy(by_name(render("gpu"), "PyTorchJob", "meddiffuse-train"))
    damage(job)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(_pytorchjob_schema()).validate(job)


def _jobset() -> dict:
    return copy.deepcopy(by_name(render("gpu-jobset"), "JobSet", "meddiffuse-train"))


def _jobset_webhook(jobset: dict) -> list[str]:
    """The JobSet webhook's checks (v0.12.0, pkg/webhooks/jobset_webhook.go) that these manifests depend on."""
    problems, names = [], [r["name"] for r in jobset["spec"]["replicatedJobs"]]
    reasons = {
        "BackoffLimitExceeded",
        "DeadlineExceeded",
        "FailedIndexes",
        "MaxFailedIndexesExceeded",
        "PodFailurePolicy",
    }
    for replicated in jobset["spec"]["replicatedJobs"]:
        job = replicated["template"]["spec"]
        pod = (
            f"{jobset['metadata']['name']}-{replicated['name']}-{replicated.get('replicas', 1) - 1}-"
            f"{job.get('completions', 1) - 1}-abcde"
        )
        if len(pod) > 63:
            problems.append(f"pod name {pod} longer than 63 characters")
    rules = jobset["spec"].get("failurePolicy", {}).get("rules", [])
    for rule in rules:
        if not re.fullmatch(r"[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?", rule["name"]) or len(rule["name"]) > 128:
            problems.append(f"rule name {rule['name']!r}")
        problems += [f"reason {r}" for r in rule.get("onJobFailureReasons", []) if r not in reasons]
        problems += [f"target {t}" for t in rule.get("targetReplicatedJobs", []) if t not in names]
    if len({rule["name"] for rule in rules}) != len(rules):
        problems.append("rule names are not unique")
    problems += [
        f"success target {t}"
        for t in jobset["spec"].get("successPolicy", {}).get("targetReplicatedJobs", [])
        if t not in names
    ]
    return problems


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_jobset_matches_the_upstream_crd_and_its_jobs_are_valid_jobs(version):
    jobset = _jobset()
    jsonschema.Draft4Validator(crd_schema()).validate(jobset)
    assert _jobset_webhook(jobset) == []
    assert jobset["metadata"]["labels"]["kueue.x-k8s.io/queue-name"]
    for replicated in jobset["spec"]["replicatedJobs"]:
        # the child Job exactly as the JobSet controller creates it, strictly checked as a batch/v1 Job
        job = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": f"train-{replicated['name']}-0"},
            "spec": replicated["template"]["spec"],
        }
        kubernetes_validate.validate(job, version, strict=True)


def test_the_vendored_crd_is_the_released_file():
    digest = hashlib.sha256((K8S / "schemas" / "jobset.x-k8s.io_jobsets.v0.12.0.yaml").read_bytes()).hexdigest()
    assert digest == "d022b87624512cf0b6741b31b24a2bea9945b5a838b50713af29332c878bb6fe", "not the v0.12.0 release"
    assert digest in (K8S / "schemas" / "README.md").read_text(), "the README records the file's origin"


@pytest.mark.parametrize(
    ("damage", "where"),
    [
        (lambda js: js["spec"].update(replicatedJob=js["spec"].pop("replicatedJobs")), "schema"),
        (lambda js: js["spec"]["failurePolicy"]["rules"][0].update(action="FailJob"), "schema"),
        (lambda js: js["spec"]["failurePolicy"]["rules"][0].pop("name"), "schema"),
        (lambda js: js["spec"]["successPolicy"].update(operator="Each"), "schema"),
        (
            lambda js: js["spec"]["replicatedJobs"][1]["template"]["spec"]["template"]["spec"]["containers"][0].update(
                imagePullPolicyy="Always"
            ),
            "schema",
        ),
        (lambda js: js["spec"]["replicatedJobs"][0].update(replicas="1"), "schema"),
        (lambda js: js["spec"]["failurePolicy"]["rules"][0].update(onJobFailureReasons=["PodFailed"]), "webhook"),
        (lambda js: js["spec"]["successPolicy"].update(targetReplicatedJobs=["leader", "worker"]), "webhook"),
        (lambda js: js["metadata"].update(name="meddiffuse-train-a-run-name-far-too-long-for-pods"), "webhook"),
    ],
    ids=["typo", "action", "rule-name", "operator", "pod-typo", "replicas-string", "reason", "target", "long-name"],
)
def test_jobset_checks_reject_what_the_api_server_would(damage, where):
    jobset = _jobset()
    damage(jobset)
    if where == "schema":
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.Draft4Validator(crd_schema()).validate(jobset)
    else:
        jsonschema.Draft4Validator(crd_schema()).validate(jobset)
        assert _jobset_webhook(jobset) != []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_keeps_the_policy(overlay):
    assert violations(render(overlay), gpu=overlay.startswith("gpu")) == []


def _container(objects, name: str) -> dict:
    return next(pod for pod in pod_specs(objects) if pod.workload["metadata"]["name"] == name).containers[0]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda c: c["env"].append({"name": "AWS_SECRET_ACCESS_KEY", "value": "x"}), "inline value"),
        (lambda c: c.update(image="ghcr.io/meddiffuse/meddiffuse-stream:latest"), "not pinned"),
        (lambda c: c.update(image="ghcr.io/meddiffuse/meddiffuse-stream"), "not pinned"),
        (lambda c: c["securityContext"].update(allowPrivilegeEscalation=True), "allowPrivilegeEscalation"),
        (lambda c: c["securityContext"].update(readOnlyRootFilesystem=False), "readOnlyRootFilesystem"),
        (lambda c: c["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]), "capabilities"),
        (lambda c: c["resources"].pop("limits"), "request and limit"),
        (lambda c: c["volumeMounts"].pop(), "/dev/shm"),
        (lambda c: c["args"].append("--epochs=$(EPOCH)"), "$(EPOCH) is defined nowhere"),
        (lambda c: c["resources"]["limits"].update({"ephemeral-storage": "512Mi"}), "does not cover"),
        (lambda c: c["resources"]["requests"].update({"ephemeral-storage": "256Mi"}), "request 256Mi is below"),
        (lambda c: c["args"].append("--shard-cache-bytes=16GiB"), "a fixed --shard-cache-bytes"),
        (lambda c: c["args"].remove("--shard-cache-size=$(SHARD_CACHE_SIZE)"), "sized from its volume"),
        (lambda c: c.update(command=["meddiffuse-stream"]) or c["args"].pop(0), "sized from its volume"),
    ],
    ids=[*VIOLATIONS, "ephemeral-limit", "ephemeral-request", "cache-bytes", "cache-size", "no-launcher"],
)
def test_policy_catches_each_kind_of_violation(change, expected):
    objects = copy.deepcopy(render("cpu-smoke"))
    change(_container(objects, "meddiffuse-teacher"))
    found = violations(objects, gpu=False)
    assert any(expected in problem for problem in found), found


def _volume(objects, workload: str, name: str) -> dict:
    pod = next(pod for pod in pod_specs(objects) if pod.workload["metadata"]["name"] == workload)
    return next(volume for volume in pod.template["spec"]["volumes"] if volume["name"] == name)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda v: v.update(emptyDir={"sizeLimit": "20Gi"}) or v.pop("ephemeral"), "generic ephemeral volume"),
        (
            lambda v: v["ephemeral"]["volumeClaimTemplate"]["spec"]["resources"]["requests"].update(storage="9Gi"),
            "but SHARD_CACHE_SIZE is 1Gi",
        ),
    ],
    ids=["emptydir-cache", "cache-size-mismatch"],
)
def test_policy_catches_a_cache_that_could_evict_its_pod(change, expected):
    objects = copy.deepcopy(render("cpu-smoke"))
    change(_volume(objects, "meddiffuse-train", "cache"))
    found = violations(objects, gpu=False)
    assert any(expected in problem for problem in found), found


def test_policy_catches_emptydirs_beyond_their_limits():
    objects = copy.deepcopy(render("cpu-smoke"))
    _volume(objects, "meddiffuse-teacher", "tmp")["emptyDir"]["sizeLimit"] = "2Gi"  # the limit is 1Gi
    _volume(objects, "meddiffuse-convert", "dshm")["emptyDir"]["sizeLimit"] = "8Gi"  # the memory limit is 3Gi
    _volume(objects, "meddiffuse-generator", "tmp")["emptyDir"].pop("sizeLimit")
    found = violations(objects, gpu=False)
    assert any("meddiffuse-teacher" in p and "does not cover" in p for p in found), found
    assert any("meddiffuse-convert" in p and "exceeds the memory limit" in p for p in found), found
    assert any("meddiffuse-generator" in p and "emptyDir tmp has no sizeLimit" in p for p in found), found


def test_policy_catches_jobset_settings_that_break_the_failure_story():
    objects = copy.deepcopy(render("gpu-jobset"))
    jobset = by_name(objects, "JobSet", "meddiffuse-train")
    jobset["metadata"]["labels"].pop("kueue.x-k8s.io/queue-name")
    jobset["spec"]["failurePolicy"]["rules"].pop(0)  # exit 2 would restart the gang
    workers = jobset["spec"]["replicatedJobs"][1]["template"]["spec"]
    workers["parallelism"] = workers["completions"] = 3  # NNODES stays 2
    found = violations(objects, gpu=True)
    for expected in ("kueue.x-k8s.io/queue-name", "must fail the JobSet at once", "NNODES 2 but the JobSet runs 4"):
        assert any(expected in problem for problem in found), (expected, found)
    workers["podFailurePolicy"] = {"rules": []}
    assert any("exit 2 of train" in p for p in violations(objects, gpu=True))


def test_policy_catches_mismatched_parts_and_missing_resume():
    objects = copy.deepcopy(render("cpu-smoke"))
    by_name(objects, "Job", "meddiffuse-warm-cache")["spec"]["completions"] = 3
    by_name(objects, "Job", "meddiffuse-train")["spec"]["parallelism"] = 1
    _container(objects, "meddiffuse-train")["args"].remove("--resume")
    found = violations(objects, gpu=False)
    assert any("JOB_COMPLETIONS" in p for p in found) and any("NNODES" in p for p in found)
    assert any("--resume" in p for p in found)
    assert any("GPU limit" in p for p in violations(render("cpu-smoke"), gpu=True))
    torchrun = copy.deepcopy(render("cpu-smoke"))
    train = _container(torchrun, "meddiffuse-train")
    train["command"], train["args"] = [train["args"][1]], train["args"][2:]  # torchrun without the launcher
    assert any("torchrun must run through" in p for p in violations(torchrun, gpu=False))


def _parse_command(argv: list[str]) -> None:
    """Check ``argv`` the way the container would before it runs anything: the launcher's own checks (its
    programs' parsers), a plain meddiffuse-stream command with the package's parser."""
    from meddiffuse_stream.cli import build_parser

    if argv[:2] == ["python", "/opt/meddiffuse/launch.py"]:
        launcher = load_launcher()
        args = argv[2:]
        assert args[0].startswith("--shard-cache-size=") and launcher.quantity_bytes(args[0].split("=", 1)[1]) > 0
        args = [*args[1:], "--shard-cache-bytes=1GiB"]  # what the launcher appends
        if args[0] == "torchrun":
            launch = launcher.prepare_torchrun(args[1:], hostname="pod-0")
            assert launch.no_python and launch.training_script == "meddiffuse-stream", argv
            assert launch.nnodes.isdigit() and launch.nproc_per_node.isdigit(), "a literal $(VAR) reached torchrun"
            assert launch.rdzv_backend in ("c10d", "static")
            if launch.rdzv_backend == "c10d":
                assert launch.max_restarts > 0, "elastic: ranks are restarted in place before the pod fails"
        else:
            launcher.check_program(args)
        return
    if argv[:2] == ["python", "/app/tools/shard.py"]:
        assert (ROOT / "tools" / "shard.py").exists()
        argv = ["meddiffuse-stream", "shard", *argv[2:]]
    assert argv[0] == "meddiffuse-stream", f"unexpected program {argv[0]}"
    build_parser().parse_args(argv[1:])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_command_parses_with_the_programs_own_parsers(overlay):
    objects = render(overlay)
    injected = {
        "JOB_COMPLETION_INDEX": "0",
        "PET_NNODES": "2",
        "PET_NODE_RANK": "0",
        "PET_NPROC_PER_NODE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29500",
    }
    secrets = {"meddiffuse-s3": {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "secret"}}
    for pod in pod_specs(objects):
        for container in pod.containers:
            env = container_env(container, objects, secrets, injected, controller_labels(pod))
            argv = [expand(part, env) for part in container["command"] + container.get("args", [])]
            assert not any("$(" in part for part in argv), argv
            _parse_command(argv)


def test_training_forms_run_the_same_training():
    """The three training forms differ in how pods find each other, never in what they train."""

    def training_args(pod) -> list[str]:
        args = pod.containers[0]["args"]
        return args[args.index("meddiffuse-stream") :]

    forms = {
        overlay: [
            training_args(p)
            for p in pod_specs(render(overlay))
            if "train" in p.workload["metadata"]["labels"].get("app.kubernetes.io/component", "")
        ]
        for overlay in ("gpu", "gpu-indexed", "gpu-jobset")
    }
    reference = forms["gpu-indexed"][0]
    assert all(args == reference for pods in forms.values() for args in pods), forms


def test_dockerfile_builds_what_the_manifests_run():
    text = (ROOT / "Dockerfile").read_text()
    base = next(line.split()[1] for line in text.splitlines() if line.startswith("FROM "))
    assert ":" in base and not base.endswith(":latest"), "the base image is pinned by tag"
    assert "USER 10001:10001" in text, "the image runs as the uid the manifests ask for"
    for path in ("/checkpoints", "/models", "/cache"):
        assert path in text, f"the image prepares the mount point {path}"
    assert "COPY tools ./tools" in text and "WORKDIR /app" in text, "python /app/tools/shard.py exists in the image"
    assert "torch==${TORCH_VERSION}" in text and "TORCH_INDEX" in text, "CPU and CUDA builds from one file"
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignored and "!meddiffuse_stream/" in ignored, "the build context is the package, not .venv"
    users = {pod.template["spec"]["securityContext"]["runAsUser"] for o in OVERLAYS for pod in pod_specs(render(o))}
    assert users == {10001}


def test_readme_documents_running_on_kubernetes():
    readme = (ROOT / "README.md").read_text()
    assert "## Run on Kubernetes" in readme
    for overlay in ("cpu-smoke", "gpu", "gpu-indexed"):
        assert f"k8s/overlays/{overlay}" in readme
    operators = (K8S / "README.md").read_text()
    for overlay in OVERLAYS:
        assert f"overlays/{overlay}" in operators or f"{overlay}/" in operators, overlay
    for topic in (
        "IRSA",
        "Workload Identity",
        "Pod Identity",
        "NetworkPolicy",
        "digest",
        "driver",
        "Kueue",
        "evicted",
        "RUN_NAME",
        "SHARD_CACHE_SIZE",
    ):
        assert topic in operators, f"k8s/README.md says nothing of {topic}"


def test_an_overlay_can_pin_the_image_by_digest(tmp_path):
    """What k8s/README.md tells operators to do: `images: digest:` in their overlay; every pod runs that digest."""
    digest = "sha256:" + "0123456789abcdef" * 4
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(K8S / "overlays" / "gpu-jobset", tmp_path)],
                "images": [
                    {
                        "name": "ghcr.io/meddiffuse/meddiffuse-stream",
                        "newName": "registry.example/meddiffuse-stream",
                        "digest": digest,
                    }
                ],
            }
        )
    )
    result = subprocess.run([kubectl(), "kustomize", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    objects = tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)
    images = {c["image"] for pod in pod_specs(objects) for c in pod.containers}
    assert images == {f"registry.example/meddiffuse-stream@{digest}"}
    assert violations(objects, gpu=True) == []
