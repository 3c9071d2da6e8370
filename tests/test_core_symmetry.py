"""Permutation symmetry: pi theta computes the same function, apply-then-invert is exact, specs cover all."""
import pytest
import torch
from torch.func import functional_call

import ltray
from ltray.errors import LtrayError
from ltray.core.symmetry import PermutationSpec, check_spec

CASES = [
    ("mlp", dict(num_classes=10, in_channels=1, image_size=8, width=32)),
    ("mlp", dict(num_classes=3, in_channels=1, image_size=8, width=16, depth=3)),
    ("conv8", dict(num_classes=10, in_channels=3, image_size=32, width=8)),
    ("conv8bn", dict(num_classes=10, in_channels=1, image_size=8, width=4)),
    ("resnet18", dict(num_classes=10, in_channels=3, image_size=32)),
]


def _randomised_state(model):
    """Non-trivial BN statistics and affine parameters, so a mis-permuted buffer would change outputs."""
    gen = torch.Generator().manual_seed(5)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for k, v in state.items():
        if k.endswith(("running_var", "bn1.weight", "bn2.weight")) or (k.startswith("norms.") and k.endswith("weight")):
            state[k] = torch.rand(v.shape, generator=gen) + 0.5
        elif k.endswith(("running_mean", ".bias")) and v.is_floating_point():
            state[k] = torch.randn(v.shape, generator=gen) * 0.1
    return state


@pytest.mark.parametrize("name,kw", CASES, ids=lambda c: str(c))
def test_permuted_parameters_compute_the_same_function(name, kw):
    model = ltray.build_model(name, seed=0, **kw).eval()
    spec = ltray.spec_for(model)
    state = _randomised_state(model)
    x = torch.randn(5, kw["in_channels"], kw["image_size"], kw["image_size"])
    expected = functional_call(model, state, (x,))
    for seed in (1, 2):
        perm = ltray.random_permutation(spec, seed=seed)
        assert any(not torch.equal(p, torch.arange(len(p))) for p in perm.values())
        permuted = ltray.apply_permutation(spec, perm, state)
        assert torch.allclose(functional_call(model, permuted, (x,)), expected, atol=1e-5, rtol=1e-4)
        back = ltray.apply_permutation(spec, ltray.invert_permutation(perm), permuted)
        assert all(torch.equal(back[k], state[k]) for k in state)


@pytest.mark.parametrize("name,kw", CASES, ids=lambda c: str(c))
def test_spec_covers_every_tensor_including_bn_buffers(name, kw):
    model = ltray.build_model(name, seed=0, **kw)
    spec = ltray.spec_for(model)
    assert set(spec.axes) == set(model.state_dict())
    for key, value in model.state_dict().items():
        assert len(spec.axes[key]) == value.ndim
        if key.endswith(("running_mean", "running_var")):
            assert spec.axes[key][0] is not None


def test_resnet_residual_stream_shares_one_group():
    spec = ltray.spec_for(ltray.build_model("resnet18", in_channels=3, image_size=32))
    assert spec.axes["layer1.0.conv2.weight"][0] == spec.axes["layer1.1.conv2.weight"][0] == spec.axes["bn1.weight"][0]
    assert spec.axes["layer2.0.downsample.0.weight"][:2] == ("P_res2", "P_res1")


def test_compose_and_identity():
    model = ltray.build_model("mlp", in_channels=1, image_size=8, width=16, depth=2)
    spec = ltray.spec_for(model)
    state = model.state_dict()
    p, q = ltray.random_permutation(spec, 1), ltray.random_permutation(spec, 2)
    both = ltray.apply_permutation(spec, p, ltray.apply_permutation(spec, q, state))
    composed = ltray.apply_permutation(spec, ltray.compose_permutations(p, q), state)
    assert all(torch.equal(both[k], composed[k]) for k in state)
    same = ltray.apply_permutation(spec, ltray.identity_permutation(spec), state)
    assert all(torch.equal(same[k], state[k]) for k in state)
    assert ltray.random_permutation(spec, 3)["P_fc1"].tolist() == ltray.random_permutation(spec, 3)["P_fc1"].tolist()


def test_uncovered_tensor_and_shape_mismatch_are_clear_errors():
    model = ltray.build_model("mlp", in_channels=1, image_size=8, width=16)
    spec = ltray.spec_for(model)
    state = dict(model.state_dict(), extra=torch.zeros(3))
    with pytest.raises(LtrayError, match="does not cover tensor.*extra"):
        check_spec(spec, state)
    with pytest.raises(LtrayError, match="does not cover"):
        ltray.apply_permutation(spec, ltray.identity_permutation(spec), state)
    wrong = {"P_fc1": torch.arange(8)}
    with pytest.raises(LtrayError, match="size 8 but axis 0"):
        ltray.apply_permutation(spec, wrong, model.state_dict())
    bad = PermutationSpec({"fc1.weight": ("P", None), "fc1.bias": ("P",), "fc2.weight": (None, "P"),
                           "fc2.bias": ("P",)})
    with pytest.raises(LtrayError, match="different sizes"):
        check_spec(bad, model.state_dict())


def test_build_model_is_seeded_and_validates():
    a = ltray.build_model("mlp", seed=3, image_size=8, width=8).state_dict()
    b = ltray.build_model("mlp", seed=3, image_size=8, width=8).state_dict()
    c = ltray.build_model("mlp", seed=4, image_size=8, width=8).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["fc1.weight"], c["fc1.weight"])
    with pytest.raises(LtrayError, match="unknown model"):
        ltray.build_model("vgg")


def test_segmented_axes_move_blocks_and_pieces():
    """An axis laid out as 2 fixed entries, 4 blocks of 3 moved by A, then 5 entries moved by B (a flatten
    and a concatenation): the same as permuting the reshaped pieces."""
    axes = {"w": (None, ((None, 2), ("A", 3), ("B", 1))), "a": ("A",), "b": ("B",)}
    state = {"w": torch.randn(6, 19), "a": torch.randn(4), "b": torch.randn(5)}
    spec = PermutationSpec(axes).with_sizes(state)
    assert spec.sizes == {"A": 4, "B": 5} and set(spec.groups["A"]) == {("w", 1), ("a", 0)}
    perm = ltray.random_permutation(spec, seed=0)
    w = state["w"]
    expected = torch.cat([w[:, :2], w[:, 2:14].reshape(6, 4, 3)[:, perm["A"]].reshape(6, 12),
                          w[:, 14:][:, perm["B"]]], dim=1)
    moved = ltray.apply_permutation(spec, perm, state)
    assert torch.equal(moved["w"], expected)
    back = ltray.apply_permutation(spec, ltray.invert_permutation(perm), moved)
    assert all(torch.equal(back[k], state[k]) for k in state)
    with pytest.raises(LtrayError, match="has 20 entries but its segments cover 19"):
        check_spec(spec, dict(state, w=torch.randn(6, 20)))
    lone = PermutationSpec({"v": (((None, 1), ("C", 2)),)}).with_sizes({"v": torch.randn(9)})
    assert lone.sizes == {"C": 4}
