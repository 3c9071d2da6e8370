"""Analyses: the pre-trained scenario's heads, trajectories and caching, subsequent training, and the
experiment scripts' --smoke runs (bundled digits, seconds)."""
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

import ltray
from ltray.analysis import scenarios as analysis
from ltray.analysis.scenarios import pair_trajectories, subsequent_training, transfer_all
from ltray.config import FinetuneConfig
from ltray.analysis.script import preset
from ltray.errors import LtrayError
from ltray.models import build_model
from ltray.config import ModelConfig
from ltray.analysis.pretrained import fresh_head, head_keys, with_head
from ltray.results import PATH_SCHEMA, PLANE_SCHEMA, TRANSFER_SCHEMA, SUBSEQUENT_SCHEMA

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def pre():
    scenario = preset("pretrained", smoke=True, width=32, T=3)
    return scenario, analysis.load_data(scenario)


def test_head_keys_are_the_last_linear_layer():
    assert head_keys(build_model("mlp", width=8)) == ("fc2.weight", "fc2.bias")
    assert head_keys(build_model("mlp", width=8, depth=3)) == ("fc4.weight", "fc4.bias")
    assert head_keys(build_model("conv8", 10, 3, 32, width=4)) == ("fc3.weight", "fc3.bias")
    assert head_keys(build_model("resnet18", 10, 3, 32)) == ("fc.weight", "fc.bias")


def test_pretrained_init_is_the_pretrained_body_with_a_fresh_seeded_head(pre, cache):
    scenario, data = pre
    init = analysis.initial_state(scenario, data, 0, cache)
    body = analysis.cached(cache, ("pretrain", scenario.pretrain_data, scenario.model, scenario.pretrain, 0),
                           lambda: pytest.fail("the pre-training should come from the cache")).state(-1)
    assert all(torch.equal(init[k], body[k]) for k in ("fc1.weight", "fc1.bias"))
    head = fresh_head(scenario.model, data.task, 0)
    assert all(torch.equal(init[k], head[k]) for k in ("fc2.weight", "fc2.bias"))
    assert not torch.equal(head["fc2.weight"], fresh_head(scenario.model, data.task, 1)["fc2.weight"])
    # the fine-tuning trajectory starts exactly there, and the second call is served by the cache
    source = analysis.trained(scenario, data, 0, cache)
    assert all(torch.equal(source.state(0)[k], init[k]) for k in init)
    again = analysis.trained(scenario, data, 0, cache)
    assert np.array_equal(again.checkpoints, source.checkpoints)


def test_with_head_rejects_a_body_of_another_input_size(pre):
    scenario, data = pre
    big = ModelConfig("mlp", 32).build(ltray.load_dataset("digits", image_size=12), 0)
    with pytest.raises(ltray.LtrayError, match="does not fit"):
        with_head(big.state_dict(), fresh_head(scenario.model, data.task, 0), scenario.model.build(data.task, 0))


