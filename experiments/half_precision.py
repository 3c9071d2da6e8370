"""What storing checkpoints in half precision costs a transfer (issue: scale past MNIST).

One source per seed is trained on real MNIST with the preset (2-MLP width 4096, SGD lr 0.01, 10 epochs), saved
as float32, bfloat16 and float16 (`ltray train --checkpoint-dtype`), read back, and transferred with Naive and
FGMT (T = 10, cosine) onto the same fresh initialisations: the only difference between the rows of one seed pair
is the storage precision of theta1^0 and theta1^T.

Writes to --out: half_precision.parquet (TRANSFER_SCHEMA rows plus `storage_dtype`, `max_abs_error`: the largest
checkpoint entry's rounding error, `file_mib`) and summary.md.

    python experiments/half_precision.py --data-root ../shared/datasets      # ~6 min on 2 cores
    python experiments/half_precision.py --smoke --out /tmp/half              # digits, seconds
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from ltray.config import DataConfig, TransferConfig, with_preset
from ltray.core.trajectory import STORAGE_DTYPES, load_trajectory, save_trajectory
from ltray.results import TRANSFER_SCHEMA, atomic_write, write_parquet
from ltray.runs import needed_epochs, pair_rows, train_source

SCHEMA = TRANSFER_SCHEMA.append(pa.field("storage_dtype", pa.string())) \
    .append(pa.field("max_abs_error", pa.float64())).append(pa.field("file_mib", pa.float64()))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default="../shared/datasets")
    p.add_argument("--out", default="experiments/results/half_precision")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--smoke", action="store_true", help="digits, width 64, 3 epochs, T = 3, one seed")
    args = p.parse_args(argv)
    dataset = "digits" if args.smoke else "mnist"
    preset = with_preset(dataset, model={"width": 64 if args.smoke else None},
                         train={"epochs": 3} if args.smoke else {}, T=3 if args.smoke else None)
    data_cfg = DataConfig(dataset, None if args.smoke else args.data_root)
    data = data_cfg.load()
    transfer_cfg = TransferConfig(T=preset["T"], schedule="cosine")
    seeds = 1 if args.smoke else args.seeds
    rows, started = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(seeds):
            source = train_source(data, data_cfg, preset["model"], preset["train"], seed=k,
                                  keep=needed_epochs(transfer_cfg, preset["train"].epochs))
            for dtype in STORAGE_DTYPES:
                path = save_trajectory(source, Path(tmp) / f"s{k}_{dtype}.safetensors", dtype)
                stored = load_trajectory(path)
                error = float(np.abs(stored.checkpoints - source.checkpoints).max())
                for row in pair_rows(data, data_cfg=data_cfg, model_cfg=preset["model"], train_cfg=preset["train"],
                                     transfer_cfg=transfer_cfg, methods=("naive", "fgmt"), source=stored,
                                     seed_target=1000 + k, run_id=f"half-{dtype}"):
                    rows.append(dict(row, storage_dtype=dtype, max_abs_error=error,
                                     file_mib=path.stat().st_size / 2**20))
                print(f"seed {k} {dtype}: max |error| {error:.2e}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    write_parquet(df, SCHEMA, out / "half_precision.parquet")
    atomic_write(out / "summary.md", lambda tmp: tmp.write_text(summary(df, dataset, preset, transfer_cfg,
                                                                        time.perf_counter() - started)))
    print((out / "summary.md").read_text())


def summary(df: pd.DataFrame, dataset: str, preset: dict, cfg: TransferConfig, seconds: float) -> str:
    """Final (t = T) and early (t = 1) accuracy per method and storage dtype, mean +- std over seed pairs, and the
    largest per-pair change from float32."""
    T = cfg.T
    lines = [f"# Half-precision checkpoints: the transfer's accuracy ({dataset})", "",
             f"`python experiments/half_precision.py` ({seconds:.0f} s). Model {preset['model'].name} width "
             f"{preset['model'].width}, SGD lr {preset['train'].lr}, {preset['train'].epochs} epochs; T = {T}, "
             f"cosine; {df.seed_source.nunique()} seed pairs (source s, target 1000 + s); validation accuracy %.", "",
             "| method | storage | file MiB (2 checkpoints) | max abs rounding error | t = 1 | t = T | largest change "
             "from float32 at t = T (pt) |", "|---|---|---|---|---|---|---|"]
    final = df[df.t == T].set_index(["method", "seed_source", "storage_dtype"]).val_acc
    for method in ("naive", "fgmt"):
        for dtype in STORAGE_DTYPES:
            sel = df[(df.method == method) & (df.storage_dtype == dtype)]
            end, early = sel[sel.t == T].val_acc, sel[sel.t == 1].val_acc
            change = max(abs(final[(method, s, dtype)] - final[(method, s, "float32")])
                         for s in sel.seed_source.unique())
            lines.append(f"| {method} | {dtype} | {sel.file_mib.iloc[0]:.1f} | {sel.max_abs_error.max():.1e} | "
                         f"{early.mean():.2f} ± {early.std(ddof=0):.2f} | {end.mean():.2f} ± {end.std(ddof=0):.2f} | "
                         f"{change:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
