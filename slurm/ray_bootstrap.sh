#!/usr/bin/env bash
# Start Ray over the nodes of the current SLURM allocation, run the driver on the head node,
# tear Ray down, and requeue the job when the driver asks for it. Used by slurm/*.sub:
#   bash slurm/ray_bootstrap.sh python -m megatron_brrm.train --config R.yaml [overrides]
#
# 1. The Ray head starts on the first node, workers on the others, each as a background
#    `srun --overlap` step running `ray start --block --node-name=<SLURM hostname>`.
#    The head is up when its `ray start` prints "Ray runtime started."; a head that exits before
#    that (e.g. Ray's own 30 s limit for the raylet to register with the GCS, hit on an
#    overloaded node) is started again, RAY_HEAD_ATTEMPTS times in all.
# 2. It waits (polling, RAY_JOIN_TIMEOUT seconds) until every node has joined; otherwise it
#    stops with an error naming the missing nodes (their logs are in $LOG_DIR).
# 3. The driver runs on the head as an srun step with RAY_ADDRESS exported (the driver joins
#    that cluster). SIGUSR1 or SIGTERM to this script (SLURM's `--signal=B:USR1@<s>` before a
#    time limit or preemption) is forwarded to the driver as SIGUSR1: it checkpoints at the
#    end of its step and exits with code 3.
# 4. Ray is stopped by the PIDs of its steps (never `ray stop`, which would kill every Ray on
#    the node); then exit code 3 becomes `scontrol requeue` (needs `#SBATCH --requeue`) and the
#    requeued job resumes from the checkpoint's `latest`. Other exit codes are passed on.
#
# Environment (all optional):
#   PYTHON            interpreter with megatron_brrm and ray installed (default: python3)
#   GPUS_PER_NODE     GPUs each Ray node offers (default: SLURM_GPUS_ON_NODE, else 0 = CPU only)
#   CPUS_PER_NODE     CPUs each Ray node offers (default: SLURM_CPUS_ON_NODE, else nproc)
#   RAY_PORT          the head's GCS port (default 6379)
#   RAY_HEAD_IP       the head's address (default: `hostname --ip-address` on the head node)
#   RAY_START_ARGS    extra `ray start` arguments (ports, --object-store-memory, ...)
#   RAY_JOIN_TIMEOUT  seconds to wait for every node to join (default 300)
#   RAY_HEAD_ATTEMPTS times to start the Ray head before giving up (default 3)
#   CONTAINER_IMAGE   run every step in this container image (pyxis `--container-image`)
#   CONTAINER_MOUNTS  pyxis mounts (default: the submit directory)
#   LOG_DIR           this job's log folder (default: logs/<job name>-<job id>)
set -uo pipefail
: "${SLURM_JOB_ID:?run inside a SLURM allocation (sbatch or salloc)}"
REQUEUE_EXIT_CODE=3
PYTHON=${PYTHON:-python3}
GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-0}}
CPUS_PER_NODE=${CPUS_PER_NODE:-${SLURM_CPUS_ON_NODE:-$(nproc)}}
RAY_PORT=${RAY_PORT:-6379}
RAY_JOIN_TIMEOUT=${RAY_JOIN_TIMEOUT:-300}
RAY_HEAD_ATTEMPTS=${RAY_HEAD_ATTEMPTS:-3}
read -r -a RAY_EXTRA <<< "${RAY_START_ARGS:-}"
LOG_DIR=${LOG_DIR:-logs/${SLURM_JOB_NAME:-job}-$SLURM_JOB_ID}
RESTART=${SLURM_RESTART_COUNT:-0}
mkdir -p "$LOG_DIR"

SRUN=(srun --overlap --nodes=1 --ntasks=1)
if [ -n "${CONTAINER_IMAGE:-}" ]; then
  SRUN+=(--container-image="$CONTAINER_IMAGE" --container-mounts="${CONTAINER_MOUNTS:-$PWD:$PWD}"
         --container-workdir="$PWD")
fi
log() { echo "[ray_bootstrap $(date +%H:%M:%S)] $*"; }

mapfile -t NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
HEAD=${NODES[0]}
HEAD_IP=${RAY_HEAD_IP:-$("${SRUN[@]}" -w "$HEAD" hostname --ip-address | awk '{print $1}')}
export RAY_ADDRESS="$HEAD_IP:$RAY_PORT"
# Ray >= 2.5x authenticates with a token when one exists in ~/.ray (head) but a client joining an
# existing cluster does not look there unless RAY_AUTH_MODE=token: give every process of this job
# (exported through srun to every node) one fresh token, unless the site configured its own.
if [ -z "${RAY_AUTH_MODE:-}" ]; then
  export RAY_AUTH_MODE=token
  RAY_AUTH_TOKEN=${RAY_AUTH_TOKEN:-$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')}
  export RAY_AUTH_TOKEN
fi
log "job $SLURM_JOB_ID (restart $RESTART): ${#NODES[@]} node(s) [${NODES[*]}], head $HEAD at $RAY_ADDRESS," \
    "$GPUS_PER_NODE GPU(s) and $CPUS_PER_NODE CPU(s) per node; logs in $LOG_DIR"

RAY_PIDS=()
DRIVER=""
stop_ray() {
  [ "${#RAY_PIDS[@]}" -eq 0 ] && return 0
  log "stopping Ray (steps ${RAY_PIDS[*]})"
  kill -TERM "${RAY_PIDS[@]}" 2>/dev/null  # srun forwards SIGTERM; `ray start --block` then stops its node
  for _ in $(seq 1 60); do
    alive=0
    for pid in "${RAY_PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" -eq 0 ] && break
    sleep 1
  done
  kill -KILL "${RAY_PIDS[@]}" 2>/dev/null
  wait "${RAY_PIDS[@]}" 2>/dev/null
  RAY_PIDS=()
}
forward() {
  log "received $1: asking the driver to checkpoint at the end of its step (SIGUSR1)"
  [ -n "$DRIVER" ] && kill -USR1 "$DRIVER" 2>/dev/null
  [ -z "$DRIVER" ] && STOP_BEFORE_DRIVER=1
}
STOP_BEFORE_DRIVER=0
trap 'forward SIGUSR1' USR1
trap 'forward SIGTERM' TERM
trap stop_ray EXIT

