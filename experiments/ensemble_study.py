"""Do ensembles built by transfer earn their place? The MNIST study of `python -m ltray.ensemble`.

2-MLP (784-1024-10) on real MNIST, source SGD (momentum 0.9, batch 128) for 10 epochs at lr 0.01 and 0.1,
M = 4 members, 3 repeats (independent seeds), FGMT T = 10 (cosine schedule) unless a recipe says otherwise.
Every recipe below is one `ltray.ensemble` run into the same work folder per lr, so the units they share (the
sources, full members, snapshot runs, transfers with the same fine-tuning) are computed once. Baselines in every
run: the single source; its last 4 checkpoints; snapshot ensembles (Huang et al.: 4 cosine cycles) of 4, 8, 12
and 20 epochs; the full ensemble (4 independent members) after 1, 2, 3, 5 and 10 epochs (the learning rate is
constant, so the model after e epochs is a model trained for e epochs).

Writes to --out: ensemble.parquet (every ensemble of every recipe, with a `recipe` column), members.parquet,
one PNG per lr (accuracy and NLL against compute) and summary.md (the tables and the verdict on the target:
a transferred ensemble within 0.2 pt of the full ensemble's accuracy at <= 0.5 of its compute, and ahead of
the snapshot ensemble at equal compute).

    python experiments/ensemble_study.py --data-root ../shared/datasets      # ~1 h on 2 cores
    python experiments/ensemble_study.py --smoke --out /tmp/ens-smoke          # digits, a minute
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

STAGES = "0,1,2,5"
BASELINES = ["--trained-epochs", "1,2,3,5,10", "--snapshot-epochs", "4,8,12,20"]
# name -> (arguments, what it varies). Adam lr 1e-3 is the reference fine-tuning; "sgd" fine-tunes with the
# source's own learning rate.
RECIPES = {
    "fgmt": (["--method", "fgmt,naive,gmt", "--finetune-epochs", STAGES], "K=1; Adam 1e-3; methods FGMT, Naive, GMT"),
    "adam1e-4": (["--finetune-lr", "1e-4", "--finetune-epochs", STAGES], "K=1; Adam 1e-4 (the paper's Sec. 4.2)"),
    "sgd": (["--finetune-optimizer", "sgd", "--finetune-lr", "{lr}", "--finetune-epochs", STAGES],
            "K=1; SGD at the source's lr"),
    "K2": (["--sources", "2", "--finetune-epochs", STAGES], "K=2 sources, 2 members each; Adam 1e-3"),
    "K1+src": (["--with-sources", "--finetune-epochs", STAGES], "the source + 3 members; Adam 1e-3"),
    "K1+src-1e-4": (["--with-sources", "--finetune-lr", "1e-4", "--finetune-epochs", STAGES],
                    "the source + 3 members; Adam 1e-4"),
    "K2+src": (["--sources", "2", "--with-sources", "--finetune-epochs", STAGES],
               "2 sources + 1 member of each; Adam 1e-3"),
    "oracle": (["--method", "oracle", "--finetune-epochs", STAGES], "K=1; Oracle (needs the trained target)"),
}

PLOTTED = ("fgmt", "adam1e-4", "K2", "K1+src", "K2+src")   # the figure's transferred curves (all are in summary.md)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default="../shared/datasets")
    p.add_argument("--out", default="experiments/results/ensemble")
    p.add_argument("--work", default="runs/ensemble-study", help="unit caches, one folder per lr (reused)")
    p.add_argument("--lrs", default="0.01,0.1")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated subset of " + ",".join(RECIPES))
    p.add_argument("--num-cpus", type=int, default=None)
    p.add_argument("--smoke", action="store_true", help="digits, width 32, 4 epochs, T=3, 1 repeat, 2 recipes")
    p.add_argument("--plot-only", action="store_true",
                   help="redraw the figures and summary.md from --out's ensemble.parquet (which it leaves as it is)")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.plot_only:
        return draw(pd.read_parquet(out / "ensemble.parquet"), out)
    common = ["--dataset", "mnist", "--data-root", str(Path(args.data_root).resolve()), "--width", str(args.width),
              "--epochs", "10", "--members", "4", "--T", "10", "--repeats", str(args.repeats), *BASELINES]
    recipes = args.recipes.split(",")
    if args.smoke:
        common = ["--width", "32", "--epochs", "4", "--T", "3", "--members", "2", "--repeats", "1",
                  "--trained-epochs", "2,4", "--snapshot-epochs", "2,4"]
        recipes = ["fgmt", "K1+src"]
    ensembles, members = [], []
    for lr in args.lrs.split(","):
        work = Path(args.work) / f"lr{lr}"
        for name in recipes:
            extra = [a.replace("{lr}", lr) for a in RECIPES[name][0]]
            t0 = time.perf_counter()
            if args.smoke:
                extra = [a.replace(STAGES, "0,1") for a in extra]
            argv = [*common, "--lr", lr, *extra, "--out", str(work), "--no-plot", "--no-progress"]
            argv += ["--num-cpus", str(args.num_cpus)] if args.num_cpus else []
            print(f"== lr {lr}, recipe {name}: {' '.join(extra)}", flush=True)
            if ltray_main(["ensemble", *argv]) != 0:
                raise SystemExit(f"recipe {name} at lr {lr} failed")
            print(f"   {time.perf_counter() - t0:.0f} s", flush=True)
            ensembles.append(pd.read_parquet(work / "ensemble.parquet").assign(recipe=name, source_lr=float(lr)))
            members.append(pd.read_parquet(work / "members.parquet").assign(source_lr=float(lr)))
    ensembles = pd.concat(ensembles, ignore_index=True)
    write(ensembles, pd.concat(members, ignore_index=True), out)
    draw(ensembles, out)


def write(ensembles: pd.DataFrame, members: pd.DataFrame, out: Path) -> None:
    """The study's Parquet files: every run's rows with its recipe and source lr (members: each once)."""
    import pyarrow as pa

    out.mkdir(parents=True, exist_ok=True)
    extra = [pa.field("recipe", pa.string()), pa.field("source_lr", pa.float64())]
    write_parquet(ensembles, pa.schema(list(ENSEMBLE_SCHEMA) + extra), out / "ensemble.parquet")
    keys = ["source_lr", "repeat", "kind", "method", "seed_source", "seed", "epochs", "lr", "optimizer", "T"]
    write_parquet(members.drop_duplicates(keys, ignore_index=True),
                  pa.schema(list(MEMBERS_SCHEMA) + extra[1:]), out / "members.parquet")


def draw(ensembles: pd.DataFrame, out: Path) -> None:
    """One figure per source lr and summary.md, from the study's ensemble rows."""
    from ltray.analysis.plots import ensemble_figure, save_figure

    out.mkdir(parents=True, exist_ok=True)
    keys = ["repeat", "kind", "method", "sources", "with_sources", "epochs", "finetune_optimizer", "finetune_lr"]
    for lr, rows in ensembles.groupby("source_lr"):
        rows = rows[(rows.kind != "transferred") | rows.recipe.isin(PLOTTED)].drop_duplicates(keys)
        rows = rows[(rows.kind != "transferred") | (rows.method != "gmt")]
        fig = ensemble_figure(rows, f"{rows.dataset.iloc[0]} 2-MLP width {int(rows.width.iloc[0])}, source lr {lr:g}",
                              pd.Series([recipe_label(r) for _, r in rows.iterrows()], index=rows.index))
        save_figure(fig, out / f"ensemble_lr{lr:g}.png")
    (out / "summary.md").write_text(study_summary(ensembles, RECIPES))
    print(f"wrote {out}/summary.md and the figures")


if __name__ == "__main__":
    main()
