#!/usr/bin/env bash
# Start a Ray cluster over the nodes of the current SLURM allocation, then run a command on
# the head node. Used by the brrm_*.sub scripts:
#   bash slurm/ray_bootstrap.sh python -m megatron_brrm.train --config ... [overrides]
# Environment: GPUS_PER_NODE (default 8), RAY_PORT (6379), CONTAINER_IMAGE (optional, passed to srun).
set -euo pipefail
: "${SLURM_JOB_NODELIST:?run inside a SLURM allocation (sbatch/salloc)}"
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
RAY_PORT=${RAY_PORT:-6379}
CPUS_PER_NODE=${SLURM_CPUS_ON_NODE:-$(nproc)}
SRUN_ARGS=(--overlap --ntasks-per-node=1)
[ -n "${CONTAINER_IMAGE:-}" ] && SRUN_ARGS+=(--container-image="$CONTAINER_IMAGE" --container-mounts="$PWD:$PWD" --container-workdir="$PWD")

mapfile -t NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
HEAD=${NODES[0]}
HEAD_IP=$(srun "${SRUN_ARGS[@]}" --nodes=1 -w "$HEAD" hostname --ip-address | awk '{print $1}')
export RAY_ADDRESS="$HEAD_IP:$RAY_PORT"
echo "[ray_bootstrap] head $HEAD ($RAY_ADDRESS), ${#NODES[@]} node(s) x $GPUS_PER_NODE GPU(s)"

srun "${SRUN_ARGS[@]}" --nodes=1 -w "$HEAD" \
  ray start --head --node-ip-address="$HEAD_IP" --port="$RAY_PORT" \
  --num-gpus="$GPUS_PER_NODE" --num-cpus="$CPUS_PER_NODE" --disable-usage-stats --block &
sleep 15
for node in "${NODES[@]:1}"; do
  srun "${SRUN_ARGS[@]}" --nodes=1 -w "$node" \
    ray start --address="$RAY_ADDRESS" --num-gpus="$GPUS_PER_NODE" --num-cpus="$CPUS_PER_NODE" \
    --disable-usage-stats --block &
done

# Wait until every node's GPUs are registered (10 minutes at most).
want=$(( ${#NODES[@]} * GPUS_PER_NODE ))
for _ in $(seq 1 120); do
  have=$(srun "${SRUN_ARGS[@]}" --nodes=1 -w "$HEAD" python -c \
    "import ray; ray.init(address='auto', logging_level='ERROR'); print(int(ray.cluster_resources().get('GPU', 0)))" 2>/dev/null | tail -n1 || echo 0)
  [ "$have" -ge "$want" ] && break
  sleep 5
done
echo "[ray_bootstrap] cluster has ${have:-0}/$want GPUs; running: $*"
srun "${SRUN_ARGS[@]}" --nodes=1 -w "$HEAD" "$@"
