"""Transfer invariants (Algorithms 1 and 2) on the bundled digits data."""
from dataclasses import replace

import numpy as np
import pytest
import torch

import ltray
from ltray.core.first_layer import FirstLayerCache
from ltray.models import state_of
from ltray.config import DataConfig, ModelConfig
from ltray.runs import train_source, transfer_pair
from ltray.core.functional import gradient, reset_bn_stats
from ltray.config import TransferConfig
from ltray.core.transfer import transfer


@pytest.fixture(scope="module")
def digits():
    return ltray.load_dataset("digits")


@pytest.fixture(scope="module")
def source(digits):
    return train_source(digits, DataConfig("digits"), ModelConfig("mlp", 64), ltray.TrainConfig(epochs=4, lr=0.1),
                        seed=0, progress=False)


def _model(digits, seed, width=64):
    return ModelConfig("mlp", width).build(digits, seed)


def test_training_is_reproducible_and_learns(digits, source):
    again = train_source(digits, DataConfig("digits"), ModelConfig("mlp", 64), ltray.TrainConfig(epochs=4, lr=0.1),
                         seed=0, progress=False)
    assert np.array_equal(again.checkpoints, source.checkpoints)
    assert len(source) == 5 and source.meta["train_seconds"] > 0
    _, acc = ltray.evaluate(_model(digits, 0), source.state(-1), digits.val)
    assert acc > 85


def test_gmt_and_fgmt_agree_at_the_first_step(digits, source):
    model = _model(digits, 7)
    spec = ltray.spec_for(model)
    cfg = TransferConfig(T=3, schedule="uniform", batch_size=64)
    seq = source.linear(3, "uniform")
    runs = {m: transfer(m, model, spec, seq, state_of(model), digits, cfg, seed=5) for m in ("gmt", "fgmt")}
    assert all(torch.equal(runs["gmt"].perms[0][g], runs["fgmt"].perms[0][g]) for g in spec.groups)
    assert runs["gmt"].val_acc[1] == runs["fgmt"].val_acc[1]


def test_naive_final_is_theta2_plus_source_delta_exactly(digits, source):
    model = _model(digits, 7)
    theta2 = state_of(model)
    result = transfer("naive", model, ltray.spec_for(model), source.linear(4, "cosine"), theta2, digits,
                      TransferConfig(T=4))
    first, last = source.state(0), source.state(-1)
    for k in theta2:
        assert torch.equal(result.final[k], theta2[k] + (last[k] - first[k]))


@pytest.mark.parametrize("method", ["gmt", "fgmt"])
def test_gmt_and_fgmt_follow_a_planted_permutation_at_every_step(digits, source, method):
    """theta2^0 = pi* theta1^0: every transferred step must be pi* theta1^t (T > 1, so GMT's recomputed
    gradients under pi_{s-1} are exercised too)."""
    model = _model(digits, 0)
    spec = ltray.spec_for(model)
    planted = ltray.random_permutation(spec, seed=9)
    theta2 = ltray.apply_permutation(spec, planted, source.state(0))
    seq = source.linear(3, "uniform")
    result = transfer(method, model, spec, seq, theta2, digits, TransferConfig(T=3, schedule="uniform"), seed=1)
    assert len(result.perms) == 3
    for perm in result.perms:
        assert torch.equal(perm["P_fc1"], planted["P_fc1"])
    expected = ltray.apply_permutation(spec, planted, seq[3])
    assert all(torch.allclose(result.final[k], expected[k], atol=1e-6) for k in expected)
    assert result.val_acc[3] == pytest.approx(ltray.evaluate(model, seq[3], digits.val)[1])


