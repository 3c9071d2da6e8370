"""Reading ensemble results (ENSEMBLE_SCHEMA rows, several runs or recipes): means over repeats with 95 %
intervals, the setting of each kind chosen on the validation split within a compute budget, and the verdict on
"as accurate as the full ensemble for less". Compute is in passes over the training set (x_full_eq: / the
M-member full ensemble's), seconds beside it. Pure pandas: no Ray, no plotting."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .recipe import KINDS, ci95

SETTING = ["kind", "method", "size", "sources", "with_sources", "epochs", "lr", "finetune_optimizer", "finetune_lr"]
METRICS = ["val_acc", "test_acc", "test_nll", "test_nll_ts", "test_ece", "test_ece_ts", "disagreement", "gain",
           "member_acc_mean", "epochs_eq", "x_full_eq", "seconds", "x_full"]
BUDGETS = (0.25, 0.5, 0.75, 1.0)
BASELINES = ("source", "checkpoint", "snapshot", "full", "copy")
NAMES = {"fgmt": "FGMT", "gmt": "GMT", "naive": "Naive", "oracle": "Oracle"}


def recipe_label(row) -> str:
    """How an ensemble was made, e.g. 'FGMT, 2 sources + sources, adam 0.001', 'snapshot, peak lr 0.1',
    'full, 3 members'."""
    kind = row["kind"]
    if kind == "transferred":
        sources = f"{row['sources']} source{'s' if row['sources'] > 1 else ''}" + \
            (" + sources" if row["with_sources"] else "")
        return f"{NAMES.get(row['method'], row['method'])}, {sources}, {row['finetune_optimizer']} {row['finetune_lr']:g}"
    if kind == "copy":
        return f"copies, {row['finetune_optimizer']} {row['finetune_lr']:g}"
    if kind == "snapshot" and row.get("lr") == row.get("lr") and row.get("lr") is not None:
        return f"snapshot, peak lr {row['lr']:g}"
    if kind == "full":
        return f"full, {int(row['size'])} member{'s' * (int(row['size']) > 1)}"
    return kind


def _settings(ensembles: pd.DataFrame) -> pd.DataFrame:
    """Each (repeat, setting) once (recipes run into one folder share their baselines), with its label."""
    df = ensembles.drop_duplicates(["repeat"] + SETTING)
    return df.assign(label=[recipe_label(r) for _, r in df.iterrows()])


def means(ensembles: pd.DataFrame) -> pd.DataFrame:
    """One row per setting: the mean of every metric over repeats, the 95 % interval of test accuracy (acc_ci),
    the std of the seconds (seconds_sd), the median deep-ensemble equivalent (dee; inf where it beats the largest
    full ensemble) and n."""
    df = _settings(ensembles)
    g = df.groupby(["label"] + SETTING, dropna=False, sort=False)
    out = g[METRICS].mean()
    out = out.join(g.test_acc.agg(ci95).rename("acc_ci")).join(g.seconds.std().rename("seconds_sd"))
    out = out.join(g.dee.median().rename("dee")).join(g.repeat.nunique().rename("n")).reset_index()
    return out.assign(order=out.kind.map(KINDS.index)).sort_values(["order", "label", "epochs"]).drop(columns="order")


def choose(table: pd.DataFrame, budget: float) -> pd.Series | None:
    """The setting with the best mean validation accuracy among those costing <= budget x the full ensemble's
    passes (None if none does)."""
    ok = table[table.x_full_eq <= budget + 1e-9]
    return None if ok.empty else ok.loc[ok.val_acc.idxmax()]


def paired_gap(ensembles: pd.DataFrame, a: pd.Series, b: pd.Series) -> tuple[float, float]:
    """Mean and 95 % interval over repeats of the test-accuracy difference a - b (same repeat, same seeds)."""
    df = ensembles.drop_duplicates(["repeat"] + SETTING)

    def per_repeat(setting):
        mask = np.ones(len(df), bool)
        for k in SETTING:
            v = setting[k]
            mask &= (df[k].isna() if v is None or v != v else df[k] == v).to_numpy()
        return df[mask].set_index("repeat").test_acc

    diff = (per_repeat(a) - per_repeat(b)).dropna()
    return float(diff.mean()), ci95(diff)


def verdict(table: pd.DataFrame, ensembles: pd.DataFrame, within: float = 0.2, budget: float = 0.5) -> dict:
    """The transferred setting chosen on validation within `budget` x the full ensemble's passes; its gap to the
    M-member full ensemble (paired over repeats, with its 95 % interval: the target is met when the interval's
    low end is above -within); and every baseline kind chosen on validation at no more compute, with the gap."""
    full = table[(table.kind == "full") & (table.x_full_eq.round(9) == 1.0)].iloc[0]
    best = choose(table[table.kind == "transferred"], budget)
    out = {"full": full, "best": best, "budget": budget, "within": within}
    if best is not None:
        out["gap"] = paired_gap(ensembles, best, full)
        out["meets_accuracy"] = out["gap"][0] - (out["gap"][1] if out["gap"][1] == out["gap"][1] else 0) >= -within
        out["rivals"] = {}
        for kind in BASELINES:
            rival = choose(table[table.kind == kind], float(best.x_full_eq))
            if rival is not None:
                out["rivals"][kind] = (rival, paired_gap(ensembles, best, rival))
        out["ahead_of_all"] = all(gap[0] > 0 for _, gap in out["rivals"].values())
    return out


def front_markdown(table: pd.DataFrame) -> str:
    """Per budget and kind, the setting chosen on validation: its test accuracy ± 95 % interval."""
    kinds = list(BASELINES) + ["transferred"]
    lines = ["| budget (x full, passes) | " + " | ".join(kinds) + " |", "|---" * (len(kinds) + 1) + "|"]
    for b in BUDGETS:
        cells = []
        for k in kinds:
            row = choose(table[table.kind == k], b)
            cells.append("-" if row is None else f"{_acc(row)} ({_setting(row)}, {row.x_full_eq:.2f}x)")
        lines.append(f"| <= {b:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _setting(row) -> str:
    return f"{row['label']}, {int(row['epochs'])} ep"


def _acc(row) -> str:
    return f"{row.test_acc:.2f}" + (f" ± {row.acc_ci:.2f}" if row.acc_ci == row.acc_ci else "")


def table_markdown(table: pd.DataFrame) -> str:
    cols = ["setting", "val acc", "test acc", "NLL", "NLL (T)", "ECE", "ECE (T)", "disagreement", "gain", "passes",
            "x full (passes)", "seconds", "x full (s)", "DEE", "n"]
    lines = ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
    for _, r in table.iterrows():
        lines.append(f"| {_setting(r)} | {r.val_acc:.2f} | {_acc(r)} | {r.test_nll:.4f} | {r.test_nll_ts:.4f} | "
                     f"{r.test_ece:.2f} | {r.test_ece_ts:.2f} | {_num(r.disagreement)} | {r.gain:+.2f} | "
                     f"{r.epochs_eq:.1f} | {r.x_full_eq:.2f} | {r.seconds:.0f} ± {_num(r.seconds_sd, 0)} | "
                     f"{r.x_full:.2f} | {_dee(r.dee)} | {int(r.n)} |")
    return "\n".join(lines)


def _num(v: float, digits: int = 2) -> str:
    return "-" if v != v else f"{v:.{digits}f}"


def _dee(v: float) -> str:
    return "-" if v != v else "> M" if v == float("inf") else "< 1" if v == 0 else f"{v:.2f}"


def study_summary(ensembles: pd.DataFrame, recipes: dict[str, tuple[list[str], str]]) -> str:
    """summary.md of experiments/ensemble_study.py: the verdict, the setting of each kind chosen on validation
    within each budget, and every setting's numbers (means over repeats)."""
    table = means(ensembles)
    first, n = ensembles.iloc[0], int(table.n.max())
    tried = {k: int((table.kind == k).sum()) for k in KINDS if (table.kind == k).any()}
    out = [f"# Ensembles by transfer: {first['dataset']}, {first['model']} width {int(first['width'])}, "
           f"{int(ensembles['size'].max())} members, {n} repeats",
           "",
           "Generated by `experiments/ensemble_study.py`. Settings are chosen on the validation split (best mean "
           "validation accuracy within a budget) and reported on the test split: mean ± 95 % interval over "
           f"repeats (Student's t, n = {n}). Settings tried per kind: "
           + ", ".join(f"{k} {v}" for k, v in tried.items()) + ". Compute in passes over the training set "
           "(epochs-equivalent: a forward+backward pass over every training image is 1; a forward pass 1/3; "
           "transfers count their gradients and evaluations, not their assignment solves), x full: / the M-member "
           "full ensemble's (every member an annealed run of the recipe's epochs), same repeat; seconds: mean ± std "
           "over repeats, taken on a shared 2-core machine (secondary). NLL (T), ECE (T): after temperature scaling "
           "fitted on validation. DEE: deep-ensemble equivalent (the full-ensemble size of equal test NLL, median "
           "over repeats). Recipes (runs; their transferred settings are the candidates):", ""]
    out += [f"- `{name}`: {desc} (`{' '.join(args)}`)" for name, (args, desc) in recipes.items()]
    v = verdict(table, ensembles)
    out += ["", "## Verdict", "", _verdict_text(v), "",
            "## The setting of each kind chosen on validation within a budget", "", front_markdown(table),
            "", "## Baselines", "", table_markdown(table[table.kind.isin(BASELINES)]),
            "", "## Transferred ensembles", "", table_markdown(table[table.kind == "transferred"])]
    return "\n".join(out) + "\n"