def test_pretrained_transfer_moves_the_head_delta_with_pi(pre, cache, monkeypatch):
    """theta2^t = theta2^0 + pi_t(theta1^t - theta1^0): the head's input axis is permuted, its class axis not."""
    scenario, data = pre
    source, target = pair_trajectories(scenario, data, 0, 1000, cache)
    run = transfer_all(scenario, data, source, target, ("naive", "fgmt"), cache=cache)
    theta2_0, seq = target.state(0), source.linear(3, "cosine")
    d = {k: seq[3][k] - seq[0][k] for k in theta2_0}
    naive, fgmt = run.results["naive"], run.results["fgmt"]
    assert torch.allclose(naive.final["fc2.weight"], theta2_0["fc2.weight"] + d["fc2.weight"], atol=1e-6)
    pi = fgmt.perms[-1]["P_fc1"]
    assert torch.allclose(fgmt.final["fc2.weight"], theta2_0["fc2.weight"] + d["fc2.weight"][:, pi], atol=1e-6)
    assert torch.allclose(fgmt.final["fc2.bias"], theta2_0["fc2.bias"] + d["fc2.bias"], atol=1e-6)
    # subsequent training starts where the transfer's best step was
    rows = pd.DataFrame(subsequent_training(scenario, data, run, FinetuneConfig(epochs=1), "test"))
    start = rows[rows.epoch == 0].set_index("start")
    assert start.loc["fgmt", "val_acc"] == pytest.approx(max(fgmt.val_acc[1:]))
    assert start.loc["fgmt", "start_step"] == fgmt.best_step
    assert start.loc["standard", "val_acc"] == pytest.approx(fgmt.val_acc[0])
    assert sorted(rows.epoch.unique()) == [0, 1] and len(rows) == 3 * 2
    # a second run is served whole from the cache
    monkeypatch.setattr(analysis, "transfer_pair", lambda *a, **k: pytest.fail("recomputed a cached transfer"))
    again = transfer_all(scenario, data, source, target, ("naive", "fgmt"), cache=cache).results["fgmt"]
    assert again.val_acc == fgmt.val_acc and again.best_step == fgmt.best_step
    assert all(torch.equal(again.perms[t][g], fgmt.perms[t][g]) for t in range(3) for g in fgmt.perms[t])
    assert all(torch.equal(again.final[k], fgmt.final[k]) and torch.equal(again.best[k], fgmt.best[k])
               for k in fgmt.final)


# ---- the experiment scripts ----------------------------------------------------------------------------

def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"exp_{name}", EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _smoke(name, out, cache, *extra):
    from ltray.analysis.script import main

    module = _script(name)
    return main(module.body, module.__doc__, name, argv=["--smoke", "--out", str(out), "--cache", str(cache),
                                                         "--width", "32", *extra])


def _read(path, schema):
    assert pq.read_schema(path).equals(schema, check_metadata=False)
    df = pd.read_parquet(path)
    assert not df.isna()[["val_acc"] if "val_acc" in df else ["loss"]].any().any()
    return df


def _check_steps(df, units: int):
    """Invariants of TRANSFER_SCHEMA rows: at t = 0 every method is theta2^0 (one accuracy, loss and agreement per
    seed pair), Naive keeps the identity (its agreement never changes), and an agreement counts units (k / units)."""
    pair = ["seed_source", "seed_target"]
    start = df[df.t == 0].groupby(pair)[["val_acc", "val_loss", "oracle_agreement"]].nunique()
    assert (start == 1).all().all() and df[df.t == 0].groupby(pair).method.nunique().eq(df.method.nunique()).all()
    naive = df[df.method == "naive"].groupby(pair).oracle_agreement.nunique()
    assert (naive == 1).all()
    k = df.oracle_agreement * units
    assert np.allclose(k, k.round(), atol=1e-9)


@pytest.mark.parametrize("scenario", ["random", "pretrained"])
def test_transfer_curves_smoke(tmp_path, cache, scenario):
    assert _smoke("transfer_curves", tmp_path, cache, "--scenario", scenario) == 0
    df = _read(tmp_path / f"{scenario}_w32_transfer.parquet", TRANSFER_SCHEMA)
    assert set(df.method) == set(ltray.METHODS) and df.seed_source.nunique() == 2
    assert len(df) == 4 * 2 * 5 and set(df.scenario) == {scenario}
    first = df[df.t == 1].groupby("seed_source")
    assert all((g.set_index("method").val_acc["gmt"] == g.set_index("method").val_acc["fgmt"]) for _, g in first)
    assert (tmp_path / f"{scenario}_w32_transfer.png").stat().st_size > 10_000
    _check_steps(df, units=32)
    final = df[df.t == df["T"]].pivot_table(index="seed_source", columns="method", values="val_acc")
    if scenario == "random":     # digits has 10 classes: every method carries the source's learning (~80-90 %)
        assert (final > 60).all().all(), final
    else:                        # a fresh head on another task: Naive fails (~25 %), the matched methods do not
        for method in ("oracle", "gmt", "fgmt"):
            assert (final[method] > final["naive"] + 20).all(), final


