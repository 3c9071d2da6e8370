"""Reading ensemble results (ENSEMBLE_SCHEMA rows, several runs or recipes): means over repeats, the best
ensemble of each kind within a compute budget, and the verdict on "as accurate as the full ensemble for less".
Pure pandas: no Ray, no plotting."""
from __future__ import annotations

import pandas as pd

SETTING = ["kind", "method", "sources", "with_sources", "epochs", "finetune_optimizer", "finetune_lr"]
METRICS = ["test_acc", "test_nll", "test_ece", "disagreement", "gain", "member_acc_mean", "seconds", "x_full"]
BUDGETS = (0.25, 0.5, 0.75, 1.0)


def recipe_label(row) -> str:
    """How a transferred ensemble was made, e.g. 'FGMT, 2 sources + sources, adam 1e-3'."""
    if row["kind"] != "transferred":
        return row["kind"]
    sources = f"{row['sources']} source{'s' if row['sources'] > 1 else ''}" + (" + sources" if row["with_sources"] else "")
    method = {"fgmt": "FGMT", "gmt": "GMT", "naive": "Naive", "oracle": "Oracle"}.get(row["method"], row["method"])
    return f"{method}, {sources}, {row['finetune_optimizer']} {row['finetune_lr']:g}"


def means(ensembles: pd.DataFrame) -> pd.DataFrame:
    """One row per setting: the mean of every metric over repeats (x_full as written by the run: / the M-member
    full ensemble of the same repeat, ltray.results.ENSEMBLE_SCHEMA), the std of accuracy and NLL, and n."""
    df = ensembles.assign(label=[recipe_label(r) for _, r in ensembles.iterrows()])
    keys = ["label"] + SETTING
    g = df.groupby(keys, dropna=False, sort=False)
    out = g[METRICS].mean().join(g.test_acc.std().rename("acc_std")).join(g.test_nll.std().rename("nll_std"))
    out = out.join(g.repeat.nunique().rename("n")).reset_index()
    return out.drop_duplicates(keys)


def best_within(table: pd.DataFrame, budget: float) -> pd.DataFrame:
    """Per label (a kind, or a transferred recipe), its most accurate setting costing <= budget x the full
    ensemble (mean x_full over repeats)."""
    ok = table[table.x_full <= budget + 1e-9]
    return ok.sort_values("test_acc", ascending=False).drop_duplicates("label").sort_values("test_acc",
                                                                                           ascending=False)


def verdict(table: pd.DataFrame, within: float = 0.2, budget: float = 0.5) -> dict:
    """Does a transferred ensemble come within `within` pt of the full ensemble at <= `budget` of its compute,
    and beat the snapshot ensemble that costs no more? Returns the numbers that answer it."""
    full = table[(table.kind == "full") & (table.x_full.round(6) == 1.0)].iloc[0]
    moved = best_within(table[table.kind == "transferred"], budget)
    best = moved.iloc[0] if len(moved) else None
    out = {"full_acc": full.test_acc, "full_nll": full.test_nll, "best": best}
    if best is not None:
        cheaper = table[(table.x_full <= best.x_full + 1e-9) & (table.kind != "transferred")]
        out["gap"] = best.test_acc - full.test_acc
        out["rivals"] = {k: rows.sort_values("test_acc").iloc[-1] for k, rows in cheaper.groupby("kind")}
        snap = out["rivals"].get("snapshot")
        out["meets_accuracy"] = out["gap"] >= -within
        out["beats_snapshot"] = snap is None or best.test_acc > snap.test_acc
    return out


