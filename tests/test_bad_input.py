"""A corpus of bad input across every command and the public API: each is refused with one line naming the
problem and exit status 2 (no traceback unless --debug), before any work, leaving no file and overwriting none."""
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch

import ltray
from ltray.cli import main
from ltray.config import TrainConfig, TransferConfig
from ltray.core.trajectory import load_trajectory, save_trajectory
from ltray.lap import solve_assignment

TINY = ["--width", "16", "--epochs", "2", "--no-progress"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A trajectory, damaged copies of it, one of another width, an empty dataset folder, a foreign Parquet."""
    root = tmp_path_factory.mktemp("inputs")
    assert main(["train", *TINY, "--out", str(root / "good")]) == 0
    good = root / "good" / "trajectory.safetensors"
    (root / "truncated.safetensors").write_bytes(good.read_bytes()[:2000])
    traj = load_trajectory(good)
    traj.checkpoints = traj.checkpoints.copy()
    traj.checkpoints[2, 5] = np.nan              # in the last checkpoint: one a linear transfer reads
    save_trajectory(traj, root / "nan.safetensors")
    assert main(["train", "--width", "24", "--epochs", "1", "--no-progress", "--out", str(root / "wide")]) == 0
    (root / "empty").mkdir()
    (root / "foreign").mkdir()
    pd.DataFrame({"x": [1]}).to_parquet(root / "foreign" / "transfer.parquet")
    (root / "space.yaml").write_text("T: [5, 10\n")
    (root / "cluster.yaml").write_text("provider: [1, 2\n")
    return {"good": good, "truncated": root / "truncated.safetensors", "nan": root / "nan.safetensors",
            "wide": root / "wide" / "trajectory.safetensors", "empty": root / "empty", "foreign": root / "foreign",
            "space": root / "space.yaml", "cluster": root / "cluster.yaml"}


# (command line with {placeholders}, what the one line must say); {out} is a fresh folder unless given
CASES = [
    (["transfer", *TINY, "--methods", "naive,magic"], "unknown transfer method 'magic'"),
    (["transfer", *TINY, "--methods", ","], "--methods is empty"),
    (["transfer", *TINY, "--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["transfer", *TINY, "--model", "vgg"], "unknown model 'vgg'"),
    (["transfer", *TINY, "--init", "xavier"], "unknown initialisation 'xavier'; known: default, kaiming"),
    (["transfer", *TINY, "--T", "0"], "T must be >= 1"),
    (["transfer", *TINY, "--batch-size", "0"], "batch sizes must be >= 1"),
    (["transfer", *TINY, "--batch-size", "100000"], "B=100000 exceeds the"),
    (["transfer", *TINY, "--trajectory-kind", "actual", "--T", "5"], "needs a source of at least T epochs"),
    (["transfer", *TINY, "--schedule", "zigzag"], "unknown lambda schedule 'zigzag'"),
    (["transfer", *TINY, "--solver", "magic"], "unknown assignment solver 'magic'"),
    (["transfer", *TINY, "--lr", "-1"], "learning rate must be > 0"),
    (["transfer", *TINY, "--epochs", "0"], "argument --epochs: must be >= 1"),
    (["transfer", *TINY, "--seeds", "two"], "argument --seeds: expected an integer"),
    (["transfer", *TINY, "--trajectory", "{missing}"], "does not exist"),
    (["transfer", *TINY, "--trajectory", "{truncated}"], "is corrupted or not an ltray trajectory"),
    (["transfer", *TINY, "--trajectory", "{nan}"], "contains NaN or Inf values (checkpoint 2)"),
    (["transfer", *TINY, "--trajectory", "{wide}"], "is for another architecture"),
    (["transfer", *TINY, "--dataset", "mnist", "--data-root", "{empty}"], "no dataset files"),
    (["transfer", *TINY, "--out", "{good}"], "exists and is not a directory"),
    (["transfer", *TINY, "--out", "{foreign}"], "holds a transfer.parquet with other columns"),
    (["transfer", *TINY, "--address", "auto", "--num-cpus", "2", "--seeds", "2"], "--num-cpus caps the embedded"),
    (["train", *TINY, "--classes", "0,99"], "99"),
    (["train", *TINY, "--max-train", "0"], "argument --max-train: must be >= 1"),
    (["ensemble", *TINY, "--members", "0"], "--members, --sources and --repeats must be >= 1"),
    (["ensemble", *TINY, "--finetune-optimizer", "lbfgs"], "unknown fine-tuning optimizer 'lbfgs'"),
    (["ensemble", *TINY, "--snapshot-epochs", "3"], "--snapshot-epochs must be multiples of --members"),
    (["ensemble", *TINY, "--trained-epochs", "0"], "--trained-epochs must lie in 1..2"),
    (["ensemble", *TINY, "--snapshot-lrs", "0.1,0"], "--snapshot-lrs must be > 0"),
    (["ensemble", *TINY, "--sources", "2", "--repeats", "1", "--trajectory", "{good}"], "gives one source"),
    (["ensemble", *TINY, "--finetune-epochs", "-1"], "--finetune-epochs needs epochs >= 0"),
    (["sweep", *TINY, "--T", "2,x"], "T values must be int"),
    (["sweep", *TINY, "--objective", "speed"], "unknown objective 'speed'"),
    (["sweep", *TINY, "--finetune-lr", "1e-3,1e-5", "--objective", "finetuned_val_acc"], "finetune_lr is a range"),
    (["sweep", *TINY, "--space", "{space}"], "is not valid JSON/YAML"),
    (["sweep", *TINY, "--resume"], "nothing to resume"),
    (["landscape", "{good}"], "give 2 points"),
    (["landscape", "{good}", "{good}@0", "--grid", "1"], "--grid must be at least 2"),
    (["landscape", "{good}", "{good}@0", "--labels", "a,a"], "--labels needs 2 distinct names"),
    (["landscape", "{good}", "{good}@9"], "trajectory has checkpoints 0..2"),
    (["check-cluster", "{cluster}"], "is not valid YAML"),
    (["spec", "vgg"], "unknown model 'vgg'"),
    (["spec", "torchvision:nope"], "unknown torchvision model 'nope'"),
    (["spec", "mlp", "--width", "0"], "argument --width: must be >= 1"),
]


@pytest.mark.parametrize("argv, message", CASES, ids=[f"{c[0][0]}-{i}" for i, c in enumerate(CASES)])
def test_bad_input_is_one_line_exit_2_and_nothing_written(argv, message, files, tmp_path, capsys):
    names = dict(files, missing=tmp_path / "missing.safetensors")
    argv = [a.format(**names) for a in argv]
    given_out = "--out" in argv
    if not given_out and argv[0] not in ("check-cluster", "spec"):   # commands that write nothing
        argv += ["--out", str(tmp_path / "out")]
    before = {p: p.stat().st_mtime_ns for p in files["foreign"].iterdir()}
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0], err
    assert not (tmp_path / "out").exists()
    assert {p: p.stat().st_mtime_ns for p in files["foreign"].iterdir()} == before    # nothing overwritten


def test_debug_shows_the_traceback_instead(files, tmp_path):
    with pytest.raises(ltray.LtrayError, match="unknown transfer method"):
        main(["transfer", *TINY, "--methods", "magic", "--debug", "--out", str(tmp_path / "out")])


@pytest.mark.parametrize("call, message", [
    (lambda: TransferConfig(T=0), "T must be >= 1"),
    (lambda: TrainConfig(epochs=10, cycles=3), "epochs divisible by cycles"),
    (lambda: ltray.load_dataset("cifar10", None), "needs a data_root"),
    (lambda: ltray.build_model("transformer"), "transformer"),
    (lambda: solve_assignment(torch.zeros(3, 4)), "square score matrix"),
    (lambda: ltray.lambda_schedule(3, "zigzag"), "unknown lambda schedule"),
])
def test_the_library_refuses_bad_input_with_one_line(call, message):
    with pytest.raises(ltray.LtrayError, match=message) as err:
        call()
    assert "\n" not in str(err.value)


def test_an_unwritable_or_full_out_is_one_line_and_earlier_results_stay(files, tmp_path, capsys):
    """A read-only and a full file system (tmpfs mounts; skipped where this process may not mount)."""
    ro, full = tmp_path / "ro", tmp_path / "full"
    ro.mkdir(), full.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        assert main(["transfer", *TINY, "--out", str(ro / "out")]) == 2
        assert "is not writable" in capsys.readouterr().err
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(full)], check=True)
        assert main(["transfer", *TINY, "--methods", "naive", "--T", "1", "--out", str(full)]) == 0
        before = (full / "transfer.parquet").read_bytes()
        (full / "ballast").write_bytes(b"\0" * (256 * 1024 - len(before) - 4096))   # fill what is left
        capsys.readouterr()
        assert main(["transfer", *TINY, "--methods", "naive,fgmt", "--T", "2", "--out", str(full)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "cannot write" in err[0] and "No space left" in err[0], err
        assert (full / "transfer.parquet").read_bytes() == before                       # untouched
        assert sorted(p.name for p in full.iterdir()) == ["ballast", "transfer.parquet"]  # no temp file left
    finally:
        for mount in (ro, full):
            subprocess.run(["umount", str(mount)], capture_output=True)
