#!/usr/bin/env bash
# The GPU path of the assignment solver and of a transfer, in one short run, for a session lent a GPU machine
# (issue 5, item 5). Nothing here needs Ray (the device image has none); numba, torch, scipy, pandas, pyarrow,
# safetensors, scikit-learn and tqdm are in that image.
#
# From the repo root, once per session (MNIST's raw files, gzipped to ~11 MB, travel in a git-ignored folder):
#     echo /.data/ >> .git/info/exclude; mkdir -p .data
#     for f in ../shared/datasets/MNIST/raw/*-ubyte; do gzip -c "$f" > ".data/$(basename "$f").gz"; done
# then the device tool's run with command "bash benchmarks/gpu_check.sh", carry [".data"], timeout_s 540.
# Writes its logs and CSVs to $OUT (runs/gpu-check without one). About 5 minutes on an H100.
# GPU_CHECK_DEVICE=cpu GPU_CHECK_QUICK=1 runs the same steps small, on the CPU, to check the script itself.
set -uo pipefail
out=${OUT:-runs/gpu-check}
device=${GPU_CHECK_DEVICE:-cuda}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
py=python3
status=0

step() { echo; echo "== $1"; }

step "machine"
data=$(mktemp -d)
mkdir -p "$data/MNIST/raw"
for f in .data/*-ubyte.gz; do gunzip -c "$f" > "$data/MNIST/raw/$(basename "$f" .gz)"; done
if [ "$device" = cuda ]; then nvidia-smi -L | tee "$out/gpu.txt"; fi
$py -c "import torch, numba, scipy; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), \
'numba', numba.__version__, 'scipy', scipy.__version__)" | tee -a "$out/gpu.txt" || status=1

if [ -n "${GPU_CHECK_QUICK:-}" ]; then
    sizes="256 512"; width=256; epochs=1; tests="random and 200"; steps=1
else
    sizes="1024 4096"; width=4096; epochs=10; tests="cuda"; steps=5
fi

step "solver tests on $device (exactness against scipy, warm starts, eps bounds)"
$py -m pytest -q -p no:cacheprovider tests/test_lap.py -k "$tests" 2>&1 | tee "$out/tests.txt" || status=1

step "solvers on $device against scipy (time, gap)"
$py benchmarks/bench_lap.py --device "$device" --sizes $sizes --kinds random gm-het \
    --solvers scipy auction auction-eps --steps 3 --out "$out/bench_lap_$device.csv" 2>&1 \
    | tee "$out/bench_lap.txt" || status=1

step "FGMT transfer on $device: MNIST 2-MLP width $width, T = 10, beside its source training"
$py benchmarks/bench_transfer.py --device "$device" --data-root "$data" --width "$width" --epochs "$epochs" \
    --solvers scipy auction --seeds 1 --cache "$out/cache" --retime-source \
    --out "$out/bench_transfer_$device.csv" 2>&1 | tee "$out/bench_transfer.txt" || status=1
rm -rf "$out/cache" "$data"

step "one FGMT step of ResNet-18 on CIFAR-shaped data on $device, per part (B = 1280, B' = 256)"
$py benchmarks/bench_step.py --device "$device" --T "$steps" 2>&1 \
    | tee "$out/bench_step_$device.json" || status=1

exit $status
