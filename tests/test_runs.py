"""The one unit of work's rows: TRANSFER_SCHEMA rows and the agreement with the Oracle, on hand-made results."""
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from ltray.config import DataConfig, ModelConfig, TrainConfig, TransferConfig
from ltray.core.transfer import TransferResult
from ltray.results import TRANSFER_SCHEMA, write_parquet
from ltray.runs import PairOutcome, oracle_agreement, task_columns, transfer_rows


def _result(method: str, perms: list[list[int]]) -> TransferResult:
    T = len(perms)
    return TransferResult(method, np.linspace(0, 1, T + 1), [1.0] * (T + 1), [50.0] * (T + 1),
                          [0.1 * t for t in range(T + 1)], [{"P": torch.tensor(p)} for p in perms], {}, {}, T, {})


def test_agreement_is_the_share_of_units_sent_where_the_oracle_sends_them():
    oracle = {"P": torch.tensor([2, 0, 1, 3])}
    assert oracle_agreement({"P": torch.arange(4)}, oracle) == 0.25          # only unit 3 stays in both
    assert oracle_agreement({"P": torch.tensor([2, 0, 3, 1])}, oracle) == 0.5
    two = {"A": torch.tensor([1, 0]), "B": torch.tensor([0, 1, 2])}           # groups pooled: 3 of 5 units
    assert oracle_agreement({"A": torch.tensor([1, 0]), "B": torch.tensor([1, 0, 2])}, two) == pytest.approx(0.6)


def test_rows_carry_every_step_the_given_columns_and_the_agreement(tmp_path):
    results = {"oracle": _result("oracle", [[2, 0, 1, 3]] * 2), "fgmt": _result("fgmt", [[0, 1, 2, 3], [2, 0, 3, 1]])}
    task = task_columns(DataConfig("digits"), ModelConfig("mlp", 4), 0.1)
    rows = transfer_rows(PairOutcome(0, 1000, results, 1.5), task, TransferConfig(T=2), "test")
    fgmt = [r for r in rows if r["method"] == "fgmt"]
    assert [r["t"] for r in fgmt] == [0, 1, 2] and [r["oracle_agreement"] for r in fgmt] == [0.25, 0.25, 0.5]
    assert all(r["dataset"] == "digits" and r["seed_target"] == 1000 for r in rows) and len(rows) == 6
    without = transfer_rows(PairOutcome(0, 1000, {"fgmt": results["fgmt"]}, 1.5), task, TransferConfig(T=2), "test")
    assert all(r["oracle_agreement"] is None for r in without)
    table = pq.read_table(write_parquet(rows, TRANSFER_SCHEMA, tmp_path / "t.parquet"))   # every column, no other
    assert table.schema.equals(TRANSFER_SCHEMA, check_metadata=False) and table.num_rows == 6
    extended = transfer_rows(PairOutcome(0, 1000, results, 1.5), task, TransferConfig(T=2), "test", arm="a")
    assert [dict(r, arm="a") for r in rows] == extended


def test_each_scenario_column_has_one_meaning():
    """width: the built model's, its default resolved (null only for a model that has none); dataset: the task's
    name, "-permuted" for its pixel-shuffled version; scenario: "pretrained" exactly with a pre-training task."""
    from ltray.analysis.scenarios import Scenario

    digits = DataConfig("digits")
    assert task_columns(digits, ModelConfig("mlp"), 0.1)["width"] == 4096
    assert task_columns(digits, ModelConfig("conv8bn"), 0.1)["width"] == 64
    assert task_columns(digits, ModelConfig("mlp", 32), 0.1)["width"] == 32
    assert task_columns(digits, ModelConfig("torchvision:resnet18"), 0.1)["width"] is None
    plain = Scenario(DataConfig("digits", classes=(5, 6)), ModelConfig("mlp"), TrainConfig(lr=0.2), TransferConfig())
    assert plain.columns() == {"scenario": "random", "dataset": "digits", "classes": "5,6", "pretrain_dataset": None,
                               "pretrain_classes": None, "model": "mlp", "width": 4096, "source_lr": 0.2}
    pre = Scenario(digits, ModelConfig("mlp", 8), TrainConfig(), TransferConfig(),
                   pretrain_data=DataConfig("digits", classes=(0, 1)), pretrain=TrainConfig(), task_pixels="permuted")
    assert pre.columns() == {"scenario": "pretrained", "dataset": "digits-permuted", "classes": None,
                             "pretrain_dataset": "digits", "pretrain_classes": "0,1", "model": "mlp", "width": 8,
                             "source_lr": 0.01}


