"""experiments/vit.py's ViT (issue 24, item 4) and experiments/vit_transfer.py: the factory's derived spec verifies
and moves all but the head's bias with no op freezing a group, and a tiny transfer of it runs through the CLI's
`--model experiments.vit:vit` on the bundled digits (8 x 8: 2 px patches)."""
import importlib.util
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import torch

from ltray.core.autospec import FrozenAxesWarning
from ltray.core.spec_report import spec_report
from ltray.models import resolve_model

ROOT = Path(__file__).resolve().parents[1]


def test_the_vit_factory_moves_everything_but_the_head_bias():
    """MNIST's shape: width 64, 2 layers of 4 heads, feed-forward 128; spec_report derives and verifies the spec."""
    sys.path.insert(0, str(ROOT))   # as `python -m ltray` from the root has it
    try:
        model = resolve_model("experiments.vit:vit", num_classes=10, in_channels=1, image_size=28)
        with warnings.catch_warnings():
            warnings.simplefilter("error", FrozenAxesWarning)
            report = spec_report(model, torch.randn(2, 1, 28, 28))
    finally:
        sys.path.remove(str(ROOT))
    assert report.frozen == () and report.parameters - report.moved == 10 and report.moved_share >= 0.8
    assert report.groups == {"P_patch": 64, "P_layers.0.self_attn.heads": 4, "P_layers.0.linear1": 128,
                             "P_layers.1.self_attn.heads": 4, "P_layers.1.linear1": 128}


def test_a_tiny_vit_transfer_runs_through_the_cli(tmp_path):
    """The script's smoke command line on the digits (300 images, 2 epochs, T = 2): every method from one theta2^0."""
    spec = importlib.util.spec_from_file_location("vit_transfer", ROOT / "experiments" / "vit_transfer.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    args = script.parse(["--smoke", "--dataset", "digits", "--max-train", "300", "--no-progress",
                         "--out", str(tmp_path)])
    done = subprocess.run(script.command(args), cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))   # one core, as the suite's budget
    assert done.returncode == 0, done.stderr[-2000:]
    df = pd.read_parquet(tmp_path / "transfer.parquet")
    assert set(df.method) == {"naive", "oracle", "fgmt"} and len(df) == 3 * 3
    assert set(df.model) == {"experiments.vit:vit"} and df[df.t == 0].val_acc.nunique() == 1
    assert "| 2 | 1.000 |" in script.summary(tmp_path)


def test_gmt_and_fgmt_follow_a_planted_permutation_of_the_vit_at_every_step():
    """The ViT's 3-pair MNIST transfer ends near chance for every method, the Oracle included. Gradient matching is
    not the cause: a target initialised as a permuted copy of the source's initialisation is recovered exactly at
    every step (heads, feed-forward units and the residual stream), and the transferred trajectory is the source's."""
    import ltray
    from ltray.config import TrainConfig, TransferConfig
    from ltray.core.transfer import transfer

    sys.path.insert(0, str(ROOT))
    try:
        from experiments.vit import ViT
    finally:
        sys.path.remove(str(ROOT))
    digits = ltray.load_dataset("digits")
    torch.manual_seed(0)
    model = ViT(10, 1, 8)
    spec = ltray.spec_for(model, digits.train.x[:2])
    traj = ltray.train(model, model.state_dict(), digits.train, TrainConfig(epochs=2, lr=0.05, cosine=True), seed=0,
                       progress=False)
    planted, seq, cfg = ltray.random_permutation(spec, seed=9), traj.linear(2, "cosine"), TransferConfig(T=2)
    itself = transfer("naive", model, spec, seq, traj.state(0), digits, cfg, seed=1)
    for method in ("gmt", "fgmt"):
        result = transfer(method, model, spec, seq, ltray.apply_permutation(spec, planted, traj.state(0)), digits,
                          cfg, seed=1)
        assert all(torch.equal(perm[g], planted[g]) for perm in result.perms for g in spec.groups), method
        assert result.val_acc == itself.val_acc