def front_markdown(table: pd.DataFrame) -> str:
    """Best accuracy (mean over repeats) of each kind, and of the transferred recipes, within each budget."""
    kinds = ["source", "checkpoint", "snapshot", "full", "transferred"]
    lines = ["| budget (x full) | " + " | ".join(kinds) + " |", "|---" * (len(kinds) + 1) + "|"]
    for b in BUDGETS:
        best = table[table.x_full <= b + 1e-9].sort_values("test_acc").groupby("kind").tail(1)
        cells = []
        for k in kinds:
            row = best[best.kind == k]
            cells.append("-" if row.empty else
                         f"{row.test_acc.iloc[0]:.2f} ({_setting(row.iloc[0])}, {row.x_full.iloc[0]:.2f}x)")
        lines.append(f"| <= {b:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _setting(row) -> str:
    if row["kind"] == "transferred":
        return f"{recipe_label(row)}, {int(row['epochs'])} ep"
    return f"{int(row['epochs'])} ep"


def table_markdown(table: pd.DataFrame) -> str:
    cols = ["setting", "acc", "NLL", "ECE", "disagreement", "gain", "seconds", "x full", "n"]
    lines = ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
    for _, r in table.iterrows():
        setting = f"{r['label']}, {int(r['epochs'])} ep" + (f" (size {int(r['size'])})" if "size" in r else "")
        lines.append(f"| {setting} | {r.test_acc:.2f} ± {r.acc_std:.2f} | {r.test_nll:.4f} | {r.test_ece:.2f} | "
                     f"{_num(r.disagreement)} | {r.gain:+.2f} | {r.seconds:.1f} | {_num(r.x_full)} | "
                     f"{int(r.n)} |")
    return "\n".join(lines)


def _num(v: float) -> str:
    return "-" if v != v else f"{v:.2f}"


def study_summary(ensembles: pd.DataFrame, recipes: dict[str, tuple[list[str], str]]) -> str:
    """summary.md of experiments/ensemble_study.py: per source lr, the verdict, the best of each kind within
    each budget, the baselines and every transferred recipe (means over repeats)."""
    keys = ["source_lr", "repeat"] + SETTING
    rows = ensembles.drop_duplicates(keys)
    first = rows.iloc[0]
    out = [f"# Ensembles by transfer: {first['dataset']}, {first['model']} width {int(first['width'])}, "
           f"{int(rows['size'].max())} members",
           "",
           "Generated by `experiments/ensemble_study.py` (test split, mean ± std over repeats; n = repeats). "
           "Accuracy and ECE in %, NLL in nats, disagreement in % of test points, gain = ensemble acc - mean "
           "member acc (pt); seconds: training and transfer of every member (each source run counted once); "
           "x full: / the seconds of the M-member full ensemble (every member, all the recipe's epochs) in the same "
           "repeat. Recipes (transferred ensembles):", ""]
    out += [f"- `{name}`: {desc} (`{' '.join(args)}`)" for name, (args, desc) in recipes.items()]
    for lr, part in rows.groupby("source_lr"):
        table = means(part)
        v = verdict(table)
        out += ["", f"## Source lr {lr:g}", "", _verdict_text(v), "",
                "Best accuracy of each kind within a compute budget (setting, x full):", "", front_markdown(table),
                "", "### Baselines", "", table_markdown(table[table.kind != "transferred"]),
                "", "### Transferred ensembles", "", table_markdown(table[table.kind == "transferred"])]
    return "\n".join(out) + "\n"


def _verdict_text(v: dict) -> str:
    head = f"Full ensemble: {v['full_acc']:.2f} % (NLL {v['full_nll']:.4f})."
    best = v["best"]
    if best is None:
        return head + " No transferred ensemble costs <= 0.5x the full ensemble."
    rivals = "; ".join(f"{k} {r.test_acc:.2f} ({_setting(r)}, {r.x_full:.2f}x)"
                       for k, r in v["rivals"].items())
    return (f"{head} Most accurate transferred ensemble at <= 0.5x its compute: {best.test_acc:.2f} ± "
            f"{best.acc_std:.2f} (NLL {best.test_nll:.4f}; {_setting(best)}; {best.x_full:.2f}x), "
            f"{v['gap']:+.2f} pt from the full ensemble: target (within 0.2 pt) "
            f"{'met' if v['meets_accuracy'] else 'not met'}. Best baselines costing no more: {rivals}. "
            f"Ahead of the snapshot ensemble at that compute: {'yes' if v['beats_snapshot'] else 'no'}.")
