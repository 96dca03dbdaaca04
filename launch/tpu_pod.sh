#!/usr/bin/env bash
# Usage: launch/tpu_pod.sh TPU_NAME ZONE [--project P] [--setup] [--repo DIR] -- COMMAND [ARGS...]
#
# Runs COMMAND (e.g. `most train --config configs/most_stage1.yaml --mesh fsdp=-1,data=1
# --run-dir /mnt/shared/runs/stage1`) on every worker of the TPU VM slice TPU_NAME at once, through
# `gcloud compute tpus tpu-vm ssh --worker=all`. Each worker is one JAX process; MOST_DISTRIBUTED=1
# makes most_jax call jax.distributed.initialize(), which finds the other workers from the TPU
# metadata. --setup first installs the repository (copied to DIR, default ~/most_jax, with
# `pip install -e '.[aot]'`, which brings libtpu) on every worker.
#
# Logs: every worker writes ~/most_logs/<UTC time>/worker_<hostname>.log; worker 0's output is also
# what gcloud prints here. Checkpoints and metrics go to --run-dir, which must be a directory every
# worker sees at the same path (a GCS FUSE mount or Filestore/NFS): all processes write their shards
# of each checkpoint there, and all read them back on --resume.
set -euo pipefail

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
[[ $# -ge 1 && ( $1 == -h || $1 == --help ) ]] && usage 0
[[ $# -ge 2 ]] || usage
tpu=$1 zone=$2; shift 2
project_args=() setup=0 repo='~/most_jax'
while [[ $# -gt 0 && $1 != -- ]]; do
  case $1 in
    --project) project_args=(--project "$2"); shift 2 ;;
    --setup) setup=1; shift ;;
    --repo) repo=$2; shift 2 ;;
    *) echo "tpu_pod.sh: unknown option $1" >&2; usage ;;
  esac
done
[[ $# -ge 2 && $1 == -- ]] || usage
shift
command -v gcloud >/dev/null || { echo "tpu_pod.sh: gcloud is not installed" >&2; exit 1; }

ssh_all() {
  gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" "${project_args[@]}" --worker=all --command "$1"
}

if (( setup )); then
  here=$(cd "$(dirname "$0")/.." && pwd)
  gcloud compute tpus tpu-vm scp --recurse "$here" "$tpu:${repo}" --zone "$zone" "${project_args[@]}" --worker=all
  ssh_all "cd ${repo} && python3 -m pip install --quiet -e '.[aot]'"
fi

stamp=$(date -u +%Y%m%dT%H%M%SZ)
quoted=$(printf '%q ' "$@")
ssh_all "mkdir -p ~/most_logs/$stamp && cd ${repo} && export MOST_DISTRIBUTED=1 && \
  ${quoted} 2>&1 | tee ~/most_logs/$stamp/worker_\$(hostname).log; exit \${PIPESTATUS[0]}"
