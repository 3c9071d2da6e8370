"""The matcher: planted permutations recovered at their optimum, exact for one hidden layer."""
import itertools

import pytest
import torch

import ltray
from ltray.core.matching import Matcher


def _planted(name, **kw):
    model = ltray.build_model(name, seed=0, **kw)
    spec = ltray.spec_for(model)
    state = model.state_dict()
    perm = ltray.random_permutation(spec, seed=11)
    return spec, state, perm, ltray.apply_permutation(spec, perm, state)


@pytest.mark.parametrize("name,kw", [("mlp", dict(image_size=8, width=64)),
                                     ("mlp", dict(image_size=8, width=32, depth=3)),
                                     ("conv8", dict(in_channels=3, image_size=32, width=8)),
                                     ("conv8bn", dict(in_channels=3, image_size=32, width=8))])
def test_weight_matching_recovers_a_planted_permutation(name, kw):
    spec, state, perm, permuted = _planted(name, **kw)
    found = ltray.weight_matching(spec, permuted, state, seed=0)
    m = Matcher(spec)
    m.add_pair(permuted, state)
    assert m.objective(found) >= m.objective(perm) - 1e-9 * abs(m.objective(perm))
    assert all(torch.equal(found[g], perm[g]) for g in perm)


def test_several_pairs_with_a_planted_permutation_reach_its_optimum_and_are_seeded():
    """Pairs (pi* s_k, s_k) of noise, three coupled groups (depth 3): sum_k <pi* s_k, pi s_k> <= sum_k |s_k|^2
    (Cauchy-Schwarz), with equality only at pi = pi*. The solve from the identity must reach that bound."""
    gen = torch.Generator().manual_seed(0)
    model = ltray.build_model("mlp", image_size=8, width=24, depth=3)
    spec = ltray.spec_for(model)
    planted = ltray.random_permutation(spec, seed=5)
    m = Matcher(spec)
    bound = 0.0
    for _ in range(3):
        s = {k: torch.randn(v.shape, generator=gen) for k, v in model.state_dict().items()}
        m.add_pair(ltray.apply_permutation(spec, planted, s), s)
        bound += sum(float((v.double() ** 2).sum()) for k, v in s.items() if any(spec.axes[k]))
    found = m.solve(seed=1)
    assert all(torch.equal(found[g], planted[g]) for g in planted)
    assert m.objective(found) == pytest.approx(bound, rel=1e-6) and m.objective(found) > m.objective(
        ltray.identity_permutation(spec)) + 0.5 * bound
    again = Matcher(spec)
    again.static, again.coupled = m.static, m.coupled
    assert all(torch.equal(again.solve(seed=1)[g], found[g]) for g in found)


def test_objective_equals_direct_inner_product():
    gen = torch.Generator().manual_seed(1)
    model = ltray.build_model("mlp", image_size=8, width=12, depth=2)
    spec = ltray.spec_for(model)
    t, s = ({k: torch.randn(v.shape, generator=gen) for k, v in model.state_dict().items()} for _ in range(2))
    m = Matcher(spec)
    m.add_pair(t, s)
    perm = ltray.random_permutation(spec, 4)
    moved = ltray.apply_permutation(spec, perm, s)
    direct = sum(float((moved[k].double() * t[k].double()).sum()) for k in t if any(spec.axes[k]))
    assert m.objective(perm) == pytest.approx(direct, rel=1e-6)


def test_one_hidden_layer_is_the_exact_optimum():
    """Width 6: compare with brute force over all 720 permutations."""
    gen = torch.Generator().manual_seed(2)
    model = ltray.build_model("mlp", image_size=2, in_channels=1, width=6, num_classes=3)
    spec = ltray.spec_for(model)
    pairs = [({k: torch.randn(v.shape, generator=gen) for k, v in model.state_dict().items()},
              {k: torch.randn(v.shape, generator=gen) for k, v in model.state_dict().items()}) for _ in range(2)]
    m = Matcher(spec)
    for t, s in pairs:
        m.add_pair(t, s)
    found = m.solve()
    best = max(m.objective({"P_fc1": torch.tensor(p)}) for p in itertools.permutations(range(6)))
    assert m.objective(found) == pytest.approx(best, rel=1e-12)


def test_factored_linear_gradients_give_the_same_scores():
    """The B x B kernel route (d2.T (x2 x1.T) d1) equals the dense gradient products, depth 1 and 2."""
    from ltray.core.functional import gradient

    for depth in (1, 2):
        model = ltray.build_model("mlp", image_size=8, width=96, depth=depth, seed=0)
        other = ltray.build_model("mlp", image_size=8, width=96, depth=depth, seed=1)
        spec = ltray.spec_for(model)
        gen = torch.Generator().manual_seed(0)
        x, y = torch.randn(24, 1, 8, 8, generator=gen), torch.randint(0, 10, (24,), generator=gen)
        s1, s2 = model.state_dict(), other.state_dict()
        dense, factored = Matcher(spec), Matcher(spec)
        dense.add_pair(gradient(model, s2, x, y), gradient(model, s1, x, y))
        factored.add_pair(gradient(model, s2, x, y, chunk=8, factored=True),
                          gradient(model, s1, x, y, chunk=8, factored=True))
        for g in dense.static:
            assert torch.allclose(dense.static[g], factored.static[g], rtol=1e-4, atol=1e-9)
        perm = ltray.random_permutation(spec, 2)
        assert factored.objective(perm) == pytest.approx(dense.objective(perm), rel=1e-4)