@pytest.mark.parametrize("kind", ["linear", "actual"])
def test_the_unit_of_work_and_the_analyses_write_the_same_rows_for_the_same_transfer(kind):
    """One digits pair transferred through runs.pair_outcome (the CLI, cnn.py, reproduce_mnist.py, ...) and through
    the analyses' transfer_all: the same trajectories, hence the same rows in every column but wall seconds, with
    `schedule` the linear trajectory's and null for an actual one."""
    import pandas as pd

    from ltray.analysis.scenarios import Scenario, load_data, pair_trajectories, transfer_all
    from ltray.runs import pair_outcome, train_source

    data_cfg, model_cfg, train_cfg = DataConfig("digits"), ModelConfig("mlp", 16), TrainConfig(epochs=2, lr=0.1)
    transfer_cfg = TransferConfig(T=2, trajectory=kind, schedule="uniform")
    methods = ("naive", "oracle", "fgmt")
    scenario = Scenario(data_cfg, model_cfg, train_cfg, transfer_cfg)
    data = load_data(scenario)
    source, target = pair_trajectories(scenario, data, 0, 1000)
    via_analysis = transfer_rows(transfer_all(scenario, data, source, target, methods), scenario.columns(),
                                 transfer_cfg, "same")
    unit_source = train_source(data.task, data_cfg, model_cfg, train_cfg, 0, progress=False)
    assert np.array_equal(unit_source.checkpoints, source.checkpoints)
    _, via_runs = pair_outcome(data.task, data_cfg=data_cfg, model_cfg=model_cfg, train_cfg=train_cfg,
                               transfer_cfg=transfer_cfg, methods=methods, source=unit_source, seed_target=1000,
                               run_id="same")
    timed = ["seconds", "source_train_seconds"]
    a, b = (pd.DataFrame(rows).drop(columns=timed) for rows in (via_analysis, via_runs))
    pd.testing.assert_frame_equal(a, b)
    assert set(a.schedule.fillna("null")) == {"uniform" if kind == "linear" else "null"}
    assert set(a.width) == {16} and set(a.dataset) == {"digits"} and len(a) == 3 * 3


def test_the_oracle_target_is_trained_with_the_recipe_recorded_in_the_source_file(tmp_path):
    """A source file trained at lr 0.1 for 3 epochs, transferred under a command line's lr 0.02 and 2 epochs: the
    Oracle's target trained here is the one trained with the file's recipe (the same numbers as when that target
    is handed in), and the rows report the file's lr."""
    from dataclasses import asdict

    from ltray.config import DataConfig, ModelConfig, TrainConfig, TransferConfig
    from ltray.core.trajectory import load_trajectory, save_trajectory
    from ltray.data import load_dataset
    from ltray.runs import pair_outcome, recorded_recipe, train_source

    data, data_cfg, model_cfg = load_dataset("digits"), DataConfig("digits"), ModelConfig("mlp", 16)
    recipe, command_line = TrainConfig(epochs=3, lr=0.1), TrainConfig(epochs=2, lr=0.02)
    source = train_source(data, data_cfg, model_cfg, recipe, 0, progress=False)
    source = load_trajectory(save_trajectory(source, tmp_path / "source.safetensors"))
    assert recorded_recipe(source, command_line) == recipe
    target = train_source(data, data_cfg, model_cfg, recipe, 1000, progress=False)
    job = dict(data_cfg=data_cfg, model_cfg=model_cfg, train_cfg=command_line, transfer_cfg=TransferConfig(T=2),
               methods=("oracle",), source=source, seed_target=1000, run_id="test")
    trained_here, rows = pair_outcome(data, **job)
    handed_in, _ = pair_outcome(data, target=target, **job)
    here, given = trained_here.results["oracle"], handed_in.results["oracle"]
    assert here.val_acc == given.val_acc and all(torch.equal(here.perms[-1][g], p) for g, p in given.perms[-1].items())
    assert {r["source_lr"] for r in rows} == {0.1}
    # a file that records no recipe: the command line's is all there is
    source.meta.pop("train_config")
    assert asdict(recorded_recipe(source, command_line)) == asdict(command_line)


def test_committed_transfer_files_hold_the_same_meanings():
    """The transfer rows committed under experiments/results read with the meanings above: no lambda schedule on an
    actual trajectory, a width for every ltray model, a dataset that is a task name or its "-permuted" version."""
    from pathlib import Path

    from ltray.models import DEFAULT_WIDTH

    files = [f for f in sorted((Path(__file__).resolve().parents[1] / "experiments" / "results").rglob("*.parquet"))
             if {"trajectory", "schedule", "dataset"} <= set(pq.read_schema(f).names)]
    assert len(files) >= 20
    for f in files:
        df = pq.read_table(f, columns=["trajectory", "schedule", "dataset", "model", "width"]).to_pandas()
        assert df[df.trajectory == "actual"].schedule.isna().all(), f
        assert df[df.trajectory == "linear"].schedule.isin(["cosine", "uniform"]).all(), f
        assert df[df.model.isin(list(DEFAULT_WIDTH))].width.notna().all(), f
        assert df.dataset.str.removesuffix("-permuted").isin(["digits", "mnist", "fashion-mnist", "cifar10"]).all(), f
