"""The k8s/ overlays, offline: they render, pass Kubernetes' strict schemas, keep the policy, and parse as commands."""

from __future__ import annotations

import copy
import json
import os
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
from k8s_manifests import K8S, OVERLAYS, ROOT, by_name, container_env, expand, kubectl, pod_specs, render
from k8s_policy import violations

pytestmark = pytest.mark.skipif(kubectl() is None, reason="kubectl is not installed: the overlays cannot be rendered")

KUBERNETES_VERSIONS = ("1.33.0", kubernetes_validate.utils.latest_version() + ".0")
CORE_KINDS = {"ConfigMap", "Service", "PersistentVolumeClaim", "Job"}
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
    assert kinds["ConfigMap"] == {"meddiffuse-pipeline"}
    assert kinds["PersistentVolumeClaim"] == {"meddiffuse-models", "meddiffuse-checkpoints"}
    if overlay == "gpu":
        assert kinds["PyTorchJob"] == {"meddiffuse-train"} and "Service" not in kinds
    else:
        assert "meddiffuse-train" in kinds["Job"] and kinds["Service"] == {"meddiffuse-train"}
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
    ],
    ids=VIOLATIONS,
)
def test_policy_catches_each_kind_of_violation(change, expected):
    objects = copy.deepcopy(render("cpu-smoke"))
    change(_container(objects, "meddiffuse-teacher"))
    found = violations(objects, gpu=False)
    assert any(expected in problem for problem in found), found


def test_policy_catches_mismatched_parts_and_missing_resume():
    objects = copy.deepcopy(render("cpu-smoke"))
    by_name(objects, "Job", "meddiffuse-warm-cache")["spec"]["completions"] = 3
    by_name(objects, "Job", "meddiffuse-train")["spec"]["parallelism"] = 1
    _container(objects, "meddiffuse-train")["args"].remove("--resume")
    found = violations(objects, gpu=False)
    assert any("JOB_COMPLETIONS" in p for p in found) and any("NNODES" in p for p in found)
    assert any("--resume" in p for p in found)
    assert any("GPU limit" in p for p in violations(render("cpu-smoke"), gpu=True))


def _parse_command(argv: list[str]) -> None:
    """Parse ``argv`` the way the container's program would, without running it."""
    from torch.distributed.run import get_args_parser

    from meddiffuse_stream.cli import build_parser

    if argv[0] == "torchrun":
        launch = get_args_parser().parse_args(argv[1:])
        assert launch.module and launch.training_script == "meddiffuse_stream.cli", argv
        assert launch.nnodes.isdigit() and launch.nproc_per_node.isdigit(), "a literal $(VAR) reached torchrun"
        argv = ["meddiffuse-stream", *launch.training_script_args]
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
            env = container_env(container, objects, secrets, injected)
            argv = [expand(part, env) for part in container["command"] + container.get("args", [])]
            assert not any("$(" in part for part in argv), argv
            _parse_command(argv)


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
    for overlay in OVERLAYS:
        assert f"k8s/overlays/{overlay}" in readme
    assert Path(K8S / "README.md").exists()


def _selects(selector: str, labels: dict[str, str]) -> bool:
    """The three label-selector forms run-pipeline.sh uses: ``!key``, ``key=value``, ``key in (a,b)``."""
    if selector.startswith("!"):
        return selector[1:] not in labels
    if " in (" in selector:
        key, values = selector.split(" in (")
        return labels.get(key) in values.rstrip(")").split(",")
    key, value = selector.split("=")
    return labels.get(key) == value


def test_run_pipeline_applies_every_object_once_in_order(tmp_path):
    stub = tmp_path / "bin" / "kubectl"
    stub.parent.mkdir()
    stub.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {tmp_path}/calls\n')
    stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{stub.parent}{os.pathsep}{os.environ['PATH']}"}
    script = str(K8S / "run-pipeline.sh")
    for overlay in OVERLAYS:
        (tmp_path / "calls").unlink(missing_ok=True)
        subprocess.run([script, f"k8s/overlays/{overlay}", "-n", "team"], env=env, check=True, capture_output=True)
        calls = (tmp_path / "calls").read_text().splitlines()
        applies = [c for c in calls if c.startswith("apply")]
        waits = [c.split()[2] for c in calls if c.startswith("wait")]
        assert all(c.endswith("-n team") for c in calls)
        assert waits == [
            "job/meddiffuse-convert",
            "job/meddiffuse-generator",
            "job/meddiffuse-teacher",
            "job/meddiffuse-warm-cache",
        ]
        assert calls.index(applies[1]) < calls.index(next(c for c in calls if "meddiffuse-convert" in c))
        selectors = [c.split(" -l ")[1].removesuffix(" -n team") for c in applies]
        for obj in render(overlay):
            labels = obj["metadata"].get("labels", {})
            assert sum(_selects(s, labels) for s in selectors) == 1, f"{obj['kind']} {obj['metadata']['name']}"
    late = subprocess.run([script, "k8s/overlays/gpu"], env={**env, "FROM": "train"}, capture_output=True, text=True)
    assert late.returncode == 0 and late.stdout.count("skip ") == 4
    wrong = subprocess.run([script, "k8s/overlays/gpu"], env={**env, "FROM": "trian"}, capture_output=True, text=True)
    assert wrong.returncode == 2 and "FROM=trian" in wrong.stderr