def test_transfer_curves_batchnorm_model_smoke(tmp_path, cache):
    """--model conv8bn: the BatchNorm path on real images (digits), every method, its own file names."""
    assert _smoke("transfer_curves", tmp_path, cache, "--model", "conv8bn", "--width", "4", "--seeds", "1",
                  "--T", "2") == 0
    df = _read(tmp_path / "random_conv8bn_w4_transfer.parquet", TRANSFER_SCHEMA)
    assert set(df.method) == set(ltray.METHODS) and set(df.model) == {"conv8bn"} and len(df) == 4 * 3
    # t = 0 is one BatchNorm-reset theta2^0 for every method; its units: 11 groups of 4 to 32 (184 in all)
    units = sum(len(p) for p in ltray.identity_permutation(ltray.spec_for(build_model("conv8bn", 10, 1, 8, width=4)))
                .values())
    _check_steps(df, units=units)
    acc = df.pivot_table(index="method", columns="t", values="val_acc")
    assert (acc[2] > acc[0] + 10).all(), acc                   # every method carries some of the source's learning
    assert (tmp_path / "random_conv8bn_w4_transfer.png").exists()


def test_permuted_task_starts_where_the_plain_one_does_and_is_cached_apart(pre, cache):
    """--task-pixels permuted: the same pre-trained theta^0, a fine-tuning on other inputs, its own cache entry
    and file names."""
    from dataclasses import replace

    scenario, data = pre
    permuted = replace(scenario, task_pixels="permuted")
    plain = analysis.trained(scenario, data, 0, cache)
    moved = analysis.trained(permuted, analysis.load_data(permuted), 0, cache)
    assert all(torch.equal(plain.state(0)[k], moved.state(0)[k]) for k in plain.state(0))
    assert not torch.equal(plain.state(-1)["fc1.weight"], moved.state(-1)["fc1.weight"])
    assert permuted.columns()["dataset"] == "digits-permuted"
    with pytest.raises(LtrayError, match="pre-trained scenario"):
        preset("random", smoke=True, task_pixels="permuted")


def test_generalisation_smoke(tmp_path, cache):
    """experiments/generalisation.py --smoke: a trajectory from a body pre-trained on 10 % of the images, moved
    onto a fully and a 10 %-pre-trained target; every start trained and scored on validation and test sets."""
    from ltray.results import GENERALISATION_SCHEMA

    assert _smoke("generalisation", tmp_path, cache, "--scenario", "pretrained", "--seeds", "1") == 0
    df = pd.read_parquet(tmp_path / "pretrained_w32_generalisation.parquet")
    assert pq.read_schema(tmp_path / "pretrained_w32_generalisation.parquet").equals(GENERALISATION_SCHEMA,
                                                                                   check_metadata=False)
    starts = set(zip(df.start, df.source_pretrain.fillna(-1), df.target_pretrain))
    assert starts == {("fgmt", 0.1, 1.0), ("fgmt", 0.1, 0.1), ("standard", -1, 1.0), ("standard", -1, 0.1)}
    assert len(df) == 4 * 3 and set(df.epoch) == {0, 1, 2} and set(df.scenario) == {"pretrained"}
    # the standard starts are the plain pre-trained bodies: the same head, different bodies, different predictions
    first = df[df.epoch == 0].set_index(["start", "target_pretrain"]).test_acc
    assert first["standard", 1.0] != first["standard", 0.1]
    # the transferred trajectory starts well above the body it lands on (~60-90 % vs ~27 %: the head is fresh)
    assert first["fgmt", 1.0] > first["standard", 1.0] + 20 and first["fgmt", 0.1] > first["standard", 0.1] + 20
    assert (df[df.start == "fgmt"].start_step >= 1).all() and (df[df.start == "standard"].start_step == 0).all()
    assert (tmp_path / "pretrained_w32_generalisation.png").stat().st_size > 10_000


