"""k8s/run-pipeline.sh against a stand-in kubectl: named runs, reuse only with the same settings, and every wait
watching failure as well as success (a failed Job stops the run with its reason and its pods' last lines).

The stand-in renders with the real ``kubectl kustomize`` (offline) and keeps a small cluster state in a JSON file:
what was applied (kind, name, labels, annotations) and, per workload, the conditions each status poll returns."""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from k8s_manifests import K8S, OVERLAYS, crd_schema, kubectl, pod_specs
from k8s_policy import violations

pytestmark = pytest.mark.skipif(kubectl() is None, reason="kubectl is not installed: the overlays cannot be rendered")

SCRIPT = K8S / "run-pipeline.sh"
LISTING = '{range .items[*]}{.kind}/{.metadata.name} {.metadata.annotations.meddiffuse\\.io/settings}{"\\n"}{end}'
CONDITIONS = '{range .status.conditions[?(@.status=="True")]}{.type}{" "}{end}'
REASONS = '{range .status.conditions[?(@.status=="True")]}{.type}={.reason}: {.message}{"\\n"}{end}'
SUCCESS = {"job": "Complete", "jobset": "Completed", "pytorchjob": "Succeeded"}
STEPS = ["convert", "generator", "teacher", "warm-cache"]


def _selects(selector: str, labels: dict[str, str]) -> bool:
    """The label-selector forms the script uses: ``!key``, ``key=value``, ``key in (a,b)``, comma-joined."""
    for part in re.split(r",(?![^(]*\))", selector):
        if part.startswith("!"):
            ok = part[1:] not in labels
        elif " in (" in part:
            key, values = part.split(" in (")
            ok = labels.get(key) in values.rstrip(")").split(",")
        else:
            key, value = part.split("=")
            ok = labels.get(key) == value
        if not ok:
            return False
    return True


def standin(argv: list[str]) -> int:
    """The stand-in kubectl: the verbs run-pipeline.sh uses, anything else is an error (exit 97)."""
    state_path = Path(os.environ["STANDIN_STATE"])
    state = json.loads(state_path.read_text())
    state.setdefault("calls", []).append(argv)
    flags = {argv[i]: argv[i + 1] for i in range(len(argv) - 1) if argv[i] in ("-n", "-l", "-f", "-o")}
    out = ""
    code = 0
    if argv[0] == "kustomize":
        state_path.write_text(json.dumps(state))
        return subprocess.run([os.environ["REAL_KUBECTL"], *argv], check=False).returncode
    if argv[0] == "apply":
        shutil.copy(flags["-f"], state_path.parent / "applied.yaml")  # the script removes its own copy on exit
        for doc in yaml.safe_load_all(Path(flags["-f"]).read_text()):
            if doc and _selects(flags["-l"], doc["metadata"].get("labels", {})):
                key = f"{doc['kind']}/{doc['metadata']['name']}"
                state.setdefault("objects", {})[key] = {
                    "labels": doc["metadata"].get("labels", {}),
                    "annotations": doc["metadata"].get("annotations", {}),
                }
                state.setdefault("applied", []).append(key)
                out += f"{key.lower()} configured\n"
    elif argv[0] == "get" and flags.get("-o") == f"jsonpath={LISTING}":
        kinds = argv[1].split(",")
        for key, obj in state.get("objects", {}).items():
            if key.split("/")[0] in kinds and _selects(flags["-l"], obj["labels"]):
                out += f"{key} {obj['annotations'].get('meddiffuse.io/settings', '')}\n"
    elif argv[0] == "get" and flags.get("-o") == f"jsonpath={CONDITIONS}":
        ref = argv[1]
        polls = state.setdefault("polls", {})
        polls[ref] = polls.get(ref, 0) + 1
        script = state.get("scenario", {}).get(ref, [SUCCESS[ref.split("/")[0]]])
        answer = script[min(polls[ref], len(script)) - 1]
        if answer == "ERROR":
            code, out = 1, ""
            print("error: the server was unable to return a response in the time allotted", file=sys.stderr)
        else:
            out = "".join(f"{c} " for c in answer.split())
    elif argv[0] == "get" and flags.get("-o") == f"jsonpath={REASONS}":
        out = state.get("reasons", {}).get(argv[1], "")
    elif argv[0] == "logs":
        tail = int(next(a.split("=")[1] for a in argv if a.startswith("--tail=")))
        lines = [f"[pod/{flags['-l'].split('=')[1]}-0/train] line {i}" for i in range(1, 26)]
        out = "".join(f"{line}\n" for line in lines[-tail:])
    else:
        print(f"stand-in kubectl: unsupported call: {shlex.join(argv)}", file=sys.stderr)
        code = 97
    state_path.write_text(json.dumps(state))
    sys.stdout.write(out)
    return code


