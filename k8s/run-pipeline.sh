#!/usr/bin/env bash
# Run an overlay as one named run, step by step, each step after the one before has completed:
#   RUN_NAME=rsna-lr3e4 k8s/run-pipeline.sh k8s/overlays/gpu-jobset [kubectl flags such as -n NAMESPACE]
#
# The run's Jobs, JobSet or PyTorchJob, Service and ConfigMaps are named NAME-RUN_NAME and labelled
# meddiffuse.io/run=RUN_NAME; RUN_NAME (default: the overlay's pipeline.env) is also the run's folder on the models
# and checkpoints volumes. Every object carries meddiffuse.io/settings, a hash of the rendered overlay: running the
# same RUN_NAME again reuses its Jobs (finished steps are not run again) only when that hash matches, and refuses
# (exit 3) when the settings changed — give the new settings a new RUN_NAME.
#
# Each wait watches success and failure: a failed Job (or JobSet, PyTorchJob) stops the run at once, exit 1, with
# its failure reason and its pods' last log lines. Nothing waits unbounded: TIMEOUT bounds each step (default 24h),
# TRAIN_TIMEOUT training (default 168h), every kubectl call has a request timeout.
#
# Settings (environment): RUN_NAME; FROM=convert|models|warm-cache|train starts at a later step (the earlier ones
# done in this run; the run's ConfigMaps are applied whatever FROM says); POLL seconds between status checks (default 10); WAIT_TRAIN=0 returns once training is
# started; KUBECTL (default kubectl). Exit: 0 done, 1 a step failed or timed out, 2 usage, 3 run exists with other
# settings. Needs kubectl >= 1.27 and the Secret meddiffuse-s3 (or a workload identity, k8s/README.md).
set -euo pipefail

usage() { echo "usage: [RUN_NAME=NAME] k8s/run-pipeline.sh OVERLAY_DIR [kubectl flags]" >&2; exit 2; }
die() { echo "run-pipeline: error: $*" >&2; exit "${code:-1}"; }

[[ $# -ge 1 && -d "$1" ]] || usage
overlay="$(cd "$1" && pwd)"
shift
kubectl_flags=("$@")
kubectl="${KUBECTL:-kubectl}"
from="${FROM:-shared}"
poll="${POLL:-10}"
steps=(shared convert models warm-cache train)
request=(--request-timeout=30s)

seconds() {  # 90, 90s, 30m, 24h, 7d -> seconds
    local value="$1"
    [[ "$value" =~ ^([0-9]+)([smhd]?)$ ]] || code=2 die "not a duration: $value (e.g. 90s, 30m, 24h)"
    local n="${BASH_REMATCH[1]}"
    case "${BASH_REMATCH[2]}" in
        m) echo $((n * 60)) ;; h) echo $((n * 3600)) ;; d) echo $((n * 86400)) ;; *) echo "$n" ;;
    esac
}
timeout_s="$(seconds "${TIMEOUT:-24h}")"
train_timeout_s="$(seconds "${TRAIN_TIMEOUT:-168h}")"
[[ " ${steps[*]} " == *" ${from} "* ]] || code=2 die "FROM=$from is not one of: ${steps[*]}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir "$work/run"
"$kubectl" kustomize "$overlay" >"$work/overlay.yaml" || die "kubectl kustomize $overlay failed"