def test_width_study_smoke(tmp_path):
    """experiments/width_study.py --smoke: one reproduce_mnist run per width; width.parquet holds each width's
    first-layer movement and each method's final accuracy, with a figure and a summary."""
    _script("width_study").main(["--smoke", "--out", str(tmp_path), "--cache", str(tmp_path / "cache")])
    df = pd.read_parquet(tmp_path / "width.parquet")
    assert set(df.width) == {16, 64} and set(df.method) == {"naive", "fgmt", "oracle"}
    ratio = df.groupby("width").first_layer_ratio.agg(["min", "max"])
    assert (ratio["min"] > 0).all() and (ratio["min"] == ratio["max"]).all()   # one source per width and lr
    for width, rows in df.groupby("width"):   # each row is the last step of its width's own transfer.parquet
        steps = pd.read_parquet(tmp_path / f"w{width}" / "transfer.parquet")
        last = steps[steps.t == steps["T"]].set_index("method").val_acc
        assert rows.set_index("method").final_val_acc.to_dict() == pytest.approx(last.to_dict())
        assert rows.source_val_acc.nunique() == 1
    assert (tmp_path / "width.png").stat().st_size > 10_000 and "| 0.1 | 16 |" in (tmp_path / "summary.md").read_text()


def test_subsequent_training_smoke(tmp_path, cache):
    assert _smoke("subsequent_training", tmp_path, cache) == 0
    df = _read(tmp_path / "random_w32_subsequent.parquet", SUBSEQUENT_SCHEMA)
    assert set(df.start) == set(ltray.METHODS) | {"standard"} and sorted(df.epoch.unique()) == [0, 1, 2]
    assert (df[df.start == "standard"].start_step == 0).all()
    assert (tmp_path / "random_w32_subsequent.png").exists()
    # each start is where its transfer was best (first t >= 1 of the highest accuracy); standard is theta2^0 itself
    assert _smoke("transfer_curves", tmp_path / "curves", cache, "--scenario", "random") == 0
    steps = pd.read_parquet(tmp_path / "curves" / "random_w32_transfer.parquet")
    first = df[df.epoch == 0].set_index(["seed_source", "start"])
    for (seed, method), rows in steps.groupby(["seed_source", "method"]):
        later = rows[rows.t >= 1].sort_values("t")
        best = later.loc[later.val_acc.idxmax()]
        assert first.loc[(seed, method), "start_step"] == best.t
        assert first.loc[(seed, method), "val_acc"] == pytest.approx(best.val_acc)
        assert first.loc[(seed, "standard"), "val_acc"] == pytest.approx(rows[rows.t == 0].val_acc.item())


def test_mode_connectivity_smoke(tmp_path, cache):
    assert _smoke("mode_connectivity", tmp_path, cache, "--seeds", "1") == 0
    paths = _read(tmp_path / "random_w32_paths.parquet", PATH_SCHEMA)
    assert set(paths.case) == {"source", "trained"} and len(paths) == 4 * 2 * 7
    # every path's barrier is its largest rise above the straight line between its two end losses
    for _, path in paths.groupby(["case", "method", "seed_source"]):
        path = path.sort_values("alpha")
        a, loss = path.alpha.to_numpy(), path.loss.to_numpy()
        line = (1 - a) * loss[0] + a * loss[-1]
        assert path.barrier.iloc[0] == pytest.approx(max(0.0, float((loss - line).max())), abs=1e-9)
    planes = _read(tmp_path / "random_w32_plane.parquet", PLANE_SCHEMA)
    assert sorted(planes.point.dropna()) == ["fgmt", "oracle", "trained"] and planes.point.isna().sum() == 49
    assert (tmp_path / "random_w32_plane.png").exists() and (tmp_path / "random_w32_paths.png").exists()
    # experiments/summarise.py's table recomputes the barriers from the path rows: the same loss barrier
    from ltray.analysis.summaries import summary_markdown

    table = summary_markdown(tmp_path)
    assert "| a | method | loss barrier | relative | accuracy barrier |" in table
    fgmt = paths[(paths.case == "trained") & (paths.method == "fgmt")].barrier.iloc[0]
    assert f"| trained | fgmt | {fgmt:.3f} |" in table