def _verdict_text(v: dict) -> str:
    full = v["full"]
    head = f"Full ensemble ({_setting(full)}): {_acc(full)} % (NLL {full.test_nll:.4f})."
    best = v["best"]
    if best is None:
        return head + f" No transferred ensemble costs <= {v['budget']:g}x its passes."
    gap, ci = v["gap"]
    rivals = "; ".join(f"{k}: {_acc(r)} ({_setting(r)}, {r.x_full_eq:.2f}x; transferred {g:+.2f} ± {c:.2f})"
                       for k, (r, (g, c)) in v["rivals"].items())
    return (f"{head} Transferred ensemble chosen on validation among those costing <= {v['budget']:g}x: "
            f"{_acc(best)} (NLL {best.test_nll:.4f}; {_setting(best)}; {best.x_full_eq:.2f}x the passes, "
            f"{best.x_full:.2f}x the seconds), {gap:+.2f} ± {ci:.2f} pt from the full ensemble (paired over "
            f"repeats): target (within {v['within']:g} pt, interval included) "
            f"{'met' if v['meets_accuracy'] else 'not met'}. Each baseline chosen on validation at no more passes "
            f"(test accuracy; the transferred ensemble's paired gap to it): {rivals}. Ahead of every one of them "
            f"on the mean: {'yes' if v['ahead_of_all'] else 'no'}.")