config_value() {  # config_value KEY FILE: KEY of the ConfigMap meddiffuse-pipeline* in a rendered file
    awk -v key="$1" '
        function flush() { if (cm && value != "") { print value; found = 1; exit } cm = 0; value = "" }
        /^---$/ { flush(); next }
        /^kind: ConfigMap$/ { kind = 1 }
        /^  name: meddiffuse-pipeline/ { cm = 1 }
        $0 ~ "^  " key ": " { value = substr($0, length(key) + 5); gsub(/^"|"$/, "", value) }
        END { if (!found) flush() }' "$2"
}
run="${RUN_NAME:-$(config_value RUN_NAME "$work/overlay.yaml")}"
[[ "$run" =~ ^[a-z]([a-z0-9-]{0,22}[a-z0-9])?$ ]] || code=2 die "RUN_NAME '$run' must be 1-24 characters: lower \
case letters, digits and '-', starting with a letter (it becomes part of Job and pod names, at most 63)"
sha256() { if command -v sha256sum >/dev/null; then sha256sum; else shasum -a 256; fi; }
settings="$( (echo "run=$run"; cat "$work/overlay.yaml") | sha256 | cut -c1-16)"
relative() {  # the path of directory $2 seen from directory $1 (kustomize takes no absolute resource paths)
    local up="" rest="${1#/}"
    while [[ -n "$rest" ]]; do up="../$up"; [[ "$rest" == */* ]] && rest="${rest#*/}" || rest=""; done
    echo "${up}${2#/}"
}

# The run: one more kustomization over the overlay that renames the run's objects (not the shared claims), labels
# and annotates them, and tells kustomize where the custom resources refer to renamed objects.
cat >"$work/run/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $(relative "$work/run" "$overlay")
configMapGenerator:
  - name: meddiffuse-pipeline
    behavior: merge
    literals:
      - RUN_NAME=$run
    options:
      disableNameSuffixHash: true
transformers:
  - run.yaml
configurations:
  - references.yaml
EOF
kinds=(Job JobSet PyTorchJob ConfigMap Service)
{
    echo "apiVersion: builtin"; echo "kind: PrefixSuffixTransformer"; echo "metadata: {name: run-name}"
    echo "suffix: -$run"; echo "fieldSpecs:"
    for kind in "${kinds[@]}"; do echo "  - {kind: $kind, path: metadata/name}"; done
    echo "---"; echo "apiVersion: builtin"; echo "kind: LabelTransformer"; echo "metadata: {name: run-label}"
    echo "labels: {meddiffuse.io/run: $run}"; echo "fieldSpecs:"
    for kind in "${kinds[@]}"; do echo "  - {kind: $kind, path: metadata/labels, create: true}"; done
    echo "  - {kind: Job, path: spec/template/metadata/labels, create: true}"
    echo "  - {kind: Service, path: spec/selector, create: true}"
    echo "---"; echo "apiVersion: builtin"; echo "kind: AnnotationsTransformer"; echo "metadata: {name: run-settings}"
    echo "annotations: {meddiffuse.io/settings: \"$settings\"}"; echo "fieldSpecs:"
    for kind in "${kinds[@]}"; do echo "  - {kind: $kind, path: metadata/annotations, create: true}"; done
} >"$work/run/run.yaml"
{
    echo "nameReference:"
    echo "  - kind: ConfigMap"; echo "    fieldSpecs:"
    for spec in "JobSet spec/replicatedJobs/template/spec/template/spec" \
        "PyTorchJob spec/pytorchReplicaSpecs/Master/template/spec" \
        "PyTorchJob spec/pytorchReplicaSpecs/Worker/template/spec"; do
        echo "      - {kind: ${spec%% *}, path: ${spec#* }/containers/envFrom/configMapRef/name}"
        echo "      - {kind: ${spec%% *}, path: ${spec#* }/volumes/configMap/name}"
    done
    echo "  - kind: Service"; echo "    fieldSpecs:"; echo "      - {kind: Job, path: spec/template/spec/subdomain}"
} >"$work/run/references.yaml"
"$kubectl" kustomize "$work/run" >"$work/run.yaml" || die "rendering run $run of $overlay failed"

present() { grep -qx "kind: $1" "$work/run.yaml"; }
train_kind=Job
present PyTorchJob && train_kind=PyTorchJob
present JobSet && train_kind=JobSet
echo "run $run (settings $settings) of $overlay"

# Reuse only what this run made with these settings.
query=(Job ConfigMap)
[[ "$train_kind" != Job ]] && query+=("$train_kind")
existing="$("$kubectl" get "$(IFS=,; echo "${query[*]}")" -l "meddiffuse.io/run=$run" "${request[@]}" \
    "${kubectl_flags[@]}" -o jsonpath='{range .items[*]}{.kind}/{.metadata.name} {.metadata.annotations.meddiffuse\.io/settings}{"\n"}{end}')" \
    || die "cannot list run $run's objects (kubectl get failed)"
stale="$(awk -v want="$settings" 'NF && $2 != want { print "  " $1 " (settings " ($2 == "" ? "none" : $2) ")" }' \
    <<<"$existing")"
if [[ -n "$stale" ]]; then
    code=3 die "run $run already exists with other settings:
$stale
  a new RUN_NAME runs these settings anew; or delete run $run first:
  $kubectl delete $(IFS=,; echo "${query[*]}") -l meddiffuse.io/run=$run ${kubectl_flags[*]}"
fi
[[ -n "$existing" ]] && echo "reusing run $run: $(wc -l <<<"$existing") objects with these settings"

conditions() {  # the conditions of KIND/NAME that are True, space-separated
    "$kubectl" get "$1" "${request[@]}" "${kubectl_flags[@]}" \
        -o jsonpath='{range .status.conditions[?(@.status=="True")]}{.type}{" "}{end}'
}

failed() {  # failed KIND/NAME SELECTOR: say why and show the pods' last lines, then exit 1
    local why
    why="$("$kubectl" get "$1" "${request[@]}" "${kubectl_flags[@]}" -o \
        jsonpath='{range .status.conditions[?(@.status=="True")]}{.type}={.reason}: {.message}{"\n"}{end}' \
        2>/dev/null | grep -E '^(Failed|FailureTarget)=' | head -1 || true)"
    echo "run-pipeline: $1 failed${why:+ ($why)}; its pods' last log lines:" >&2
    "$kubectl" logs -l "$2" --all-containers --prefix --tail=20 --max-log-requests=10 "${request[@]}" \
        "${kubectl_flags[@]}" >&2 || echo "  (no logs: the pods are gone)" >&2
    die "run $run stopped at $1; after fixing the cause, delete it ($kubectl delete $1 ${kubectl_flags[*]}) and \
run again with FROM set to its step"
}

wait_for() {  # wait_for KIND NAME TIMEOUT_S: until it succeeds (return), fails or times out (exit 1)
    local kind="$1" name="$2" limit="$3" done selector state errors=0 shown=""
    case "$kind" in
        Job) done=Complete; selector="batch.kubernetes.io/job-name=$name" ;;
        JobSet) done=Completed; selector="jobset.sigs.k8s.io/jobset-name=$name" ;;
        PyTorchJob) done=Succeeded; selector="training.kubeflow.org/job-name=$name" ;;
    esac
    local deadline=$((SECONDS + limit)) ref
    ref="$(tr '[:upper:]' '[:lower:]' <<<"$kind")/$name"
    while true; do
        if state="$(conditions "$ref")"; then
            errors=0
            case " $state " in
                *" Failed "* | *" FailureTarget "*) failed "$ref" "$selector" ;;
                *" $done "*) echo "$kind $name: $done"; return 0 ;;
                *" Suspended "*) [[ "$shown" == queued ]] || echo "$kind $name: queued (suspended until admitted)"
                    shown=queued ;;
            esac
        else
            errors=$((errors + 1))
            ((errors < 3)) || die "cannot read the status of $ref (3 kubectl errors in a row)"
        fi
        ((SECONDS < deadline)) || die "$ref did not finish within $limit s (TIMEOUT/TRAIN_TIMEOUT)"
        sleep "$poll"
    done
}

