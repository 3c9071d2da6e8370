"""The one unit of work's rows: TRANSFER_SCHEMA rows and the agreement with the Oracle, on hand-made results."""
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from ltray.core.transfer import TransferResult
from ltray.results import TRANSFER_SCHEMA, write_parquet
from ltray.runs import oracle_agreement, transfer_rows


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
    rows = transfer_rows(results, dataset="digits", seed_source=0, seed_target=1000)
    fgmt = [r for r in rows if r["method"] == "fgmt"]
    assert [r["t"] for r in fgmt] == [0, 1, 2] and [r["oracle_agreement"] for r in fgmt] == [0.25, 0.25, 0.5]
    assert all(r["dataset"] == "digits" and r["seed_target"] == 1000 for r in rows) and len(rows) == 6
    without = transfer_rows({"fgmt": results["fgmt"]}, dataset="digits")
    assert all(r["oracle_agreement"] is None for r in without)
    names = set(TRANSFER_SCHEMA.names)
    assert {"t", "lambda", "val_acc", "val_loss", "seconds", "method", "oracle_agreement"} <= names
    full = [dict({k: None for k in names}, **r) for r in rows]   # the schema's other columns left null
    table = pq.read_table(write_parquet(full, TRANSFER_SCHEMA, tmp_path / "t.parquet"))
    assert table.schema.equals(TRANSFER_SCHEMA, check_metadata=False) and table.num_rows == 6
