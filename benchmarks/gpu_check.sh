#!/usr/bin/env bash
# The GPU path of the assignment solver and of a transfer, in one short run, for a session lent a GPU machine
# (issue 5, item 5; issue 13: a Ray fan-out sharing the GPU, a Conv8 transfer). Only the Ray fan-out needs Ray,
# and it is skipped with a message where the image has none; numba, torch, scipy, pandas, pyarrow, safetensors,
# scikit-learn and tqdm are in that image.
#
# From the repo root, once per session (MNIST's raw files, gzipped to ~11 MB, travel in a git-ignored folder):
#     echo /.data/ >> .git/info/exclude; mkdir -p .data
#     for f in ../shared/datasets/MNIST/raw/*-ubyte; do gzip -c "$f" > ".data/$(basename "$f").gz"; done
# then the device tool's run with command "bash benchmarks/gpu_check.sh", carry [".data"], timeout_s 540.
# Writes its logs and CSVs to $OUT (runs/gpu-check without one) and ends with a table of the main numbers.
# About 5 minutes on an H100 before issue 13's steps (Ray fan-out, Conv8), which add one to two minutes.
# GPU_CHECK_DEVICE=cpu GPU_CHECK_QUICK=1 runs the same steps small, on the CPU, to check the script itself;
# GPU_CHECK_DATA_ROOT=../shared/datasets reads MNIST from a folder holding MNIST/raw instead of .data/.
set -uo pipefail
out=${OUT:-runs/gpu-check}
device=${GPU_CHECK_DEVICE:-cuda}
mkdir -p "$out"
# A lent machine is bare: it has ltray's dependencies but no installed ltray, so the checkout stands in for the
# install (the benchmarks themselves import the package only; where ltray is installed this changes nothing).
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0   # a private local Ray
py=python3
status=0

step() { echo; echo "== $1"; }

step "machine"
if [ -n "${GPU_CHECK_DATA_ROOT:-}" ]; then
    data=$GPU_CHECK_DATA_ROOT; made_data=