def test_ablations_smoke(tmp_path, cache):
    assert _smoke("ablations", tmp_path, cache, "--seeds", "1") == 0
    df = _read(tmp_path / "random_w32_ablation.parquet", TRANSFER_SCHEMA)
    variants = set(zip(df.trajectory, df.schedule.fillna("-")))
    assert variants == {("linear", "cosine"), ("linear", "uniform"), ("actual", "-")}
    # Naive's last point theta2^0 + (theta1^T - theta1^0) does not depend on the trajectory used
    last = df[(df.method == "naive") & (df.t == df["T"])]
    assert last.val_acc.nunique() == 1
    # the figure can be redrawn from the Parquet alone
    png = tmp_path / "random_w32_ablation.png"
    png.unlink()
    from ltray.analysis.summaries import replot
    assert replot(tmp_path) == [png] and png.stat().st_size > 10_000


@pytest.mark.parametrize("argv, match", [
    (["--smoke", "--seeds", "0"], "--seeds must be >= 1"),
    (["--smoke", "--scenario", "sideways"], "unknown scenario"),
    (["--scenario", "pretrained"], "need --data-root"),
    (["--smoke", "--solver", "magic"], "unknown assignment solver"),
])
def test_scripts_reject_bad_input_in_one_line(tmp_path, capsys, argv, match):
    from ltray.analysis.script import main

    module = _script("transfer_curves")
    assert main(module.body, module.__doc__, "transfer", argv=[*argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_half_precision_smoke(tmp_path):
    """experiments/half_precision.py --smoke: the same source stored three ways, transferred onto one target."""
    _script("half_precision").main(["--smoke", "--out", str(tmp_path)])
    df = pd.read_parquet(tmp_path / "half_precision.parquet")
    err = df.groupby("storage_dtype").max_abs_error.max()
    assert err["float32"] == 0 < err["float16"] < err["bfloat16"] < 1e-2    # bfloat16 keeps 8 bits, float16 11
    size = df.groupby("storage_dtype").file_mib.max()
    assert max(size["bfloat16"], size["float16"]) < 0.6 * size["float32"]     # headers differ by a few bytes
    assert set(df.method) == {"naive", "fgmt"} and len(df) == 3 * 2 * (df["T"].iloc[0] + 1)
    assert "| fgmt | bfloat16 |" in (tmp_path / "summary.md").read_text()


def test_source_accuracy_smoke(tmp_path):
    """experiments/source_accuracy.py --smoke: four variants of one source; the full ones train on train + val
    and are scored on the test set only."""
    _script("source_accuracy").main(["--smoke", "--out", str(tmp_path)])
    df = pd.read_parquet(tmp_path / "source_accuracy.parquet")
    sizes = df.groupby("variant").train_images.first()
    assert sizes["full"] == sizes["full-unnorm"] > sizes["ltray"] == sizes["unnormalised"]
    assert set(df[df.variant.str.startswith("full")].split) == {"test"} and set(df.split) == {"val", "test"}
    assert set(df.epoch) == {0, 1, 2, 3}
    acc = df.pivot_table(index=["variant", "split"], columns="epoch", values="acc")
    assert (acc[0] < 20).all() and (acc[3] > acc[1] + 20).all() and (acc[3] > 60).all(), acc  # untrained, then learnt


def test_replot_draws_a_permuted_task_with_the_chance_of_the_task_it_shuffles(tmp_path, monkeypatch):
    """dataset "mnist-permuted" (ltray.results) is MNIST with its pixels shuffled: with all its classes, chance is
    10 %, as for "mnist"; with classes 5-9, 20 %."""
    from ltray.analysis import plots
    from ltray.analysis.summaries import replot

    committed = pd.read_parquet(EXPERIMENTS / "results" / "pretrained_permuted_w1024_transfer.parquet")
    assert set(committed.dataset) == {"mnist-permuted"} and set(committed.classes) == {"5,6,7,8,9"}
    committed.to_parquet(tmp_path / "a_transfer.parquet")
    committed.assign(classes=None).to_parquet(tmp_path / "b_transfer.parquet")
    drawn, real = [], plots.transfer_figure
    monkeypatch.setattr(plots, "transfer_figure", lambda rows, chance=None: drawn.append(chance) or real(rows, chance))
    assert len(replot(tmp_path)) == 2 and drawn == [20.0, 10.0]
