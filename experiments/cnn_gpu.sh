#!/usr/bin/env bash
# Issue 21 on a lent GPU machine: ResNet-18 (ltray's CIFAR-style one and torchvision's) and Conv8 at the paper's
# width 64 (with BatchNorm; without it, with He init) on MNIST, 3 seed pairs each, by experiments/cnn.py. Every
# (model, pair) runs in its own process, 12 at once on one GPU and 16 cores: the accuracies are what one process
# alone computes, the seconds in the profiles are NOT measurements (the processes share the machine).
#
# From the repo root, once per session (MNIST's raw files, gzipped, travel in a git-ignored folder):
#     echo /.data/ >> .git/info/exclude; mkdir -p .data
#     for f in ../shared/datasets/MNIST/raw/*-ubyte; do gzip -c "$f" > ".data/$(basename "$f").gz"; done
# then the device tool's run with command "bash experiments/cnn_gpu.sh", carry [".data"], timeout_s 420.
# Brings back $OUT/cnn_gpu.tgz (merged Parquet, PNG, summary.md, every process's log); unpack it and commit
#     python experiments/cnn.py --merge <unpacked>/merged --out experiments/results/cnn_gpu
# CNN_GPU_LIMIT (seconds, default 330) bounds each process; CNN_GPU_QUICK=1 runs tiny versions on the CPU.
set -uo pipefail
out=${OUT:-runs/cnn-gpu}
work=$(mktemp -d)
mkdir -p "$out" "$work/logs" "$work/data/MNIST/raw"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=1
for f in .data/*-ubyte.gz; do gunzip -c "$f" > "$work/data/MNIST/raw/$(basename "$f" .gz)"; done
limit=${CNN_GPU_LIMIT:-330}
if [ -n "${CNN_GPU_QUICK:-}" ]; then
    device=cpu; extra="--max-train 512 --epochs 1"; resnet_runs="linear:2"; conv_runs="linear:2"; width=4
else
    device=cuda; extra=""; resnet_runs="linear:10 actual:3 linear:30"; conv_runs="linear:10 actual:10 linear:30"
    width=64
    nvidia-smi -L
fi
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

launch() {   # name, pair k, cnn.py arguments
    local name=$1 k=$2; shift 2
    timeout "$limit" python3 experiments/cnn.py "$@" --data-root "$work/data" --device "$device" --no-progress \
        --pairs 1 --first-pair "$k" --cache "$work/cache/$name" --out "$work/$name/p$k" $extra \
        > "$work/logs/$name-p$k.log" 2>&1 &
}
models=${CNN_GPU_MODELS:-resnet18 tvresnet18 conv8bn conv8}
on() { case " $models " in *" $1 "*) return 0;; esac; return 1; }
t0=$(date +%s)
for k in 0 1 2; do
    on resnet18 && launch resnet18 "$k" --model resnet18 --epochs 3 --lr 0.05 --bn-samples 1280 --runs $resnet_runs
    on tvresnet18 && launch tvresnet18 "$k" --model torchvision:resnet18 --epochs 3 --lr 0.05 --bn-samples 1280 --runs $resnet_runs
    on conv8bn && launch conv8bn "$k" --model conv8bn --width "$width" --epochs 10 --lr 0.05 --runs $conv_runs
    on conv8 && launch conv8 "$k" --model conv8 --init kaiming --width "$width" --epochs 10 --lr 0.01 --runs $conv_runs
done
wait
echo "all processes done after $(( $(date +%s) - t0 )) s"
for name in resnet18 tvresnet18 conv8bn conv8; do
    dirs=$(ls -d "$work/$name"/p* 2>/dev/null)
    [ -n "$dirs" ] && python3 experiments/cnn.py --merge $dirs --out "$work/merged" 2>&1 | tail -n 1
done
tar czf "$out/cnn_gpu.tgz" -C "$work" merged logs 2>/dev/null || tar czf "$out/cnn_gpu.tgz" -C "$work" logs
for f in "$work"/logs/*.log; do echo "== $(basename "$f")"; grep -E "^(pair|source|target|skipped|Traceback|.*Error)" "$f" | tail -n 6; done
cat "$work/merged/summary.md" 2>/dev/null | head -n 60
