"""The `ltray` commands end to end, as a user runs them (subprocess), on the bundled digits data."""
import subprocess
import sys

import pandas as pd
import pytest
from safetensors import safe_open

import json

SMALL = ["--width", "32", "--epochs", "3", "--no-progress"]


def ltray(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "ltray", *map(str, args)], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    result = ltray("train", "--dataset", "digits", "--model", "mlp", *SMALL, "--seed", "3", "--out", out)
    assert result.returncode == 0, result.stderr
    return out / "trajectory.safetensors"


def test_train_writes_a_trajectory_with_its_header(trained):
    with safe_open(str(trained), "pt") as f:
        meta = json.loads(f.metadata()["ltray"])
        assert f.get_tensor("checkpoints").shape[0] == 4
    assert {"model", "width", "dataset", "seed", "epochs", "train_seconds", "ltray_version"} <= set(meta)
    assert (meta["model"], meta["width"], meta["seed"], meta["epochs"]) == ("mlp", 32, 3, 3)


def test_transfer_writes_one_row_per_method_pair_and_step(tmp_path, trained):
    result = ltray("transfer", "--dataset", "digits", *SMALL, "--methods", "naive,oracle,gmt,fgmt", "--T", "3",
                   "--schedule", "uniform", "--seeds", "2", "--trajectory", trained, "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    df = pd.read_parquet(tmp_path / "transfer.parquet")
    assert len(df) == 4 * 2 * 4  # methods x seed pairs x (t = 0..3)
    assert set(df.method) == {"naive", "oracle", "gmt", "fgmt"} and set(df.seed_source) == {3}
    assert df.seed_target.nunique() == 2 and df["T"].unique().tolist() == [3]
    for col in ["schedule", "lambda", "val_acc", "val_loss", "seconds", "config_hash", "ltray_version",
                "torch_version"]:
        assert col in df.columns
    assert df.groupby(["method", "seed_target"]).seconds.is_monotonic_increasing.all()
    assert "fgmt" in result.stdout


@pytest.mark.parametrize("args,message", [
    (["--methods", "naive,magic"], "unknown transfer method 'magic'"),
    (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["--model", "vgg"], "unknown model 'vgg'"),
    (["--T", "0"], "T must be >= 1"),
    (["--batch-size", "0"], "batch sizes must be >= 1"),
    (["--dataset", "mnist", "--data-root", "/nonexistent/root"], "/nonexistent/root"),
    (["--schedule", "zigzag"], "unknown lambda schedule"),
])
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, args, message):
    out = tmp_path / "out"
    result = ltray("transfer", *SMALL, *args, "--out", out)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_wrong_architecture_and_damaged_trajectory_files(tmp_path, trained):
    out = tmp_path / "out"
    result = ltray("transfer", "--width", "64", "--no-progress", "--trajectory", trained, "--out", out)
    assert result.returncode == 2 and "another architecture" in result.stderr
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(trained.read_bytes()[:1000])
    result = ltray("transfer", *SMALL, "--trajectory", damaged, "--out", out)
    assert result.returncode == 2 and "corrupted" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()
