"""The NetworkPolicies (components/network-policy, in gpu-jobset): read with NetworkPolicy's own rules (policies add
up; a pod selected by any policy of a type allows only what some policy allows), the pipeline's pods get no traffic
but the training pods' own, and reach only DNS, the object store over HTTPS and the Pod Identity agent."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlparse

import pytest
from k8s_manifests import OVERLAYS, by_name, kubectl, pod_specs, render

pytestmark = pytest.mark.skipif(kubectl() is None, reason="kubectl is not installed: the overlays cannot be rendered")

KUBE_DNS = {"k8s-app": "kube-dns"}
KUBE_SYSTEM = "kube-system"


def _matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _peer(peer: dict, target: dict, namespace: str) -> bool:
    """Does ``peer`` (a from/to entry) take ``target``: {"labels", "namespace"} for a pod or {"ip"} for an address."""
    if "ipBlock" in peer:
        if "ip" not in target:
            return False
        address = ipaddress.ip_address(target["ip"])
        block = peer["ipBlock"]
        return address in ipaddress.ip_network(block["cidr"]) and not any(
            address in ipaddress.ip_network(e) for e in block.get("except", [])
        )
    if "ip" in target:
        return False
    if "namespaceSelector" in peer:
        ns_labels = {"kubernetes.io/metadata.name": target["namespace"]}
        if not _matches(peer["namespaceSelector"], ns_labels):
            return False
    elif target["namespace"] != namespace:
        return False
    return _matches(peer.get("podSelector", {}), target.get("labels", {}))


def _allows(rules: list[dict], key: str, target: dict, port: int, protocol: str, namespace: str) -> bool:
    for rule in rules:
        peers, ports = rule.get(key), rule.get("ports")
        if peers is not None and not any(_peer(p, target, namespace) for p in peers):
            continue
        if ports and not any(p.get("port") in (None, port) and p.get("protocol", "TCP") == protocol for p in ports):
            continue
        return True
    return False


def allowed(policies, source: dict, destination: dict, port: int, protocol: str = "TCP", ns: str = "team") -> bool:
    """May ``source`` (a pipeline pod's labels) open ``port`` at ``destination`` under ``policies``?"""
    egress = [
        p for p in policies if "Egress" in p["spec"]["policyTypes"] and _matches(p["spec"]["podSelector"], source)
    ]
    if egress and not any(_allows(p["spec"].get("egress", []), "to", destination, port, protocol, ns) for p in egress):
        return False
    if "labels" in destination and destination.get("namespace", ns) == ns:
        ingress = [
            p
            for p in policies
            if "Ingress" in p["spec"]["policyTypes"] and _matches(p["spec"]["podSelector"], destination["labels"])
        ]
        source_peer = {"labels": source, "namespace": ns}
        if ingress and not any(
            _allows(p["spec"].get("ingress", []), "from", source_peer, port, protocol, ns) for p in ingress
        ):
            return False
    return True


def _pods(overlay: str) -> dict[str, dict]:
    return {
        f"{p.workload['metadata']['name']}/{p.role}": p.template["metadata"]["labels"]
        for p in pod_specs(render(overlay))
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_is_one_the_policies_select(overlay):
    for name, labels in _pods(overlay).items():
        assert labels.get("app.kubernetes.io/part-of") == "meddiffuse-stream", name


def test_the_pipeline_reaches_only_dns_the_object_store_and_its_own_rendezvous():
    objects = render("gpu-jobset")
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    assert len(policies) == 2
    pods = _pods("gpu-jobset")
    leader, worker = pods["meddiffuse-train/leader"], pods["meddiffuse-train/workers"]
    teacher, convert = pods["meddiffuse-teacher/None"], pods["meddiffuse-convert/None"]
    endpoint = urlparse(by_name(objects, "ConfigMap", "meddiffuse-pipeline")["data"]["AWS_ENDPOINT_URL"])
    store_port = endpoint.port or {"https": 443, "http": 80}[endpoint.scheme]
    s3 = {"ip": "52.216.8.12"}  # an address of AWS S3
    dns = {"labels": KUBE_DNS, "namespace": KUBE_SYSTEM}
    for pod in (leader, worker, teacher, convert):
        assert allowed(policies, pod, dns, 53, "UDP") and allowed(policies, pod, dns, 53, "TCP")
        assert allowed(policies, pod, s3, store_port)
        assert allowed(policies, pod, {"ip": "169.254.170.23"}, 80), "EKS Pod Identity agent"
        assert not allowed(policies, pod, {"ip": "169.254.169.254"}, 80), "instance metadata: node credentials"
        assert not allowed(policies, pod, {"ip": "10.0.0.5"}, 5432), "nothing else"
        assert not allowed(policies, pod, {"labels": {"app": "other"}, "namespace": "team"}, 8080)
    for port in (29400, 41237):  # the rendezvous, and a store / gloo / NCCL port chosen at run time
        assert allowed(policies, worker, {"labels": leader, "namespace": "team"}, port)
        assert allowed(policies, leader, {"labels": worker, "namespace": "team"}, port)
        assert not allowed(policies, teacher, {"labels": leader, "namespace": "team"}, port)
        assert not allowed(policies, leader, {"labels": teacher, "namespace": "team"}, port)
    assert not allowed(policies, {"app": "other"}, {"labels": leader, "namespace": "team"}, 29400), "no ingress"


def test_the_policy_reading_can_fail():
    """Without the policies everything is allowed; with an open egress rule the 'nothing else' check fails."""
    pods = _pods("gpu-jobset")
    teacher = pods["meddiffuse-teacher/None"]
    assert allowed([], teacher, {"ip": "10.0.0.5"}, 5432)
    policies = [o for o in render("gpu-jobset") if o["kind"] == "NetworkPolicy"]
    opened = [*policies, {"spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}]}}]
    assert allowed(opened, teacher, {"ip": "10.0.0.5"}, 5432)