else
    data=$(mktemp -d); made_data=$data
    mkdir -p "$data/MNIST/raw"
    for f in .data/*-ubyte.gz; do gunzip -c "$f" > "$data/MNIST/raw/$(basename "$f" .gz)"; done
fi
if [ "$device" = cuda ]; then nvidia-smi -L | tee "$out/gpu.txt"; fi
$py -c "import torch, numba, scipy; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), \
'numba', numba.__version__, 'scipy', scipy.__version__)" | tee -a "$out/gpu.txt" || status=1

if [ -n "${GPU_CHECK_QUICK:-}" ]; then
    sizes="256 512"; width=256; epochs=1; tests="random and 200"; steps=1
    step_size="--batch-size 256 --val 200"; conv8="--width 16 --T 2 --val 200 --repeats 2"
else
    sizes="1024 4096"; width=4096; epochs=10; tests="cuda"; steps=5
    step_size=""; conv8="--width 64 --T 10 --repeats 3"
fi
if [ "$device" = cuda ]; then shares="0.25 1"; ray_cpus=4; else shares="0"; ray_cpus=2; fi

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
rm -rf "$out/cache"

step "Ray fan-out on $device: 4 FGMT transfers (MNIST width $width, T = 10) at $shares GPU per task"
if $py -c "import ray" 2>/dev/null; then
    $py -m ltray train --dataset mnist --data-root "$data" --width "$width" --epochs "$epochs" --device "$device" \
        --no-progress --out "$out/source" 2>&1 | tee "$out/fanout.txt" || status=1
    for share in $shares; do
        echo "-- --gpus-per-task $share" | tee -a "$out/fanout.txt"
        timeout 300 $py -m ltray transfer --dataset mnist --data-root "$data" --width "$width" --epochs "$epochs" \
            --trajectory "$out/source/trajectory.safetensors" --seeds 4 --methods fgmt --T 10 --device "$device" \
            --gpus-per-task "$share" --num-cpus "$ray_cpus" --no-progress --out "$out/fanout_$share" 2>&1 \
            | tee "$out/fanout_$share.txt" | tee -a "$out/fanout.txt" || status=1
    done
    rm -rf "$out/source"
else
    echo "skipped: ray is not installed in this image"
fi
if [ -n "$made_data" ]; then rm -rf "$made_data"; fi

step "one FGMT step of ResNet-18 on CIFAR-shaped data on $device, per part (B = 1280, B' = 256)"
$py benchmarks/bench_step.py --device "$device" --T "$steps" $step_size 2>&1 \
    | tee "$out/bench_step_$device.json" || status=1

step "one FGMT transfer of Conv8 on CIFAR-shaped data on $device (bench_ray.py --part conv8)"
$py benchmarks/bench_ray.py --part conv8 --device "$device" $conv8 --out "$out/bench_ray" 2>&1 \
    | tee "$out/conv8.txt" || status=1

step "summary"
$py - "$out" "$device" <<'PY' || status=1
import glob, json, re, sys
import pandas as pd

out, device = sys.argv[1:]
rows = []
def add(check, value):
    rows.append((check, value))
try:
    lap = pd.read_csv(f"{out}/bench_lap_{device}.csv")
    for (n, kind), g in lap[lap["mode"] == "cold"].groupby(["n", "kind"]):
        add(f"cold solve n={n} {kind}, median (max rel gap)", ", ".join(
            f"{solver} {s.time_s.median():.3f} s ({s.rel_gap.max():.0e})" for solver, s in g.groupby("solver")))
except (OSError, KeyError, ValueError) as e:
    add("solvers (bench_lap)", f"missing: {e}")
try:
    tr = pd.read_csv(f"{out}/bench_transfer_{device}.csv")
    for solver, g in tr.groupby("solver"):
        add(f"MNIST FGMT transfer, {solver}", f"{g.transfer_seconds.mean():.2f} s = {100 * g.fraction.mean():.1f} % "
            f"of {g.source_train_seconds.mean():.1f} s training; final val acc {g.acc_final.mean():.2f} %")
except (OSError, KeyError, ValueError) as e:
    add("MNIST transfer (bench_transfer)", f"missing: {e}")
for path in sorted(glob.glob(f"{out}/fanout_*.txt")):
    found = re.search(r"wall ([\d.]+) s, on Ray; the tasks' own seconds sum to ([\d.]+) s", open(path).read())
    share = path.rsplit("_", 1)[1][:-4]
    add(f"Ray fan-out, 4 transfers at {share} GPU each",
        f"wall {found[1]} s, tasks' own seconds {found[2]} s" if found else "failed (see the log)")
try:
    step = json.loads([l for l in open(f"{out}/bench_step_{device}.json") if l.startswith("{")][-1])
    add(f"ResNet-18 FGMT, T={step['T']} width {step['width']}",
        f"{step['seconds']:.2f} s; per step: " + ", ".join(f"{k} {v:.2f}" for k, v in step["per_step"].items()))
except (OSError, IndexError, KeyError, ValueError) as e:
    add("ResNet-18 step (bench_step)", f"missing: {e}")
try:
    c8 = [json.loads(l) for l in open(f"{out}/bench_ray/results.jsonl")]
    c8 = [r for r in c8 if r["part"] == "conv8" and r["kind"] == "summary"][-1]
    add(f"Conv8 FGMT, T={c8['T']} width {c8['width']}",
        f"{c8['seconds'][0]:.2f} +- {c8['seconds'][1]:.2f} s per transfer (n = {c8['repeats']}, after the first)")
except (OSError, IndexError, KeyError, ValueError) as e:
    add("Conv8 (bench_ray --part conv8)", f"missing: {e}")
width = max(len(c) for c, _ in rows)
print(f"{'check on ' + device:<{width}} | result")
print("-" * width + "-|-" + "-" * 60)
for check, value in rows:
    print(f"{check:<{width}} | {value}")
PY

exit $status
