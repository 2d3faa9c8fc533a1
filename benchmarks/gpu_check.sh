#!/usr/bin/env bash
# GPU checks for the engine issue, as one short script (under 8 minutes on one GPU):
#   1. `labtui bench` on cuda (engine vs transformers generate, prefetch, moves);
#   2. labtui stream offload vs accelerate's device_map CPU offload, same residency;
#   3. a raw pinned host->device copy: the link's peak (in `labtui doctor`).
# Without a GPU it runs the same on the simulated accelerator, so it always works.
# Writes JSON files into ${OUT:-bench-out}/.
set -euo pipefail
out="${OUT:-bench-out}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
dev=sim
if python3 -c 'import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then dev=cuda; fi
echo "device: $dev"
python3 -c 'import json; from labtui.engine.devices import doctor_info; print(json.dumps(doctor_info()))' | tee "$out/doctor.json"
timeout 300 labtui bench --json --device "$dev" --models llama-30m,qwen3-150m ${QUICK:+--quick} | tee "$out/bench.json"
timeout 180 python3 benchmarks/offload_vs_accelerate.py --model zoo:qwen3-400m --residency 0.5 | tee "$out/offload_vs_accelerate.json"
echo "wrote $out/"
