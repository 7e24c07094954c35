"""k8s/overlays/cpu-smoke/s3-server, the S3 service the cpu-smoke overlay points at: its manifests are valid and
keep the pods' rules, and its commands work — the SeaweedFS container's command runs here (ports moved to free ones,
bound to 127.0.0.1) with the Secret's keys as its only identity, and the bucket Job's command makes the bucket."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import kubernetes_validate
import pytest
import s3fs
import yaml
from k8s_manifests import K8S, by_name, container_env, expand, kubectl
from seaweed import _free_block, _own_sockets, weed_binary

pytestmark = pytest.mark.skipif(kubectl() is None, reason="kubectl is not installed: the overlays cannot be rendered")

SECRET = {"meddiffuse-s3": {"AWS_ACCESS_KEY_ID": "smoke-key", "AWS_SECRET_ACCESS_KEY": "smoke-secret-0123"}}


def _render() -> tuple[dict, ...]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(K8S / "overlays" / "cpu-smoke" / "s3-server")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


@pytest.mark.parametrize("version", ["1.29.0", "1.33.0", kubernetes_validate.utils.latest_version()])
def test_the_s3_server_manifests_are_valid(version):
    objects = _render()
    assert {o["kind"] for o in objects} == {"Service", "PersistentVolumeClaim", "Deployment", "Job"}
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)


def test_the_s3_server_is_where_cpu_smoke_looks_and_keeps_the_pods_rules():
    objects = _render()
    service = by_name(objects, "Service", "meddiffuse-s3")
    endpoint = (K8S / "overlays" / "cpu-smoke" / "pipeline.env").read_text()
    assert f"AWS_ENDPOINT_URL=http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}" in endpoint
    assert "meddiffuse-smoke/" in endpoint, "the bucket the Job makes is the one the overlay writes to"
    deployment = by_name(objects, "Deployment", "meddiffuse-s3")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items()), "the Service selects the server"
    for pod in (deployment["spec"]["template"], by_name(objects, "Job", "meddiffuse-s3-bucket")["spec"]["template"]):
        spec = pod["spec"]
        assert spec["automountServiceAccountToken"] is False and spec["securityContext"]["runAsNonRoot"] is True
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] and context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert not any("value" in e for e in container["env"] if "SECRET" in e["name"] or "KEY_ID" in e["name"])
            assert re.fullmatch(r"[^:@]+:[A-Za-z0-9_.-]+", container["image"]), "pinned by tag"


def _free_endpoint_wait(endpoint: str, process: subprocess.Popen, log, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"weed exited {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(endpoint, timeout=2).read()
            return
        except urllib.error.HTTPError:
            return  # an answer (403 without credentials): it is up
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"SeaweedFS did not answer at {endpoint} within {timeout:.0f}s:\n{log.read_text()[-3000:]}")


@pytest.mark.slow
@pytest.mark.s3
def test_the_s3_server_and_bucket_job_commands_run(tmp_path):
    objects = _render()
    (server,) = by_name(objects, "Deployment", "meddiffuse-s3")["spec"]["template"]["spec"]["containers"]
    port = _free_block()
    moved = {"-master.port": port + 1000, "-volume.port": port + 1001, "-filer.port": port + 1002, "-s3.port": port}
    argv = [weed_binary()]
    for arg in server["args"]:
        name, _, value = arg.partition("=")
        if name in moved:
            value = str(moved[name])
        elif name == "-dir":
            value = str(tmp_path)
        elif name == "-ip.bind":
            value = "127.0.0.1"  # loopback here, all of the pod's addresses in the cluster
        argv.append(f"{name}={value}" if value else name)
    argv.insert(2, "-ip=127.0.0.1")
    assert server["command"] == ["weed"] and set(moved) <= {a.split("=")[0] for a in server["args"]}
    env = container_env(server, objects, SECRET, {})
    log = tmp_path / "weed.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            argv, env={**os.environ, **env}, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _free_endpoint_wait(endpoint, process, log)
        (bucket,) = by_name(objects, "Job", "meddiffuse-s3-bucket")["spec"]["template"]["spec"]["containers"]
        job_env = container_env(bucket, objects, SECRET, {}) | {"AWS_ENDPOINT_URL": endpoint}
        command = [expand(part, job_env) for part in bucket["command"] + bucket["args"]]
        assert command[0] == "python"
        made = None
        for _ in range(20):  # as the Job's retries do while the gateway's filer comes up
            made = subprocess.run(
                [sys.executable, *command[1:]],
                env={**os.environ, **job_env},
                text=True,
                capture_output=True,
                timeout=60,
            )
            if made.returncode == 0:
                break
            time.sleep(1)
        assert made.returncode == 0, made.stderr[-3000:]
        assert f"bucket meddiffuse-smoke ready at {endpoint}" in made.stdout
        keys = SECRET["meddiffuse-s3"]
        fs = s3fs.S3FileSystem(
            key=keys["AWS_ACCESS_KEY_ID"],
            secret=keys["AWS_SECRET_ACCESS_KEY"],
            client_kwargs={"endpoint_url": endpoint},
        )
        fs.pipe("meddiffuse-smoke/probe", b"ok")
        assert fs.cat("meddiffuse-smoke/probe") == b"ok"
        stranger = s3fs.S3FileSystem(
            key="someone", secret="else-entirely", client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True
        )
        with pytest.raises(PermissionError):
            stranger.cat("meddiffuse-smoke/probe")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        for sock in _own_sockets(port):  # a killed weed leaves its gRPC sockets in /tmp
            with contextlib.suppress(OSError):
                os.remove(sock)