started=false  # the shared step (the run's ConfigMaps, the claims) is applied whatever FROM says
step() {  # step NAME SELECTOR [KIND/NAME...]: apply what SELECTOR picks, then wait for each workload
    local name="$1" selector="$2"
    shift 2
    [[ "$name" == "$from" || "$name" == shared ]] && started=true
    if [[ "$started" != true ]]; then
        echo "skip $name (FROM=$from)"
        return
    fi
    echo "== $name"
    "$kubectl" apply -f "$work/run.yaml" -l "$selector" "${request[@]}" "${kubectl_flags[@]}" \
        || die "kubectl apply of step $name failed"
    [[ "$name" == shared ]] && started=false && [[ "$from" == shared ]] && started=true
    for workload in "$@"; do
        local limit="$timeout_s"
        [[ "$name" == train ]] && limit="$train_timeout_s"
        if [[ "$name" == train && "${WAIT_TRAIN:-1}" == 0 ]]; then
            echo "training started: kubectl logs -f -l meddiffuse.io/run=$run,app.kubernetes.io/component=train"
            return
        fi
        wait_for "${workload%%/*}" "${workload#*/}" "$limit"
    done
}

step shared '!app.kubernetes.io/component'
step convert 'app.kubernetes.io/component=convert' "Job/meddiffuse-convert-$run"
step models 'app.kubernetes.io/component in (generator,teacher)' "Job/meddiffuse-generator-$run" \
    "Job/meddiffuse-teacher-$run"
step warm-cache 'app.kubernetes.io/component=warm-cache' "Job/meddiffuse-warm-cache-$run"
step train 'app.kubernetes.io/component=train' "$train_kind/meddiffuse-train-$run"
[[ "${WAIT_TRAIN:-1}" == 0 ]] || echo "run $run finished: checkpoints and metrics.json in /checkpoints/$run"
