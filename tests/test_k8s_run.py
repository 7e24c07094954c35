"""The manifests' commands really run: each container's command, args and env are taken from the rendered YAML, what
Kubernetes and the training operator would inject is filled in, mounted paths become temporary folders, and the
whole pipeline runs locally against the SeaweedFS server: conversion, generator, teacher, an Indexed Job warming the
variant cache, and DDP training as two torchrun "pods"."""

from __future__ import annotations

import contextlib
import json
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
from k8s_manifests import ROOT, by_name, container_env, dockerfile_env, expand, kubectl, pod_specs, render

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

    def run(self, workload: str, timeout: float = 240) -> list[str]:
        """Start every pod of ``workload`` at once (as the controllers do), wait, and return their outputs."""
        port = str(_free_port())
        processes = []
        for pod in (p for p in pod_specs(self.objects) if p.workload["metadata"]["name"] == workload):
            for index in range(pod.count):
                processes.append(self._start(pod, index, port))
        assert processes, f"no pods for {workload}"
        logs = {name: self._log(name) for name, _ in processes}
        deadline = time.monotonic() + timeout
        while any(process.poll() is None for _, process in processes):  # as a Job controller watches its pods
            failed = [(n, p.returncode) for n, p in processes if p.returncode not in (None, 0)]
            if failed or time.monotonic() > deadline:
                for _, process in processes:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                what = f"{failed} failed" if failed else f"not finished in {timeout:.0f}s"
                tails = "\n".join(f"--- {name}:\n{logs[name].read_text()[-3000:]}" for name, _ in processes)
                raise AssertionError(f"{workload}: {what}\n{tails}")
            time.sleep(0.2)
        for name, process in processes:
            assert process.returncode == 0, f"{name} exited {process.returncode}:\n{logs[name].read_text()[-4000:]}"
        return [logs[name].read_text() for name, _ in processes]

    def _log(self, pod_name: str) -> Path:
        return self.root / "logs" / (re.sub(r"[^A-Za-z0-9_.-]+", "_", pod_name) + ".log")

    def _injected(self, pod, index: int, port: str) -> dict[str, str]:
        if pod.indexed:
            injected = {"JOB_COMPLETION_INDEX": str(index)}
            if any(e["name"] == "MASTER_ADDR" for c in pod.containers for e in c.get("env", [])):
                injected |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}  # pod 0's DNS name, locally
            return injected
        if pod.role is None:
            return {}
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

    def _start(self, pod, index: int, port: str) -> tuple[str, subprocess.Popen]:
        self.pods += 1
        (container,) = pod.containers
        volumes = {v["name"]: v for v in pod.template["spec"].get("volumes", [])}
        paths = {IMAGE_WORKDIR: ROOT}
        for mount in container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            if mount["mountPath"] == "/dev/shm":
                continue  # the host's /dev/shm is what a memory emptyDir gives the pod
            if "persistentVolumeClaim" in volume:
                local = self.claim(volume["persistentVolumeClaim"]["claimName"])
            else:
                local = self.root / "pods" / f"{self.pods}" / mount["name"]
            local.mkdir(parents=True, exist_ok=True)
            paths[mount["mountPath"]] = local
        pattern = re.compile(
            r"(^|=)(" + "|".join(re.escape(p) for p in sorted(paths, key=len, reverse=True)) + r")(?=/|$)"
        )

        def localise(text: str) -> str:
            return pattern.sub(lambda m: m.group(1) + str(paths[m.group(2)]), text)

        env = container_env(container, self.objects, self.secrets, self._injected(pod, index, port))
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
        return name, process


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
    assert (cluster.claim("meddiffuse-models") / "generator" / "meddiffuse_generator.json").exists()
    assert (cluster.claim("meddiffuse-models") / "teacher" / "checkpoint.pt").exists()
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
