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
    assert sorted(df.seed_target.unique()) == [1000, 1001] and df["T"].unique().tolist() == [3]
    assert df.groupby(["method", "seed_target"]).seconds.is_monotonic_increasing.all()
    # Naive's last step, built here: theta2^0 (the target seed's init) + theta1^T - theta1^0 of the given file
    from ltray import evaluate, load_dataset
    from ltray.config import ModelConfig
    from ltray.core.trajectory import load_trajectory

    data, source = load_dataset("digits"), load_trajectory(trained)
    for target in (1000, 1001):
        model = ModelConfig("mlp", 32).build(data, target)
        theta2 = {k: v + source.state(-1)[k] - source.state(0)[k] for k, v in model.state_dict().items()}
        row = df[(df.method == "naive") & (df.seed_target == target) & (df.t == 3)]
        assert row.val_acc.item() == pytest.approx(evaluate(model, theta2, data.val)[1])
    # the printed table: per method, mean, std and n over the 2 pairs of the last and of the best step's accuracy
    printed = {line.split()[0]: [float(v) for v in line.split()[1:]] for line in result.stdout.splitlines()
               if line.split() and line.split()[0] in {"naive", "oracle", "gmt", "fgmt"}}
    last = df[df.t == 3].groupby("method").val_acc
    best = df[df.t > 0].groupby(["method", "seed_target"]).val_acc.max().groupby("method")
    for method, numbers in printed.items():
        expected = [last.mean()[method], last.std()[method], 2, best.mean()[method], best.std()[method], 2]
        assert numbers == pytest.approx(expected, abs=0.006), (method, numbers, expected)
    assert set(printed) == {"naive", "oracle", "gmt", "fgmt"}


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


@pytest.mark.parametrize("command", ["train", "transfer", "ensemble", "sweep"])
def test_every_command_resolves_the_model_the_same_way(command, trained, tmp_path):
    """Flags first, then a given trajectory's header, then the dataset's preset, whose width is its own model's
    only: an MLP asked for on CIFAR-10 gets the MLP's default width, not Conv8's 64."""
    from argparse import Namespace

    from ltray.cli import build_parser
    from ltray.cli.args import configs_from_args
    from ltray.config import ModelConfig

    def model(*args):
        parsed = vars(build_parser().parse_args([command, *map(str, args), "--out", str(tmp_path)]))
        return configs_from_args(Namespace(**{k: v for k, v in parsed.items() if k != "T"}))[1]

    assert model("--dataset", "cifar10") == ModelConfig("conv8", 64)
    assert model("--dataset", "cifar10", "--model", "mlp") == ModelConfig("mlp", None)
    assert model("--model", "conv8", "--init", "kaiming") == ModelConfig("conv8", None, 1, "kaiming")
    assert model("--model", "mlp", "--width", "8", "--depth", "2") == ModelConfig("mlp", 8, 2)
    if command != "train":      # the file's header (an mlp of width 32), under the flags
        assert model("--trajectory", trained) == ModelConfig("mlp", 32)
        assert model("--dataset", "cifar10", "--trajectory", trained) == ModelConfig("mlp", 32)
        assert model("--trajectory", trained, "--width", "24") == ModelConfig("mlp", 24)
        assert model("--trajectory", trained, "--model", "conv8") == ModelConfig("conv8", None)


def test_landscape_reads_a_point_header_like_the_other_commands():
    from ltray.config import ModelConfig, model_config

    header = {"model": "mlp", "width": 32, "depth": 2, "init": "kaiming"}
    assert model_config("digits", header=header) == ModelConfig("mlp", 32, 2, "kaiming")
    assert model_config("cifar10", header={"width": 16}) == ModelConfig("conv8", 16)    # a header without a model
    assert model_config("cifar10", "resnet18", header=header) == ModelConfig("resnet18", None)
