#!/usr/bin/env bash
# The CUDA checks, for a machine with a GPU and a CUDA build of torch (run from the repo root):
# CUDA unit tests; a few base-size training steps with bf16 AMP and an fp16 (grad scaler) run;
# evaluation on the GPU; torchrun with nccl against the plain run; the throughput benchmark
# (writes the throughput-cuda section of benchmarks/RESULTS.md). Logs and results go to $OUT.
set -uo pipefail
export PYTHONPATH=src PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/ivt-cuda-out}
W=${WORK:-/tmp/ivt-cuda-work}
mkdir -p "$OUT"; rm -rf "$W"; mkdir -p "$W"
step() { echo; echo "=== $* ==="; }

step "device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(), 'bf16', torch.cuda.is_bf16_supported())"

step "CUDA unit tests"
$PY -m pytest -q -p no:cacheprovider tests/test_model_encoder.py -k cuda

step "SynthPedes draw"
$PY -m ivt synth --out "$W/sp" --ids 200 --seed 1 --quiet | tail -3

step "base training, bf16 AMP, one epoch (validation included), then evaluation on the GPU"
$PY -m ivt train --set model.size=base data.path="$W/sp" train.device=cuda train.precision=bf16 \
    train.batch_size=28 train.sampler=identity train.k_per_id=4 train.epochs=1 data.max_text_len=64 \
    train.log_every=5 --out "$W/base" && tail -3 "$W/base/metrics.jsonl"
$PY -m ivt evaluate --checkpoint "$W/base" --data "$W/sp" --device cuda --json "$OUT/base_eval.json"

step "tiny training with fp16 AMP (grad scaler)"
$PY -m ivt train --set data.path="$W/sp" train.device=cuda train.precision=fp16 train.epochs=2 \
    train.eval_every=1 --out "$W/fp16" && tail -2 "$W/fp16/metrics.jsonl"

step "torchrun (nccl, one process per GPU) against the plain run"
TINY=(model.size=tiny data.path="$W/sp" train.device=cuda train.precision=fp32 train.epochs=2 train.eval_every=1
      model.drop_path=0.0 train.sampler=identity train.k_per_id=2 train.batch_size=32)
$PY -m ivt train --set "${TINY[@]}" --out "$W/plain" > "$W/plain.log" 2>&1
$PY -m torch.distributed.run --standalone --nproc_per_node=1 -m ivt train --set "${TINY[@]}" --out "$W/ddp" \
    > "$W/ddp.log" 2>&1; echo "torchrun exit $?"
$PY - "$W" <<'PYEOF'
import json, sys
from pathlib import Path
from safetensors.torch import load_file
w = Path(sys.argv[1])
a, b = load_file(str(w / "plain/last.safetensors")), load_file(str(w / "ddp/last.safetensors"))
print("max |weight difference| plain vs torchrun/nccl:", max(float((a[k] - b[k]).abs().max()) for k in a))
for d in ("plain", "ddp"):
    evals = [r for r in map(json.loads, (w / d / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "eval"]
    print(d, [(r["epoch"], r["R1"], r["mAP"]) for r in evals])
PYEOF

step "throughput"
$PY benchmarks/throughput.py --device cuda --sizes base --dtypes bf16 --seconds 20 --peak-n 8192 \
    --infer-batches 64,128,256 --base-batches 0,112 --workdir "$W/tp" --write
cp benchmarks/RESULTS.md "$OUT/RESULTS.md"
