"""The manifests' commands really run: each container's command, args and env are taken from the rendered YAML, what
Kubernetes, the JobSet controller and the training operator would inject is filled in (the downward API's labels,
the rendezvous host as 127.0.0.1), mounted paths become temporary folders (a ConfigMap volume holds its files), and
the whole pipeline runs locally against the SeaweedFS server: conversion, generator, teacher, an Indexed Job warming
the variant cache, and DDP training as two torchrun "pods" through the launcher — an Indexed Job or a JobSet with a
c10d rendezvous, or a PyTorchJob's static one. A pod's exit code is judged by its Job's podFailurePolicy (and the
JobSet's failurePolicy) as the controllers would."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import s3fs
import torch
from builders import rsna_subset, small_dicom
from k8s_manifests import (
    ROOT,
    by_name,
    container_env,
    controller_labels,
    dockerfile_env,
    expand,
    kubectl,
    pod_specs,
    render,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.s3,
    pytest.mark.skipif(kubectl() is None, reason="kubectl is not installed: the overlays cannot be rendered"),
]

ORDER = (
    "meddiffuse-convert",
    "meddiffuse-generator",
    "meddiffuse-teacher",
    "meddiffuse-warm-cache",
    "meddiffuse-train",
)
IMAGE_WORKDIR = "/app"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LocalCluster:
    """Runs an overlay's pods as local processes: claims are shared folders, emptyDirs are per-pod folders."""

    def __init__(self, overlay: str, root: Path, server, overrides: dict[str, str]) -> None:
        self.objects = render(overlay)
        self.root = root
        self.server = server
        self.overrides = {"AWS_ENDPOINT_URL": server.endpoint, **overrides}
        self.secrets = {
            "meddiffuse-s3": {
                "AWS_ACCESS_KEY_ID": server.env["AWS_ACCESS_KEY_ID"],
                "AWS_SECRET_ACCESS_KEY": server.env["AWS_SECRET_ACCESS_KEY"],
            }
        }
        self.readonly = root / "image-root"  # the image's working directory; the root filesystem is read-only
        self.readonly.mkdir(parents=True)
        self.readonly.chmod(0o555)
        self.pods = 0

    @property
    def config(self) -> dict[str, str]:
        return {**by_name(self.objects, "ConfigMap", "meddiffuse-pipeline")["data"], **self.overrides}

    def claim(self, name: str) -> Path:
        return self.root / "claims" / name

    def run(self, workload: str, timeout: float = 240, disrupt=None) -> list[str]:
        """Start every pod of ``workload`` at once (as the controllers do), wait, and return their outputs;
        ``disrupt(pods)`` is called at every poll (to kill a rank, say)."""
        pods = self.start(workload)
        logs = {name: self._log(name) for name, _, _ in pods}
        deadline = time.monotonic() + timeout
        while any(process.poll() is None for _, _, process in pods):  # as a Job controller watches its pods
            failed = [(n, p.returncode) for n, _, p in pods if p.returncode not in (None, 0)]
            if failed or time.monotonic() > deadline:
                self._stop(pods)
                what = f"{failed} failed" if failed else f"not finished in {timeout:.0f}s"
                tails = "\n".join(f"--- {name}:\n{logs[name].read_text()[-3000:]}" for name, _, _ in pods)
                raise AssertionError(f"{workload}: {what}\n{tails}")
            if disrupt is not None:
                disrupt(pods)
            time.sleep(0.2)
        for name, _, process in pods:
            assert process.returncode == 0, f"{name} exited {process.returncode}:\n{logs[name].read_text()[-4000:]}"
        return [logs[name].read_text() for name, _, _ in pods]

    def exits(self, workload: str, change=None, timeout: float = 120) -> list[tuple]:
        """Start every pod of ``workload`` (``change(container)`` edits each container first) and wait until all
        have exited: (pod spec, container name, exit code, log) for each."""
        pods = self.start(workload, change)
        deadline = time.monotonic() + timeout
        while any(process.poll() is None for _, _, process in pods):
            if time.monotonic() > deadline:
                self._stop(pods)
                raise AssertionError(f"{workload}: pods still running after {timeout:.0f}s")
            time.sleep(0.2)
        return [
            (spec, spec.containers[0]["name"], process.returncode, self._log(name).read_text())
            for name, spec, process in pods
        ]

    def start(self, workload: str, change=None) -> list[tuple]:
        port = str(_free_port())
        pods = []
        for pod in (p for p in pod_specs(self.objects) if p.workload["metadata"]["name"] == workload):
            for index in range(pod.count):
                pods.append(self._start(pod, index, port, change))
        assert pods, f"no pods for {workload}"
        return pods

    @staticmethod
    def _stop(pods) -> None:
        for _, _, process in pods:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def _log(self, pod_name: str) -> Path:
        return self.root / "logs" / (re.sub(r"[^A-Za-z0-9_.-]+", "_", pod_name) + ".log")

    def _injected(self, pod, index: int, port: str) -> dict[str, str]:
        if pod.operator:
            spec = pod.workload["spec"]
            nodes = sum(int(r.get("replicas", 1)) for r in spec["pytorchReplicaSpecs"].values())
            rank = 0 if pod.role == "Master" else index + 1
            per_node = spec.get("nprocPerNode", "1")
            return {
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": port,
                "WORLD_SIZE": str(nodes * int(per_node)),
                "RANK": str(rank),
                "PET_NNODES": str(nodes),
                "PET_NODE_RANK": str(rank),
                "PET_NPROC_PER_NODE": per_node,
                "PYTHONUNBUFFERED": "1",
            }
        injected = {"JOB_COMPLETION_INDEX": str(index)} if pod.indexed else {}
        if any(e["name"] == "RDZV_HOST" for c in pod.containers for e in c.get("env", [])):
            injected |= {"RDZV_HOST": "127.0.0.1", "RDZV_PORT": port}  # the leader's DNS name and port, locally
        return injected

    def _start(self, pod, index: int, port: str, change=None) -> tuple[str, object, subprocess.Popen]:
        self.pods += 1
        (container,) = copy.deepcopy(pod.containers)
        if change is not None:
            change(container)
        volumes = {v["name"]: v for v in pod.template["spec"].get("volumes", [])}
        paths = {IMAGE_WORKDIR: ROOT}
        for mount in container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            if mount["mountPath"] == "/dev/shm":
                continue  # the host's /dev/shm is what a memory emptyDir gives the pod
            if "persistentVolumeClaim" in volume:
                local = self.claim(volume["persistentVolumeClaim"]["claimName"])
            else:  # emptyDir, generic ephemeral volume: the pod's own; a ConfigMap: its files
                local = self.root / "pods" / f"{self.pods}" / mount["name"]
            local.mkdir(parents=True, exist_ok=True)
            if "configMap" in volume:
                for key, text in by_name(self.objects, "ConfigMap", volume["configMap"]["name"])["data"].items():
                    (local / key).write_text(text)
            paths[mount["mountPath"]] = local
        pattern = re.compile(
            r"(^|=)(" + "|".join(re.escape(p) for p in sorted(paths, key=len, reverse=True)) + r")(?=/|$)"
        )

        def localise(text: str) -> str:
            return pattern.sub(lambda m: m.group(1) + str(paths[m.group(2)]), text)

        labels = controller_labels(pod, index=index)
        env = container_env(container, self.objects, self.secrets, self._injected(pod, index, port), labels)
        env.update(self.overrides)
        argv = [localise(expand(part, env)) for part in container["command"] + container.get("args", [])]
        binaries = Path(sys.executable).parent
        argv[0] = sys.executable if argv[0] == "python" else str(binaries / argv[0])
        process_env = {name: localise(value) for name, value in {**dockerfile_env(), **env}.items()}
        process_env |= {"PATH": f"{binaries}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
        name = f"{pod.name} #{index}"
        log = self._log(name)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as output:  # a file, not a pipe: a chatty pod never blocks on a full pipe
            process = subprocess.Popen(
                argv,
                cwd=self.readonly,
                env=process_env,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return name, pod, process


def pod_failure_action(job: dict, container: str, exit_code: int, conditions: tuple[str, ...] = ()) -> str:
    """What the Job controller does with a failed pod: the first podFailurePolicy rule that matches (exit codes of
    the named container, or a pod condition) gives FailJob, Ignore or Count; no rule matching: Count."""
    for rule in job["spec"].get("podFailurePolicy", {}).get("rules", []):
        codes = rule.get("onExitCodes")
        if codes is not None and codes.get("containerName") in (None, container):
            if (codes["operator"] == "In") == (exit_code in codes["values"]):
                return rule["action"]
        if any(c["type"] in conditions and c.get("status", "True") == "True" for c in rule.get("onPodConditions", [])):
            return rule["action"]
    return "Count"


def jobset_action(jobset: dict, replicated_job: str, reason: str) -> str:
    """What the JobSet controller does when a child Job fails for ``reason``: the first failurePolicy rule whose
    reasons and targets match (empty lists match all); none: RestartJobSet while restarts remain."""
    for rule in jobset["spec"].get("failurePolicy", {}).get("rules", []):
        if rule.get("onJobFailureReasons") and reason not in rule["onJobFailureReasons"]:
            continue
        if rule.get("targetReplicatedJobs") and replicated_job not in rule["targetReplicatedJobs"]:
            continue
        return rule["action"]
    return "RestartJobSet"


def _bucket(server, url: str) -> s3fs.S3FileSystem:
    fs = s3fs.S3FileSystem(**server.storage_options)
    bucket = url.removeprefix("s3://").split("/")[0]
    if not fs.exists(bucket):
        fs.mkdir(bucket)
    return fs


def _check_pipeline(cluster: LocalCluster, fs: s3fs.S3FileSystem) -> dict:
    config = cluster.config
    dataset = json.loads(fs.cat(f"{config['DATASET_URL']}/dataset.json"))
    train_samples = dataset["splits"]["train"]["samples"]
    models = cluster.claim("meddiffuse-models") / config["RUN_NAME"]  # each run's models in its own folder
    assert (models / "generator" / "meddiffuse_generator.json").exists()
    assert (models / "teacher" / "checkpoint.pt").exists()
    return {"dataset": dataset, "train_samples": train_samples}


def _run_pipeline(cluster: LocalCluster, fs: s3fs.S3FileSystem) -> dict:
    config = cluster.config
    for workload in ORDER[:4]:
        cluster.run(workload)
    facts = _check_pipeline(cluster, fs)
    variants = [p for p in fs.find(config["VARIANT_CACHE_URL"]) if p.endswith(".bin")]
    assert len(variants) == facts["train_samples"] * int(config["VARIANTS"]), "every part warmed its share"
    cluster.run("meddiffuse-train")
    metrics = json.loads((cluster.claim("meddiffuse-checkpoints") / config["RUN_NAME"] / "metrics.json").read_text())
    counters = metrics["counters"]
    assert counters["augment"].get("generated", 0) == 0, "with a warm cache, training makes no diffusion calls"
    assert counters["augment"]["cache_hits"] > 0
    assert counters["loader"]["yielded"] >= facts["train_samples"] * int(config["EPOCHS"])
    assert metrics["steps"] > 0 and "val" in metrics
    checkpoint = cluster.claim("meddiffuse-checkpoints") / config["RUN_NAME"] / "checkpoint.pt"
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert len(state["loader"]) == 2, "two pods trained one model: the checkpoint holds both ranks' loader states"
    return metrics


def test_cpu_smoke_overlay_runs_as_written(s3_server, tmp_path):
    cluster = LocalCluster("cpu-smoke", tmp_path, s3_server, {})
    fs = _bucket(s3_server, cluster.config["DATASET_URL"])
    metrics = _run_pipeline(cluster, fs)
    assert metrics["config"]["augment"] == "meddiffusemix"


def test_gpu_overlay_commands_run_on_cpu_with_a_small_rsna_dataset(s3_server, tmp_path):
    """The gpu overlay as written (PyTorchJob, real RSNA label CSV and DICOMs), only sizes made small for a CPU."""
    small = {
        "SHARD_RESIZE": "32",
        "GENERATOR_EPOCHS": "1",
        "GENERATOR_WIDTH": "16",
        "GENERATOR_STEPS": "2",
        "TEACHER_EPOCHS": "1",
        "EPOCHS": "1",
        "VARIANTS": "1",
        "BATCH_SIZE": "16",
        "LOADER_WORKERS": "1",
        "SHARD_WORKERS": "1",
        "CHECKPOINT_EVERY": "2",
    }
    cluster = LocalCluster("gpu", tmp_path, s3_server, small)
    config = cluster.config
    assert config["SHARD_FORMAT"] == "rsna"
    fs = _bucket(s3_server, config["RAW_URL"])
    text, patients = rsna_subset(positives=12, negatives=12)
    raw = tmp_path / "raw"
    (raw / "stage_2_train_images").mkdir(parents=True)
    (raw / "stage_2_train_labels.csv").write_text(text)
    for patient in patients:
        small_dicom("CT_small.dcm", size=48, PatientID=patient).save_as(raw / "stage_2_train_images" / f"{patient}.dcm")
    fs.put(str(raw) + "/", config["RAW_URL"] + "/", recursive=True)
    metrics = _run_pipeline(cluster, fs)
    assert metrics["config"]["model"] == "resnet18"
    dataset = json.loads(fs.cat(f"{config['DATASET_URL']}/dataset.json"))
    assert sum(split["samples"] for split in dataset["splits"].values()) == len(patients)


class _NoServer:
    """Pods that must fail before they reach the object store need no server."""

    def __init__(self) -> None:
        self.endpoint = "http://127.0.0.1:9"
        self.env = {"AWS_ACCESS_KEY_ID": "unused", "AWS_SECRET_ACCESS_KEY": "unused"}


@pytest.mark.parametrize("overlay", ["cpu-smoke", "gpu-jobset", "gpu"])
def test_a_train_usage_error_fails_the_job_on_its_first_pod(tmp_path, overlay):
    """A misspelt flag in the training command: every pod exits 2 through the launcher before torchrun starts, and
    the Job's podFailurePolicy (and the JobSet's failurePolicy) fail the run on that first pod, no retry."""
    cluster = LocalCluster(overlay, tmp_path, _NoServer(), {})
    exits = cluster.exits("meddiffuse-train", change=lambda c: c["args"].append("--epcohs=2"))
    assert len(exits) == 2, "both pods (ranks) of the gang ran"
    for pod, container, code, log in exits:
        assert code == 2, log
        assert "unrecognized arguments: --epcohs=2" in log and "rendezvous" not in log.lower(), log
        if pod.job is None:  # the PyTorchJob: the v1 operator has no podFailurePolicy (k8s/README.md says so)
            continue
        assert pod_failure_action(pod.job, container, code) == "FailJob"
        if pod.workload["kind"] == "JobSet":
            assert jobset_action(pod.workload, pod.role, "PodFailurePolicy") == "FailJobSet"
        # what a crash or an eviction does instead
        assert pod_failure_action(pod.job, container, 1) == "Count"
        assert pod_failure_action(pod.job, container, 137, ("DisruptionTarget",)) == "Ignore"


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def test_jobset_overlay_runs_with_an_elastic_c10d_rendezvous_and_survives_a_killed_rank(s3_server, tmp_path):
    """The gpu-jobset overlay as written (JobSet leader + worker, c10d rendezvous at the leader, RSNA conversion),
    sizes made small for a CPU. Once training has written its first checkpoint the worker pod's rank is killed:
    torchrun (MAX_RESTARTS) restarts every rank in both pods through a new rendezvous round, they resume from the
    checkpoint, and training completes with both pods exiting 0."""
    small = {
        "SHARD_RESIZE": "32",
        "GENERATOR_EPOCHS": "1",
        "GENERATOR_WIDTH": "16",
        "GENERATOR_STEPS": "2",
        "TEACHER_EPOCHS": "1",
        "EPOCHS": "4",
        "VARIANTS": "1",
        "BATCH_SIZE": "4",
        "LOADER_WORKERS": "1",
        "SHARD_WORKERS": "1",
        "CHECKPOINT_EVERY": "1",
        "MEDDIFFUSE_DDP_TIMEOUT": "60",
    }
    cluster = LocalCluster("gpu-jobset", tmp_path, s3_server, small)
    config = cluster.config
    assert {p.role for p in pod_specs(cluster.objects) if p.workload["kind"] == "JobSet"} == {"leader", "workers"}
    fs = _bucket(s3_server, config["RAW_URL"])
    text, patients = rsna_subset(positives=12, negatives=12)
    raw = tmp_path / "raw"
    (raw / "stage_2_train_images").mkdir(parents=True)
    (raw / "stage_2_train_labels.csv").write_text(text)
    for patient in patients:
        small_dicom("CT_small.dcm", size=48, PatientID=patient).save_as(raw / "stage_2_train_images" / f"{patient}.dcm")
    fs.put(str(raw) + "/", config["RAW_URL"] + "/", recursive=True)
    for workload in ORDER[:4]:
        cluster.run(workload)
    facts = _check_pipeline(cluster, fs)
    out = cluster.claim("meddiffuse-checkpoints") / config["RUN_NAME"]
    killed: list[int] = []

    def kill_a_rank(pods) -> None:
        if killed or not (out / "checkpoint.pt").exists():
            return
        worker = next(process for name, pod, process in pods if pod.role == "workers")
        ranks = [
            pid for pid in _children(worker.pid) if b"meddiffuse-stream" in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]
        if ranks:
            os.kill(ranks[0], signal.SIGKILL)
            killed.append(ranks[0])

    logs = cluster.run("meddiffuse-train", timeout=400, disrupt=kill_a_rank)
    assert killed, "training ended before a rank could be killed"
    worker = logs[1]  # pods start leader first
    assert "failed (exitcode: -9)" in worker, "the worker pod's torchrun saw its rank killed, and went on"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["distributed"]["world_size"] == 2 and metrics["distributed"]["backend"] == "gloo"
    assert metrics["steps"] > 0 and "val" in metrics
    state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert len(state["loader"]) == 2 and state["step"] == metrics["steps"]
    per_rank = math.ceil(facts["train_samples"] / 2)  # the loader pads the ranks to equal shares
    assert metrics["steps"] == math.ceil(per_rank / int(config["BATCH_SIZE"])) * int(config["EPOCHS"]), "every step"
    assert facts["train_samples"] > 0
