#!/usr/bin/env bash
# Launch grow_megatron training with torchrun, on one node or several.
#
#   single node, 8 ranks:   examples/launch_torchrun.sh examples/smollm360m_lidas.yaml
#   2 nodes x 8 GPUs:        NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 examples/launch_torchrun.sh CONFIG   (on node0)
#                            NNODES=2 NODE_RANK=1 MASTER_ADDR=node0 examples/launch_torchrun.sh CONFIG   (on node1)
#   CPU (gloo), 4 ranks:     NPROC=4 examples/launch_torchrun.sh examples/tiny_lidas.yaml --set parallel.tensor_parallel=2
#   interleaved pipeline:    NPROC=2 examples/launch_torchrun.sh examples/tiny_lidas.yaml --set parallel.pipeline_parallel=2 \
#                              --set parallel.virtual_stages=2 --set train.micro_batch_size=8
#
#   elastic restart:         MAX_RESTARTS=3 examples/launch_torchrun.sh CONFIG   (a failed worker restarts the
#                              workers, which resume from the last checkpoint; default 0: the job fails)
#   Slurm:                   examples/launch_slurm.sbatch (sbatch; one torchrun per node via srun)
#
# The world size (NNODES x NPROC) must factor into tensor_parallel x pipeline_parallel x data
# parallel; the run stops with a message naming the field otherwise. Only rank 0 logs.
set -euo pipefail
CONFIG=${1:?usage: launch_torchrun.sh CONFIG.yaml [--set key=value ...]}
shift
if command -v nvidia-smi >/dev/null 2>&1; then
  DEFAULT_NPROC=$(nvidia-smi -L | wc -l)
else
  DEFAULT_NPROC=2
fi
NPROC=${NPROC:-$DEFAULT_NPROC}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
# A restarted round must not reuse the first round's rendezvous store: torch 2.13 shares it by
# default, and the restarted workers' gloo/NCCL setup then reads the dead workers' addresses and
# hangs in init_process_group (seen with --max-restarts on gloo).
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-1}
exec torchrun --nnodes "$NNODES" --node-rank "$NODE_RANK" --nproc-per-node "$NPROC" --max-restarts "${MAX_RESTARTS:-0}" \
  --rdzv-backend c10d --rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv-id "${RDZV_ID:-grow_megatron}" \
  -m grow_megatron.cli train "$CONFIG" "$@"