def test_factored_gradients_of_a_transformer_equal_the_dense_ones():
    """Only the head (a Linear on (B, in)) factors: Linear layers on tokens (B, L, in) and nn.MultiheadAttention's
    out_proj, whose forward never runs (F.multi_head_attention_forward reads its weight), stay dense. Factoring
    used to fail on both (an IndexError for out_proj)."""
    from test_autospec_rules import TinyViT

    from ltray.core.functional import LinearFactors, gradient

    torch.manual_seed(0)
    model = TinyViT(width=16, heads=4, image=8)
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 10, (6,))
    dense = gradient(model, model.state_dict(), x, y)
    factored = gradient(model, model.state_dict(), x, y, chunk=3, factored=True)
    assert [k for k, g in factored.items() if isinstance(g, LinearFactors)] == ["head.weight"]
    for k, g in dense.items():
        f = factored[k].dense() if isinstance(factored[k], LinearFactors) else factored[k]
        assert torch.allclose(f, g, rtol=1e-4, atol=1e-7), k


def test_matchers_sharing_warm_state_warm_start_and_stay_exact():
    """GMT builds a new matcher per step and hands it the previous step's assignments (prices) to warm-start."""
    gen = torch.Generator().manual_seed(3)
    model = ltray.build_model("mlp", image_size=8, width=48)
    spec = ltray.spec_for(model)
    noise = lambda: {k: torch.randn(v.shape, generator=gen) for k, v in model.state_dict().items()}
    warm, pairs = {}, [(noise(), noise()) for _ in range(3)]
    first = Matcher(spec, "auction", warm=warm)
    first.add_pair(*pairs[0])
    first.solve()
    assert set(warm) == set(spec.groups) and all(not a.info["warm"] for a in warm.values())
    second = Matcher(spec, "auction", warm=warm)
    for p in pairs:
        second.add_pair(*p)
    found = second.solve()
    assert all(a.info["warm"] for a in warm.values())
    cold = Matcher(spec, "scipy")
    for p in pairs:
        cold.add_pair(*p)
    assert abs(second.objective(found) - cold.objective(cold.solve())) <= 1e-9 * abs(cold.objective(found))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_accumulated_scores_are_the_weighted_sum_of_per_tensor_products(dtype):
    """add_pair fuses every single-axis tensor of a group into one low-rank product; the accumulator must
    equal the float64 sum over pairs and tensors of weight * rows(t) rows(s).T (float32: to its rounding)."""
    gen = torch.Generator().manual_seed(5)
    model = ltray.build_model("mlp", image_size=8, width=40, depth=1)
    spec = ltray.spec_for(model)
    noise = lambda: {k: torch.randn(v.shape, generator=gen) for k, v in model.state_dict().items()}
    m = Matcher(spec, dtype=dtype)
    expected = {}
    for w in (1.0, 0.5, -2.0):
        t, s = noise(), noise()
        m.add_pair(t, s, weight=w)
        for key, axes in spec.axes.items():
            for axis, g in enumerate(axes):
                if g is not None:
                    rt = t[key].movedim(axis, 0).reshape(t[key].shape[axis], -1).double()
                    rs = s[key].movedim(axis, 0).reshape(s[key].shape[axis], -1).double()
                    expected[g] = expected.get(g, 0) + w * rt @ rs.T
    assert set(m.static) == set(expected)
    for g, e in expected.items():
        assert m.static[g].dtype == dtype
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        assert torch.allclose(m.static[g].double(), e, rtol=tol, atol=tol * float(e.abs().max()))


def test_segmented_axes_score_their_blocks_as_rows():
    """Group A's score from a segmented axis is the product of the reshaped piece's rows (an independent
    oracle), and a planted permutation is recovered through blocked and concatenated axes."""
    from ltray.core.symmetry import PermutationSpec

    gen = torch.Generator().manual_seed(6)
    axes = {"w": ("H", ((None, 2), ("A", 3), ("B", 1))), "a": ("A",), "b": ("B",), "h": ("H",),
            "v": (((None, 2), ("A", 3)),)}
    noise = lambda: {"w": torch.randn(6, 19, generator=gen), "a": torch.randn(4, generator=gen),
                     "b": torch.randn(5, generator=gen), "h": torch.randn(6, generator=gen),
                     "v": torch.randn(14, generator=gen)}
    t, s = noise(), noise()
    spec = PermutationSpec(axes).with_sizes(t)
    m = Matcher(spec)
    m.add_pair(t, s)
    rows = lambda x: x[2:14].reshape(4, 3)
    assert torch.allclose(m.static["A"], torch.outer(t["a"], s["a"]) + rows(t["v"]) @ rows(s["v"]).T, atol=1e-5)
    identity = ltray.identity_permutation(spec)
    blocks = lambda x: x[:, 2:14].reshape(6, 4, 3).transpose(0, 1).reshape(4, -1)
    assert torch.allclose(m.score_matrix("A", identity), m.static["A"] + blocks(t["w"]) @ blocks(s["w"]).T,
                          atol=1e-5)
    perm = ltray.random_permutation(spec, seed=3)
    found = ltray.weight_matching(spec, ltray.apply_permutation(spec, perm, s), s)
    assert all(torch.equal(found[g], perm[g]) for g in perm)