class Cluster:
    """The stand-in's state between runs of the script."""

    def __init__(self, tmp_path: Path) -> None:
        self.state = tmp_path / "state.json"
        self.state.write_text(json.dumps({}))
        binary = tmp_path / "bin" / "kubectl"
        binary.parent.mkdir()
        binary.write_text(
            f"#!{sys.executable}\nimport importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('standin', {str(Path(__file__))!r})\n"
            "module = importlib.util.module_from_spec(spec)\nsys.path.insert(0, "
            f"{str(Path(__file__).parent)!r})\nspec.loader.exec_module(module)\n"
            "sys.exit(module.standin(sys.argv[1:]))\n"
        )
        binary.chmod(0o755)
        self.env = {
            **os.environ,
            "PATH": f"{binary.parent}{os.pathsep}{os.environ['PATH']}",
            "POLL": "0",
            "STANDIN_STATE": str(self.state),
            "REAL_KUBECTL": kubectl(),
        }

    def set(self, **values) -> None:
        state = json.loads(self.state.read_text())
        state.update(values)
        self.state.write_text(json.dumps(state))

    @property
    def data(self) -> dict:
        return json.loads(self.state.read_text())

    def run(self, overlay: str, *flags: str, **env: str) -> subprocess.CompletedProcess:
        self.set(calls=[], applied=[], polls={})
        return subprocess.run(
            [str(SCRIPT), f"k8s/overlays/{overlay}", *flags],
            cwd=K8S.parent,
            text=True,
            capture_output=True,
            env={**self.env, **env},
            timeout=120,
        )


def _rendered_run(tmp_path: Path, overlay: str, run: str) -> tuple[dict, ...]:
    """What the script applies for ``run``: the file of its first apply call."""
    cluster = Cluster(tmp_path)
    result = cluster.run(overlay, RUN_NAME=run, WAIT_TRAIN="0", FROM="train")
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all((tmp_path / "applied.yaml").read_text()) if doc)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_run_applies_every_object_once_in_order_and_waits_for_each_workload(tmp_path, overlay):
    cluster = Cluster(tmp_path)
    result = cluster.run(overlay, "-n", "team", RUN_NAME="r1")
    assert result.returncode == 0, result.stderr
    calls = cluster.data["calls"]
    assert all(call[-2:] == ["-n", "team"] or "-n" in call for call in calls if call[0] != "kustomize")
    polled = [call[1] for call in calls if call[0] == "get" and call[-1] == f"jsonpath={CONDITIONS}"]
    train = {"gpu": "pytorchjob", "gpu-jobset": "jobset"}.get(overlay, "job")
    assert polled == [f"job/meddiffuse-{step}-r1" for step in STEPS] + [f"{train}/meddiffuse-train-r1"]
    applies = [call for call in calls if call[0] == "apply"]
    assert calls.index(applies[1]) < calls.index(next(c for c in calls if c[1:2] == ["job/meddiffuse-convert-r1"]))
    applied = cluster.data["applied"]
    assert len(applied) == len(set(applied)), "an object was applied twice"
    (tmp_path / "again").mkdir()
    rendered = {f"{o['kind']}/{o['metadata']['name']}" for o in _rendered_run(tmp_path / "again", overlay, "r1")}
    assert set(applied) == rendered
    assert "run r1 finished" in result.stdout


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_a_run_renames_labels_and_annotates_its_objects_and_keeps_the_policy(tmp_path, overlay):
    run = "rsna-meddiffusemix-seed0"  # the longest run name the base's pipeline.env uses (24 characters allowed)
    objects = _rendered_run(tmp_path, overlay, run)
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    shared = ("PersistentVolumeClaim", "NetworkPolicy")  # the runs in a namespace share the claims and the policies
    for kind, name in names:
        if kind in shared:
            assert not name.endswith(run), (kind, name)
        else:
            assert name.endswith(f"-{run}"), (kind, name)
    for obj in objects:
        if obj["kind"] not in shared:
            assert obj["metadata"]["labels"]["meddiffuse.io/run"] == run
            assert re.fullmatch(r"[0-9a-f]{16}", obj["metadata"]["annotations"]["meddiffuse.io/settings"])
    config = next(o for o in objects if o["metadata"]["name"] == f"meddiffuse-pipeline-{run}")
    assert config["data"]["RUN_NAME"] == run
    # every reference follows the rename: ConfigMaps (also inside the JobSet / PyTorchJob), the rendezvous Service
    assert violations(objects, gpu=overlay.startswith("gpu")) == []
    for pod in pod_specs(objects):
        for volume in pod.template["spec"].get("volumes", []):
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in names
        if "subdomain" in pod.template["spec"]:
            assert ("Service", pod.template["spec"]["subdomain"]) in names
            assert pod.template["spec"]["subdomain"] == pod.workload["metadata"]["name"], "JOB-0.JOB is the host"
    for obj in objects:
        if obj["kind"] in ("Job", "ConfigMap", "Service", "PersistentVolumeClaim", "NetworkPolicy"):
            kubernetes_validate.validate(obj, "1.29.0", strict=True)
        if obj["kind"] == "JobSet":
            jsonschema.Draft4Validator(crd_schema()).validate(obj)
            for replicated in obj["spec"]["replicatedJobs"]:  # the JobSet webhook: pod names within 63 characters
                last = int(replicated["template"]["spec"]["completions"]) - 1
                pod_name = f"{obj['metadata']['name']}-{replicated['name']}-{replicated['replicas'] - 1}-{last}-abcde"
                assert len(pod_name) <= 63, pod_name
        if obj["kind"] == "Job" and obj["spec"].get("completionMode") == "Indexed":
            assert len(f"{obj['metadata']['name']}-{obj['spec']['completions'] - 1}") <= 63


