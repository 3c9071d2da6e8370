"""experiments/ensemble_study.py --plot-only: the study's figures and summary.md regenerate from its committed
Parquet (copied to tmp_path, never touched in place), and the summary's numbers are the Parquet's."""
import importlib.util
import shutil
from pathlib import Path

import pandas as pd
import pytest

from ltray.ensemble.report import recipe_label

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "experiments" / "results" / "ensemble"
SETTING = ["kind", "method", "sources", "with_sources", "epochs", "finetune_optimizer", "finetune_lr"]


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
    for lr in ("0.01", "0.1"):
        assert (redrawn / f"ensemble_lr{lr}.png").stat().st_size > 10_000
    # what is committed is what HEAD's code makes of HEAD's Parquet
    assert (redrawn / "summary.md").read_text() == (COMMITTED / "summary.md").read_text()


def _expected_lines(ensembles: pd.DataFrame) -> dict[float, list[str]]:
    """Every table row of summary.md, recomputed here with pandas from the Parquet: means over repeats, the std
    of accuracy, and x_full = seconds / those of the M-member full ensemble at the last epochs, same repeat
    (from the seconds column, not from the file's x_full)."""
    out = {}
    for lr, part in ensembles.drop_duplicates(["source_lr", "repeat"] + SETTING).groupby("source_lr"):
        full = part[(part.kind == "full") & (part["size"] == part["size"].max())]
        full = full[full.epochs == full.epochs.max()].set_index("repeat").seconds
        part = part.assign(x=part.seconds / part.repeat.map(full))
        lines = []
        for _, g in part.groupby(SETTING, dropna=False, sort=False):
            r = g.iloc[0]
            m = g[["test_acc", "test_nll", "test_ece", "disagreement", "gain", "seconds", "x"]].mean()
            dis = "-" if m.disagreement != m.disagreement else f"{m.disagreement:.2f}"
            lines.append(f"| {recipe_label(r)}, {int(r.epochs)} ep | {m.test_acc:.2f} ± {g.test_acc.std():.2f} | "
                         f"{m.test_nll:.4f} | {m.test_ece:.2f} | {dis} | {m.gain:+.2f} | {m.seconds:.1f} | "
                         f"{m.x:.2f} | {g.repeat.nunique()} |")
        out[lr] = lines
    return out


def test_the_summary_numbers_are_the_parquet_numbers(redrawn):
    ensembles = pd.read_parquet(COMMITTED / "ensemble.parquet")
    summary = (redrawn / "summary.md").read_text()
    sections = summary.split("## Source lr ")[1:]
    expected = _expected_lines(ensembles)
    assert [float(s.split("\n", 1)[0]) for s in sections] == sorted(expected)
    for (lr, lines), section in zip(sorted(expected.items()), sections):
        rows = [line for line in section.splitlines() if line.startswith("| ") and " ep |" in line]
        assert sorted(rows) == sorted(lines), lr
        assert len(lines) == 55     # 15 baselines and 40 transferred settings (8 recipes x 4 stages, + Naive/GMT)
    full = ensembles[(ensembles.kind == "full") & (ensembles.epochs == 10) & (ensembles.source_lr == 0.1)]
    full = full.drop_duplicates("repeat")
    assert f"Full ensemble: {full.test_acc.mean():.2f} % (NLL {full.test_nll.mean():.4f})" in sections[1]