# A signal for the batch step reaches this shell and its srun children, which forward it to
# their tasks: the Ray steps ignore SIGUSR1 (inherited by every Ray process), the driver acts on it.
start_node() {  # start_node NODE LOG [ray start args...]
  local node=$1 out=$2; shift 2
  "${SRUN[@]}" -w "$node" --output="$out" bash -c 'trap "" USR1; exec "$@"' ray-node \
    "$PYTHON" -m ray.scripts.scripts start --block --node-name="$node" --num-cpus="$CPUS_PER_NODE" \
    --num-gpus="$GPUS_PER_NODE" --disable-usage-stats "${RAY_EXTRA[@]}" "$@" &
  RAY_PIDS+=($!)
}

up=0
for attempt in $(seq 1 "$RAY_HEAD_ATTEMPTS"); do
  HEAD_LOG="$LOG_DIR/ray-$HEAD-r$RESTART.log"
  [ "$attempt" -gt 1 ] && HEAD_LOG="$LOG_DIR/ray-$HEAD-r$RESTART-a$attempt.log"
  start_node "$HEAD" "$HEAD_LOG" --head --node-ip-address="$HEAD_IP" --port="$RAY_PORT" --include-dashboard=false
  for _ in $(seq 1 "$RAY_JOIN_TIMEOUT"); do
    if grep -q "Ray runtime started" "$HEAD_LOG" 2>/dev/null; then up=1; break; fi
    if ! kill -0 "${RAY_PIDS[-1]}" 2>/dev/null; then break; fi
    sleep 1
  done
  [ "$up" -eq 1 ] && break
  log "warning: the Ray head on $HEAD did not start (attempt $attempt of $RAY_HEAD_ATTEMPTS, RAY_HEAD_ATTEMPTS);" \
      "end of $HEAD_LOG:"
  tail -n 5 "$HEAD_LOG" 2>/dev/null
  stop_ray  # this attempt's step (its srun step ends with every process it started)
done
if [ "$up" -ne 1 ]; then
  log "error: the Ray head on $HEAD did not start at $RAY_ADDRESS in $RAY_HEAD_ATTEMPTS attempt(s); see $LOG_DIR/ray-$HEAD-r$RESTART*.log"
  exit 1
fi
for node in "${NODES[@]:1}"; do
  start_node "$node" "$LOG_DIR/ray-$node-r$RESTART.log" --address="$RAY_ADDRESS"
done
NODE_LIST=$(IFS=,; echo "${NODES[*]}")
if ! "${SRUN[@]}" -w "$HEAD" "$PYTHON" -m megatron_brrm.workers.ray_nodes --address "$RAY_ADDRESS" \
     --nodes "$NODE_LIST" --timeout "$RAY_JOIN_TIMEOUT"; then
  if [ "$STOP_BEFORE_DRIVER" -ne 1 ]; then
    log "error: not every node joined the Ray cluster within ${RAY_JOIN_TIMEOUT} s (RAY_JOIN_TIMEOUT);" \
        "see $LOG_DIR/ray-<node>-r$RESTART.log"
    exit 1
  fi
else
  log "Ray is up on ${#NODES[@]} node(s); running the driver on $HEAD: $*"
fi

if [ "$STOP_BEFORE_DRIVER" -eq 1 ]; then
  log "a stop signal arrived during start-up: requeueing without running the driver"
  rc=$REQUEUE_EXIT_CODE
else
  "${SRUN[@]}" -w "$HEAD" "$@" &
  DRIVER=$!
  rc=""
  while [ -z "$rc" ]; do
    wait "$DRIVER"
    st=$?
    # wait returns early (status > 128) when a trapped signal arrives; the driver runs on
    if [ "$st" -gt 128 ] && kill -0 "$DRIVER" 2>/dev/null; then continue; fi
    rc=$st
  done
  log "driver exited with code $rc"
fi
stop_ray
if [ "$rc" -eq "$REQUEUE_EXIT_CODE" ]; then
  log "requeueing job $SLURM_JOB_ID; the next run resumes from the latest checkpoint"
  if scontrol requeue "$SLURM_JOB_ID"; then exit 0; fi
  log "error: scontrol requeue failed (does the job have #SBATCH --requeue?)"
fi
exit "$rc"