def test_a_failed_job_stops_the_run_with_its_reason_and_last_log_lines(tmp_path):
    cluster = Cluster(tmp_path)
    cluster.set(
        scenario={"job/meddiffuse-teacher-r1": ["", "", "FailureTarget Failed"]},
        reasons={
            "job/meddiffuse-teacher-r1": "FailureTarget=PodFailurePolicy: Container teacher for pod "
            "x exited with 2, matching FailJob rule at index 1\n"
        },
    )
    result = cluster.run("cpu-smoke", RUN_NAME="r1")
    assert result.returncode == 1
    assert "job/meddiffuse-teacher-r1 failed (FailureTarget=PodFailurePolicy: Container teacher" in result.stderr
    assert "line 25" in result.stderr and "line 6\n" in result.stderr and "line 5\n" not in result.stderr
    assert "kubectl delete job/meddiffuse-teacher-r1" in result.stderr
    data = cluster.data
    assert data["polls"]["job/meddiffuse-teacher-r1"] == 3, "stopped at the first poll that saw the failure"
    assert not any("warm-cache" in key for key in data["applied"]), "no later step started"


@pytest.mark.parametrize(
    ("overlay", "ref"), [("gpu-jobset", "jobset/meddiffuse-train-r1"), ("gpu", "pytorchjob/meddiffuse-train-r1")]
)
def test_a_failed_training_workload_stops_the_run(tmp_path, overlay, ref):
    cluster = Cluster(tmp_path)
    cluster.set(scenario={ref: ["Suspended", "Suspended", "", "Failed"]})
    result = cluster.run(overlay, RUN_NAME="r1")
    assert result.returncode == 1 and f"{ref} failed" in result.stderr
    assert result.stdout.count("queued (suspended until admitted)") == 1
    selector = {"jobset": "jobset.sigs.k8s.io/jobset-name", "pytorchjob": "training.kubeflow.org/job-name"}
    logs = next(call for call in cluster.data["calls"] if call[0] == "logs")
    assert logs[logs.index("-l") + 1] == f"{selector[ref.split('/')[0]]}=meddiffuse-train-r1"


def test_a_rerun_with_the_same_settings_reuses_the_run(tmp_path):
    cluster = Cluster(tmp_path)
    assert cluster.run("cpu-smoke", RUN_NAME="r1").returncode == 0
    again = cluster.run("cpu-smoke", RUN_NAME="r1")
    assert again.returncode == 0, again.stderr
    assert "reusing run r1" in again.stdout


