#!/usr/bin/env bash
# Usage: launch/local.sh N [--devices-per-process D] [--port P] [--logs DIR] -- COMMAND [ARGS...]
#
# Starts N JAX processes of COMMAND on this machine (e.g. `most train --config C --mesh data=2`),
# joined through jax.distributed.initialize (most_jax.sharding.initialize_distributed reads
# MOST_COORDINATOR_ADDRESS / MOST_NUM_PROCESSES / MOST_PROCESS_ID) with CPU collectives (gloo).
# Each process simulates D CPU devices (default 1), so the global mesh has N x D devices.
# Output of process i goes to DIR/process_i.log (default: a fresh temporary directory) and, prefixed
# with [i], to this terminal. If one process exits with an error, the others are stopped and this
# script exits with that status: nobody waits forever in a collective.
set -euo pipefail

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }

[[ $# -ge 1 && ( $1 == -h || $1 == --help ) ]] && usage 0
[[ $# -ge 2 ]] || usage
nproc=$1; shift
[[ $nproc =~ ^[1-9][0-9]*$ ]] || { echo "local.sh: N must be a positive integer, got '$nproc'" >&2; exit 2; }
devices=1
port=$(( 20000 + RANDOM % 20000 ))
logs=""
while [[ $# -gt 0 && $1 != -- ]]; do
  case $1 in
    --devices-per-process) devices=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --logs) logs=$2; shift 2 ;;
    *) echo "local.sh: unknown option $1" >&2; usage ;;
  esac
done
[[ $# -ge 2 && $1 == -- ]] || usage
shift
logs=${logs:-$(mktemp -d -t most_local.XXXXXX)}
mkdir -p "$logs"
echo "local.sh: $nproc processes x $devices CPU device(s), coordinator 127.0.0.1:$port, logs in $logs" >&2

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap 'cleanup; exit 130' INT TERM

for (( i = 0; i < nproc; i++ )); do
  (
    export JAX_PLATFORMS=cpu
    export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$devices"
    export MOST_COORDINATOR_ADDRESS="127.0.0.1:$port" MOST_NUM_PROCESSES="$nproc" MOST_PROCESS_ID="$i"
    exec "$@" > >(tee "$logs/process_$i.log" | sed -u "s/^/[$i] /") 2>&1
  ) &
  pids+=("$!")
done

# Wait for processes as they finish; on the first failure stop the rest.
status=0
live=("${pids[@]}")
while (( ${#live[@]} > 0 )); do
  set +e
  wait -n -p finished "${live[@]}"
  rc=$?
  set -e
  live=($(printf '%s\n' "${live[@]}" | grep -vx "$finished" || true))
  if (( rc != 0 )); then
    echo "local.sh: process with pid $finished exited with status $rc; stopping the others (logs in $logs)" >&2
    status=$rc
    cleanup
    wait 2>/dev/null || true
    break
  fi
done
exit "$status"
