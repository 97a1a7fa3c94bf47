#!/usr/bin/env bash
# One lease of a GPU machine, in the order that matters (run from the repo root; $OUT receives the
# logs and the rows): the CUDA unit tests; on the idle GPU, the throughput benchmark (writes the
# throughput-cuda section of benchmarks/RESULTS.md); then the re-ranking budget curves
# (benchmarks/rerank_budget.py, every run at once on the GPU) with the base-size re-ranking cost.
# `bash benchmarks/cuda_budget.sh batches` runs only the second set of curves: batches of 128 and 256
# (four runs at once; LONG=M minutes, 4.5 by default). Each set fits one 10-minute call (budgets
# up to about 7 minutes); copy $OUT/rerank_budget_rows*.json back and
# render with `python benchmarks/rerank_budget.py --merge FILE --write`.
set -uo pipefail
export PYTHONPATH=src:benchmarks PYTHONUNBUFFERED=1 TQDM_DISABLE=1
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/ivt-cuda-out}
mkdir -p "$OUT"
step() { echo; echo "=== $* === $(date +%T)"; }

if [ "${1:-}" = batches ]; then
    step "re-ranking budget curves, larger batches (four runs at once)"
    M=${LONG:-4.5}
    $PY benchmarks/rerank_budget.py --device cuda --precision bf16 --variants "minutes=$M train.batch_size=128" \
        "minutes=$M model.itm=true model.itm_layers=2 train.batch_size=128" "minutes=$M train.batch_size=256" \
        "minutes=$M model.itm=true model.itm_layers=2 train.batch_size=256" --parallel 4 --threads 4 --workers 12 \
        --work /tmp/ivt-budget2 --rows "$OUT/rerank_budget_rows2.json" > "$OUT/rerank_budget2.log" 2>&1
    tail -12 "$OUT/rerank_budget2.log"
    exit
fi

step "device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(), 'bf16', torch.cuda.is_bf16_supported())"
nproc

step "CUDA unit tests"
$PY -m pytest -q -p no:cacheprovider tests/test_model_encoder.py -k cuda

step "throughput (idle GPU)"
$PY benchmarks/throughput.py --device cuda --sizes base --dtypes bf16 --seconds 10 --peak-n 8192 \
    --infer-batches 256 --base-batches 0,112 --workdir /tmp/ivt-tp --write 2>&1 | tee "$OUT/throughput.log"
cp benchmarks/RESULTS.md "$OUT/RESULTS.md"

step "re-ranking budget curves (every run at once)"
L=${LONG:-4}
$PY benchmarks/rerank_budget.py --device cuda --precision bf16 --minutes ${SHORT:-2} $L \
    --variants "" "model.itm=true" "minutes=$L model.itm=true model.itm_layers=2" \
    "minutes=$L model.itm=true model.itm_layers=4" "minutes=$L train.batch_size=128" \
    "minutes=$L model.itm=true model.itm_layers=2 train.batch_size=128" \
    --parallel 8 --threads 2 --workers 10 --cost --work /tmp/ivt-budget --rows "$OUT/rerank_budget_rows.json" \
    > "$OUT/rerank_budget.log" 2>&1
tail -30 "$OUT/rerank_budget.log"
for f in /tmp/ivt-budget/*.log; do echo "--- $f"; grep -v Warning "$f" | tail -3; done
step "done"
