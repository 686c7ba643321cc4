#!/usr/bin/env bash
# Train with one process per GPU (DDP through accelerate); any `bedgen train` flag can follow.
#   train/launch-multi-gpu.sh DATA RUN --preset ddpm-mid --resolution 128
# Several machines: add  --num_machines N --machine_rank R --main_process_ip IP --main_process_port 29500
# to the accelerate part below on every machine (same DATA path or a copy on each).
# On a machine without GPUs, NGPU=2 gives two CPU processes (gloo) — handy for testing the setup.
set -euo pipefail
data="$1"; run="$2"; shift 2
ngpu="${NGPU:-$(nvidia-smi -L 2>/dev/null | wc -l)}"
[ "$ngpu" -ge 1 ] || ngpu=1
exec accelerate launch --multi_gpu --num_processes "$ngpu" --num_machines 1 --dynamo_backend no \
  -m bedgen train --data "$data" --out "$run" "$@"
