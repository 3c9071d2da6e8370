"""Do ensembles built by transfer earn their place? The MNIST study of `python -m ltray.ensemble`, judged fairly.

2-MLP (784-1024-10) on real MNIST. Fixed before any result was seen: the source recipe (SGD momentum 0.9, batch
128, peak lr 0.05 cosine-annealed over 10 epochs), M = 4 members, 5 repeats (independent seeds), FGMT T = 10.
Every recipe is one `ltray.ensemble` run into one work folder, so the units they share (sources, full members,
snapshot runs) are computed once. In every run, each baseline at its own budget:
- full: M independent members, each an annealed run of 2, 3, 5 or 10 epochs (every size 1..M);
- snapshot (Huang et al.): 2 and 3 epochs per cycle (8 and 12 epochs), peak lr 0.05, 0.1 or 0.2;
- source alone, and its last M checkpoints;
- copy: M copies of the source fine-tuned like the transferred members, each its own data order, no transfer
  (the control that isolates what the permutation adds).
Selection is on the validation split: for each kind, the setting (recipe, fine-tuning epochs, snapshot lr, ...)
with the best mean validation accuracy within a compute budget is chosen, and its test accuracy reported with a
95 % interval over repeats. Compute is in passes over the training set (epochs-equivalent, deterministic);
wall seconds are secondary (x_full: / the M-member full ensemble of 10 epochs, same repeat).

Writes to --out: ensemble.parquet (every ensemble of every recipe, with a `recipe` column), members.parquet,
ensemble.png and summary.md (ltray.ensemble.report.study_summary).

    python experiments/ensemble_study.py --data-root ../shared/datasets    # ~40 min on 2 cores
    python experiments/ensemble_study.py --smoke --out /tmp/ens-smoke        # digits, a minute
    python experiments/ensemble_study.py --plot-only       # figures and summary.md again from ensemble.parquet
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from ltray.cli import main as ltray_main
from ltray.ensemble.report import recipe_label, study_summary
from ltray.results import ENSEMBLE_SCHEMA, MEMBERS_SCHEMA, write_parquet

STAGES = "0,1,2,3"
BASELINES = ["--cosine", "--lr", "0.05", "--trained-epochs", "2,3,5,10", "--snapshot-epochs", "8,12",
             "--snapshot-lrs", "0.05,0.1,0.2"]
# name -> (arguments, what it varies); every transferred setting of every recipe is a candidate for selection
RECIPES = {
    "adam1e-3": (["--method", "fgmt,naive", "--copies"], "K=1; Adam 1e-3; FGMT and Naive, and the copies"),
    "adam1e-4": (["--finetune-lr", "1e-4", "--copies"], "K=1; Adam 1e-4 (the paper's Sec. 4.2), and the copies"),
    "K1+src": (["--with-sources"], "the source + 3 FGMT members; Adam 1e-3"),
    "K2": (["--sources", "2"], "K=2 sources, 2 FGMT members each; Adam 1e-3"),
}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default="../shared/datasets")
    p.add_argument("--out", default="experiments/results/ensemble")
    p.add_argument("--work", default="runs/ensemble-study", help="unit cache (reused by a rerun)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated subset of " + ",".join(RECIPES))
    p.add_argument("--num-cpus", type=int, default=None)
    p.add_argument("--smoke", action="store_true", help="digits, width 32, 4 epochs, T=3, 2 repeats, 2 recipes")
    p.add_argument("--plot-only", action="store_true",
                   help="redraw the figure and summary.md from --out's ensemble.parquet (which it leaves as it is)")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.plot_only:
        return draw(pd.read_parquet(out / "ensemble.parquet"), out)
    common = ["--dataset", "mnist", "--data-root", str(Path(args.data_root).resolve()), "--width", str(args.width),
              "--epochs", "10", "--members", "4", "--T", "10", "--repeats", str(args.repeats),
              "--finetune-epochs", STAGES, *BASELINES]
    recipes = args.recipes.split(",")
    if args.smoke:
        common = ["--width", "32", "--epochs", "4", "--T", "3", "--members", "2", "--repeats", "2", "--cosine",
                  "--trained-epochs", "2,4", "--snapshot-epochs", "2,4", "--snapshot-lrs", "0.01,0.05",
                  "--finetune-epochs", "0,1"]
        recipes = ["adam1e-3", "K1+src"]
    ensembles, members = [], []
    work = Path(args.work)
    for name in recipes:
        extra = RECIPES[name][0]
        t0 = time.perf_counter()
        argv = [*common, *extra, "--out", str(work), "--no-plot", "--no-progress"]
        argv += ["--num-cpus", str(args.num_cpus)] if args.num_cpus else []
        print(f"== recipe {name}: {' '.join(extra)}", flush=True)
        if ltray_main(["ensemble", *argv]) != 0:
            raise SystemExit(f"recipe {name} failed")
        print(f"   {time.perf_counter() - t0:.0f} s", flush=True)
        ensembles.append(pd.read_parquet(work / "ensemble.parquet").assign(recipe=name))
        members.append(pd.read_parquet(work / "members.parquet"))
    ensembles = pd.concat(ensembles, ignore_index=True)
    write(ensembles, pd.concat(members, ignore_index=True), out)
    draw(ensembles, out)


def write(ensembles: pd.DataFrame, members: pd.DataFrame, out: Path) -> None:
    """The study's Parquet files: every run's rows with its recipe (members: each once)."""
    import pyarrow as pa

    out.mkdir(parents=True, exist_ok=True)
    write_parquet(ensembles, pa.schema(list(ENSEMBLE_SCHEMA) + [pa.field("recipe", pa.string())]),
                  out / "ensemble.parquet")
    keys = ["repeat", "kind", "method", "seed_source", "seed", "epochs", "lr", "optimizer", "T", "epochs_eq"]
    write_parquet(members.drop_duplicates(keys, ignore_index=True), MEMBERS_SCHEMA, out / "members.parquet")


def draw(ensembles: pd.DataFrame, out: Path) -> None:
    """The figure and summary.md, from the study's ensemble rows."""
    from ltray.analysis.plots import ensemble_figure, save_figure

    out.mkdir(parents=True, exist_ok=True)
    keys = ["repeat", "kind", "method", "size", "sources", "with_sources", "epochs", "lr", "finetune_optimizer",
            "finetune_lr"]
    rows = ensembles.drop_duplicates(keys)
    rows = rows[(rows.kind != "transferred") | (rows.method == "fgmt")]
    fig = ensemble_figure(rows, f"{rows.dataset.iloc[0]} 2-MLP width {int(rows.width.iloc[0])}",
                          pd.Series([recipe_label(r) for _, r in rows.iterrows()], index=rows.index))
    save_figure(fig, out / "ensemble.png")
    (out / "summary.md").write_text(study_summary(ensembles, RECIPES))
    print(f"wrote {out}/summary.md and the figure")


if __name__ == "__main__":
    main()
