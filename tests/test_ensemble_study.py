"""experiments/ensemble_study.py --plot-only: the study's figure and summary.md regenerate from its committed
Parquet (copied to tmp_path, never touched in place), and the summary's choices and numbers are recomputed here
from the Parquet with pandas and scipy: each kind's setting is the best on validation within the budget, the
intervals are Student's, the gap to the full ensemble is paired by repeat."""
import importlib.util
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "experiments" / "results" / "ensemble"
SETTING = ["kind", "method", "size", "sources", "with_sources", "epochs", "lr", "finetune_optimizer", "finetune_lr"]


def _study():
    spec = importlib.util.spec_from_file_location("exp_ensemble_study", ROOT / "experiments" / "ensemble_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def redrawn(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    for name in ("ensemble.parquet", "members.parquet"):
        shutil.copy(COMMITTED / name, out / name)
    _study().main(["--plot-only", "--out", str(out)])
    return out


def test_plot_only_redraws_the_committed_study_without_touching_its_input(redrawn):
    assert (redrawn / "ensemble.parquet").read_bytes() == (COMMITTED / "ensemble.parquet").read_bytes()
    assert (redrawn / "ensemble.png").stat().st_size > 10_000
    # what is committed is what HEAD's code makes of HEAD's Parquet
    assert (redrawn / "summary.md").read_text() == (COMMITTED / "summary.md").read_text()


def _means() -> pd.DataFrame:
    """Per setting (each repeat once): mean validation and test accuracy, mean x_full_eq, the repeats' test
    accuracies, computed here without ltray."""
    df = pd.read_parquet(COMMITTED / "ensemble.parquet").drop_duplicates(["repeat"] + SETTING)
    keyed = df.assign(key=[tuple(None if v != v else v for v in r) for r in df[SETTING].itertuples(index=False)])
    return keyed.groupby("key", sort=False).agg(kind=("kind", "first"), val=("val_acc", "mean"),
                                                test=("test_acc", "mean"), x=("x_full_eq", "mean"),
                                                accs=("test_acc", list)).reset_index(drop=True)


def test_each_kinds_choice_is_its_best_on_validation_within_the_budget(redrawn):
    """Every cell of the budget table: the test accuracy (± its 95 % interval) of the kind's setting with the
    best mean validation accuracy among those costing no more than the budget in passes."""
    table = _means()
    front = (redrawn / "summary.md").read_text().split("## The setting of each kind")[1].split("##")[0]
    head = [c.strip() for c in front.splitlines()[2].strip("|").split("|")][1:]
    checked = 0
    for line in front.splitlines()[4:]:
        if not line.startswith("| <= "):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        budget = float(cells[0][3:])
        for kind, cell in zip(head, cells[1:]):
            ok = table[(table.kind == kind) & (table.x <= budget + 1e-9)]
            if ok.empty:
                assert cell == "-"
                continue
            best = ok.loc[ok.val.idxmax()]
            accs = np.array(best.accs)
            half = stats.t.ppf(0.975, len(accs) - 1) * accs.std(ddof=1) / np.sqrt(len(accs))
            assert cell.startswith(f"{accs.mean():.2f} ± {half:.2f} ("), (budget, kind, cell)
            checked += 1
    assert checked >= 12


def test_the_verdicts_gap_is_paired_over_repeats(redrawn):
    summary = (redrawn / "summary.md").read_text()
    df = pd.read_parquet(COMMITTED / "ensemble.parquet").drop_duplicates(["repeat"] + SETTING)
    m = int(df["size"].max())
    full = df[(df.kind == "full") & (df["size"] == m) & (df.epochs == df[df.kind == "full"].epochs.max())]
    moved = df[df.kind == "transferred"]
    groups = moved.groupby(["method", "sources", "with_sources", "epochs", "finetune_lr"])
    chosen = groups.filter(lambda g: g.x_full_eq.mean() <= 0.5 + 1e-9)
    if chosen.empty:
        assert "No transferred ensemble costs" in summary
        return
    best_key = chosen.groupby(["method", "sources", "with_sources", "epochs", "finetune_lr"]).val_acc.mean().idxmax()
    best = groups.get_group(best_key).set_index("repeat").test_acc
    diff = best - full.set_index("repeat").test_acc
    half = stats.t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / np.sqrt(len(diff))
    found = re.search(r"([+-]\d+\.\d\d) ± (\d+\.\d\d) pt from the full ensemble", summary)
    assert found and found.groups() == (f"{diff.mean():+.2f}", f"{half:.2f}")