def test_a_rerun_with_other_settings_is_refused_and_a_new_name_runs_anew(tmp_path):
    cluster = Cluster(tmp_path)
    assert cluster.run("cpu-smoke", RUN_NAME="r1").returncode == 0
    state = cluster.data
    for obj in state["objects"].values():  # as if r1 had been run with other settings
        if "meddiffuse.io/settings" in obj["annotations"]:
            obj["annotations"]["meddiffuse.io/settings"] = "0123456789abcdef"
    cluster.set(objects=state["objects"])
    refused = cluster.run("cpu-smoke", RUN_NAME="r1")
    assert refused.returncode == 3
    assert "run r1 already exists with other settings" in refused.stderr
    assert "Job/meddiffuse-convert-r1 (settings 0123456789abcdef)" in refused.stderr
    assert "delete Job,ConfigMap -l meddiffuse.io/run=r1" in refused.stderr
    assert cluster.data["applied"] == [], "nothing applied"
    anew = cluster.run("cpu-smoke", RUN_NAME="r2")
    assert anew.returncode == 0, anew.stderr
    assert {key for key in cluster.data["objects"] if key.endswith("-r2")} >= {
        "Job/meddiffuse-convert-r2",
        "ConfigMap/meddiffuse-pipeline-r2",
    }


def test_settings_are_part_of_the_run_identity(tmp_path):
    """Another setting in pipeline.env is another settings hash: reusing the run name with it is refused."""
    overlay = tmp_path / "mine"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(K8S / "overlays" / "cpu-smoke", overlay)],
                "configMapGenerator": [
                    {
                        "name": "meddiffuse-pipeline",
                        "behavior": "merge",
                        "literals": ["EPOCHS=3"],
                        "options": {"disableNameSuffixHash": True},
                    }
                ],
            }
        )
    )
    cluster = Cluster(tmp_path)
    assert cluster.run("cpu-smoke", RUN_NAME="r1").returncode == 0
    changed = subprocess.run(
        [str(SCRIPT), str(overlay)], env={**cluster.env, "RUN_NAME": "r1"}, text=True, capture_output=True, timeout=120
    )
    assert changed.returncode == 3, changed.stderr


def test_every_wait_is_bounded(tmp_path):
    cluster = Cluster(tmp_path)
    cluster.set(scenario={"job/meddiffuse-convert-r1": [""]})
    result = cluster.run("cpu-smoke", RUN_NAME="r1", TIMEOUT="1s", POLL="0.2")
    assert result.returncode == 1 and "job/meddiffuse-convert-r1 did not finish within 1 s" in result.stderr
    cluster.set(scenario={"job/meddiffuse-convert-r1": ["ERROR"]})
    result = cluster.run("cpu-smoke", RUN_NAME="r1")
    assert result.returncode == 1 and "3 kubectl errors in a row" in result.stderr
    assert cluster.data["polls"]["job/meddiffuse-convert-r1"] == 3
    calls = [call for call in cluster.data["calls"] if call[0] in ("get", "apply")]
    assert all("--request-timeout=30s" in call for call in calls), "every API call is bounded"


def test_from_skips_earlier_steps_but_applies_the_runs_configuration(tmp_path):
    cluster = Cluster(tmp_path)
    result = cluster.run("gpu", RUN_NAME="r1", FROM="train")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("skip ") == 3
    assert "ConfigMap/meddiffuse-pipeline-r1" in cluster.data["applied"]
    assert [k for k in cluster.data["applied"] if k.startswith("Job/")] == []


@pytest.mark.parametrize(
    ("env", "args", "message"),
    [
        ({"FROM": "trian"}, ["k8s/overlays/gpu"], "FROM=trian is not one of"),
        ({"RUN_NAME": "Run_1"}, ["k8s/overlays/gpu"], "RUN_NAME 'Run_1' must be"),
        ({"RUN_NAME": "a-run-name-of-25-letters5"}, ["k8s/overlays/gpu"], "must be 1-24 characters"),
        ({"TIMEOUT": "1 day"}, ["k8s/overlays/gpu"], "not a duration"),
        ({}, ["k8s/overlays/nowhere"], "usage:"),
    ],
    ids=["from", "run-name", "run-name-length", "timeout", "overlay"],
)
def test_usage_errors_exit_2_before_anything_is_applied(tmp_path, env, args, message):
    cluster = Cluster(tmp_path)
    result = subprocess.run(
        [str(SCRIPT), *args], cwd=K8S.parent, env={**cluster.env, **env}, text=True, capture_output=True, timeout=60
    )
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not any(call[0] in ("apply", "get") for call in cluster.data.get("calls", []))


def test_standin_refuses_what_it_does_not_know(tmp_path):
    """The stand-in is strict: a call the script makes that it does not emulate fails the test, not passes it."""
    cluster = Cluster(tmp_path)
    result = subprocess.run(
        ["kubectl", "delete", "job", "x"], env=cluster.env, text=True, capture_output=True, timeout=60
    )
    assert result.returncode == 97 and "unsupported call" in result.stderr
    assert copy.deepcopy(cluster.data["calls"]) == [["delete", "job", "x"]]
