#!/usr/bin/env bash
# Apply an overlay one step at a time, each after the one before has completed:
#   k8s/run-pipeline.sh k8s/overlays/gpu [kubectl flags such as -n NAMESPACE]
# FROM=convert|models|warm-cache|train starts at a later step (the earlier ones already done);
# TIMEOUT (default 24h) bounds each wait. Needs kubectl and the Secret meddiffuse-s3 (see k8s/README.md).
set -euo pipefail

overlay="${1:?usage: k8s/run-pipeline.sh OVERLAY_DIR [kubectl flags]}"
shift
timeout="${TIMEOUT:-24h}"
from="${FROM:-shared}"
steps=(shared convert models warm-cache train)
started=false

step() {  # step NAME SELECTOR [JOB...]: apply the objects SELECTOR picks, then wait for each JOB to complete
    local name="$1" selector="$2"
    shift 2
    [[ "$name" == "$from" ]] && started=true
    if [[ "$started" != true ]]; then
        echo "skip $name (FROM=$from)"
        return
    fi
    echo "== $name"
    kubectl apply -k "$overlay" -l "$selector" "${kubectl_flags[@]}"
    for job in "$@"; do
        kubectl wait --for=condition=complete "job/$job" --timeout="$timeout" "${kubectl_flags[@]}"
    done
}

kubectl_flags=("$@")
if [[ ! " ${steps[*]} " =~ " ${from} " ]]; then
    echo "FROM=$from is not one of: ${steps[*]}" >&2
    exit 2
fi
step shared '!app.kubernetes.io/component'
step convert 'app.kubernetes.io/component=convert' meddiffuse-convert
step models 'app.kubernetes.io/component in (generator,teacher)' meddiffuse-generator meddiffuse-teacher
step warm-cache 'app.kubernetes.io/component=warm-cache' meddiffuse-warm-cache
step train 'app.kubernetes.io/component=train'
echo "training started: kubectl logs -f -l app.kubernetes.io/component=train; checkpoints on meddiffuse-checkpoints"