def test_gmt_recomputes_every_gradient_and_fgmt_caches_them(digits, source):
    """Algorithm 1 computes s gradient pairs at step s (T(T+1)/2 in all), Algorithm 2 one per step (T)."""
    model = _model(digits, 1000)
    cfg = TransferConfig(T=4, batch_size=32)
    counts = {m: transfer(m, model, ltray.spec_for(model), source.linear(4), state_of(model), digits, cfg,
                          seed=2).gradient_pairs for m in ("gmt", "fgmt", "naive")}
    assert counts == {"gmt": 4 * 5 // 2, "fgmt": 4, "naive": 0}


def test_oracle_recovers_the_permutation_of_a_permuted_trajectory(digits, source):
    model = _model(digits, 0)
    spec = ltray.spec_for(model)
    planted = ltray.random_permutation(spec, seed=3)
    theta2 = ltray.apply_permutation(spec, planted, source.state(0))
    target = ltray.apply_permutation(spec, planted, source.state(-1))
    result = transfer("oracle", model, spec, source.linear(2), theta2, digits, TransferConfig(T=2), target_final=target)
    assert torch.equal(result.perms[-1]["P_fc1"], planted["P_fc1"])


def test_transfer_pair_rows_and_seeds(digits, source):
    cfg = TransferConfig(T=2, batch_size=32)
    out = transfer_pair(digits, ModelConfig("mlp", 64), ltray.TrainConfig(epochs=4, lr=0.1), cfg,
                        ("naive", "oracle", "fgmt"), source, seed_target=1000, seed=3)
    again = transfer_pair(digits, ModelConfig("mlp", 64), ltray.TrainConfig(epochs=4, lr=0.1), cfg,
                          ("fgmt",), source, seed_target=1000, seed=3)
    assert out.results["fgmt"].val_acc == again.results["fgmt"].val_acc
    rows = out.results["oracle"].rows()
    assert [r["t"] for r in rows] == [0, 1, 2] and rows[-1]["lambda"] == 1.0
    assert rows[1]["seconds"] >= out.target_train_seconds > 0
    for result in out.results.values():            # the best step: the first t >= 1 of the highest accuracy
        acc = result.val_acc
        assert result.best_step == 1 + max(range(len(acc) - 1), key=lambda i: (acc[i + 1], -i))


def test_the_best_step_is_the_best_accuracy_after_t_0_and_its_state_is_returned(digits, source):
    """A source path that learns, then is wrecked at its last step: the best state is theta2^1 (not the final
    theta2^2, nor theta2^0 even when theta2^0 scores higher than every transferred step)."""
    model = _model(digits, 0)
    start, learnt = source.state(0), source.state(-1)
    wrecked = {k: v + 50 * torch.randn(v.shape, generator=torch.Generator().manual_seed(1)) for k, v in learnt.items()}
    result = transfer("naive", model, ltray.spec_for(model), [start, learnt, wrecked], start, digits,
                      TransferConfig(T=2))
    assert result.val_acc[1] > 85 > 30 > result.val_acc[2]
    assert result.best_step == 1 and all(torch.allclose(result.best[k], learnt[k], atol=1e-6) for k in learnt)
    assert all(torch.allclose(result.final[k], wrecked[k], atol=1e-5) for k in learnt)
    # theta2^0 is not a candidate: the learnt source as the start, every step after it worse
    worse = transfer("naive", model, ltray.spec_for(model), [start, wrecked, wrecked], learnt, digits,
                     TransferConfig(T=2))
    assert worse.val_acc[0] > 85 > worse.val_acc[1] == worse.val_acc[2] and worse.best_step == 1


def test_gradient_in_chunks_equals_one_batch(digits):
    model = _model(digits, 0)
    x, y = digits.train.x[:64], digits.train.y[:64]
    whole, chunked = gradient(model, state_of(model), x, y), gradient(model, state_of(model), x, y, chunk=16)
    assert all(torch.allclose(whole[k], chunked[k], atol=1e-6) for k in whole)
    assert set(whole) == {k for k, _ in model.named_parameters()}


def test_bn_reset_statistics_in_one_batch_and_in_several():
    from ltray.data import Split

    model = ltray.build_model("resnet18", in_channels=1, image_size=8)
    gen = torch.Generator().manual_seed(0)
    split = Split(torch.randn(40, 1, 8, 8, generator=gen) * 3 + 1, torch.zeros(40, dtype=torch.long))
    state = reset_bn_stats(model, state_of(model), split, 40, batch_size=40, generator=gen)
    inputs = torch.nn.functional.conv2d(split.x, state["conv1.weight"], padding=1)   # bn1's inputs
    per_channel = inputs.transpose(0, 1).reshape(inputs.shape[1], -1)
    assert torch.allclose(state["bn1.running_mean"], per_channel.mean(1), atol=1e-5)       # one batch: exact
    assert torch.allclose(state["bn1.running_var"], per_channel.var(1, unbiased=True), rtol=1e-4)
    # four batches of 10 (in the order the loader draws them): the average of the per-batch statistics
    order = torch.randperm(40, generator=torch.Generator().manual_seed(7))
    chunked = reset_bn_stats(model, state_of(model), split, 40, batch_size=10,
                             generator=torch.Generator().manual_seed(7))
    batches = [inputs[order[i:i + 10]].transpose(0, 1).reshape(inputs.shape[1], -1) for i in range(0, 40, 10)]
    assert torch.allclose(chunked["bn1.running_mean"], per_channel.mean(1), atol=1e-5)    # equal sizes: exact
    assert torch.allclose(chunked["bn1.running_var"], torch.stack([b.var(1) for b in batches]).mean(0), rtol=1e-4)
    assert not torch.allclose(chunked["bn1.running_var"], per_channel.var(1), rtol=1e-3)   # not the pooled one


def test_bn_model_transfer_resets_statistics_to_those_of_its_samples(digits):
    """A BatchNorm model through FGMT end to end (ResNet-18 on the 8x8 digits): every BatchNorm's running statistics
    in the result are the per-channel mean and unbiased variance of that layer's inputs over the B' = 32 training
    samples the reset draws (one batch: exact), computed here from the layers' inputs in a train-mode forward."""
    from torch.func import functional_call

    small = ltray.load_dataset("digits", max_train=64)
    model = ltray.build_model("resnet18", num_classes=10, in_channels=1, image_size=8, seed=0)
    traj = ltray.train(model, state_of(model), small.train, ltray.TrainConfig(epochs=1, batch_size=32, lr=0.05),
                       seed=0, progress=False)
    target = ltray.build_model("resnet18", num_classes=10, in_channels=1, image_size=8, seed=1)
    cfg = TransferConfig(T=1, batch_size=32, loader_batch_size=16, bn_samples=32)
    result = transfer("fgmt", model, ltray.spec_for(model), traj.linear(1), state_of(target), small, cfg, seed=0)
    assert len(result.val_acc) == 2 and result.best_step == 1
    # the samples: the first B' of the training split in the order a generator seeded with seed + 1 draws
    x = small.train.x[torch.randperm(len(small.train), generator=torch.Generator().manual_seed(1))[:32]]
    bns = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    inputs = {}
    hooks = [m.register_forward_pre_hook(lambda m, a, n=n: inputs.__setitem__(n, a[0].detach()))
             for n, m in bns.items()]
    was_training = model.training
    try:
        model.train()                                  # each BatchNorm normalises with its batch's statistics
        with torch.no_grad():
            functional_call(model, {k: v.clone() for k, v in result.final.items()}, (x,))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    assert len(bns) == 20 and set(inputs) == set(bns)
    for name, x_in in inputs.items():
        per_channel = x_in.transpose(0, 1).reshape(x_in.shape[1], -1).double()
        for state in (result.final, result.best):
            assert torch.allclose(state[f"{name}.running_mean"].double(), per_channel.mean(1), rtol=1e-4, atol=1e-5)
            assert torch.allclose(state[f"{name}.running_var"].double(), per_channel.var(1), rtol=1e-4, atol=1e-6)
            assert int(state[f"{name}.num_batches_tracked"]) == 1
        # and not what the target carried in from its initialisation (zeros and ones)
        assert not torch.allclose(result.final[f"{name}.running_var"], state_of(target)[f"{name}.running_var"])


def test_cached_first_layer_evaluation_matches_a_full_forward_pass(digits, source):
    """MLP + linear trajectory evaluates through FirstLayerCache; the numbers must equal evaluate()."""
    model = _model(digits, 7)
    spec = ltray.spec_for(model)
    seq = source.linear(3, "cosine")
    result = transfer("fgmt", model, spec, seq, state_of(model), digits, TransferConfig(T=3), seed=2)
    theta2 = state_of(model)
    loss0, acc0 = ltray.evaluate(model, theta2, digits.val)
    assert result.val_acc[0] == pytest.approx(acc0) and result.val_loss[0] == pytest.approx(loss0, rel=1e-4)
    for t, perm in enumerate(result.perms, start=1):
        state = {k: theta2[k] + v for k, v in ltray.apply_permutation(
            spec, perm, {k: seq[t][k] - seq[0][k] for k in theta2}).items()}
        loss, acc = ltray.evaluate(model, state, digits.val)
        assert result.val_acc[t] == pytest.approx(acc) and result.val_loss[t] == pytest.approx(loss, rel=1e-4)
        # the cache's row chunks (512 by default, more than digits' validation split) must not matter
        delta = {k: seq[len(seq) - 1][k] - seq[0][k] for k in theta2}
        small = FirstLayerCache(model, spec, theta2, delta, digits.val, chunk=37)
        loss_c, acc_c = small.evaluate(state, perm, float(seq.lambdas[t]))
        assert acc_c == pytest.approx(acc) and loss_c == pytest.approx(loss, rel=1e-4)


def test_learning_rate_warmup_then_cosine():
    from ltray.training import _lr_at

    cfg = ltray.TrainConfig(epochs=10, lr=0.1, cosine=True, warmup_epochs=2)
    assert _lr_at(cfg, 1.0) == pytest.approx(0.05)                    # linear warm-up
    assert _lr_at(cfg, 2.0) == pytest.approx(0.1)                     # peak after warm-up
    assert _lr_at(cfg, 6.0) == pytest.approx(0.05)                    # cosine half-way
    assert _lr_at(cfg, 10.0) == pytest.approx(0.0, abs=1e-12)
    assert _lr_at(ltray.TrainConfig(lr=0.01), 7.3) == 0.01            # constant (the paper's MNIST)


def test_snapshot_schedule_restarts_a_cosine_in_every_cycle():
    from ltray.training import _lr_at

    cfg = ltray.TrainConfig(epochs=12, lr=0.1, cycles=4)              # 4 cycles of 3 epochs (Huang et al. 2017)
    for start in (0.0, 3.0, 6.0, 9.0):
        assert _lr_at(cfg, start) == pytest.approx(0.1)               # restart at the full lr
        assert _lr_at(cfg, start + 1.5) == pytest.approx(0.05)        # half-way down its cosine
        assert _lr_at(cfg, start + 3.0 - 1e-9) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ltray.LtrayError, match="epochs divisible by cycles"):
        ltray.TrainConfig(epochs=10, cycles=4)


def test_finetune_epochs_yields_each_epoch_and_a_longer_run_extends_a_shorter_one(digits):
    from ltray.config import FinetuneConfig
    from ltray.training import finetune_epochs

    model = _model(digits, 4)
    for optimizer in ("adam", "sgd"):
        cfg = FinetuneConfig(epochs=3, lr=1e-2, optimizer=optimizer)
        three = list(finetune_epochs(model, state_of(model), digits.train, cfg, seed=5))
        two = list(finetune_epochs(model, state_of(model), digits.train, replace(cfg, epochs=2), seed=5))
        assert [e for e, _, _ in three] == [1, 2, 3] and all(0 < s for _, _, s in three)
        assert three[2][2] > three[1][2] > three[0][2]                # cumulative training seconds
        for (_, a, _), (_, b, _) in zip(two, three):                  # constant lr, one data order: same states
            assert all(torch.equal(a[k], b[k]) for k in a)


def test_finetune_improves_and_reports_every_epoch(digits):
    model = _model(digits, 4)
    state, history = ltray.finetune(model, state_of(model), digits.train, digits.val, epochs=2, lr=1e-3, seed=0)
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert history[-1]["val_acc"] > history[0]["val_acc"] + 30
