"""The matcher: planted permutations recovered, never worse than identity, exact for one hidden layer."""
import itertools

import pytest
import torch

import ltray
from ltray.matching import Matcher


def _planted(name, **kw):
    model = ltray.build_model(name, seed=0, **kw)
    spec = ltray.spec_for(model)
    state = model.state_dict()
    perm = ltray.random_permutation(spec, seed=11)
    return spec, state, perm, ltray.apply_permutation(spec, perm, state)


@pytest.mark.parametrize("name,kw", [("mlp", dict(image_size=8, width=64)),
                                     ("mlp", dict(image_size=8, width=32, depth=3)),
                                     ("conv8", dict(in_channels=3, image_size=32, width=8))])
def test_weight_matching_recovers_a_planted_permutation(name, kw):
    spec, state, perm, permuted = _planted(name, **kw)
    found = ltray.weight_matching(spec, permuted, state, seed=0)
    assert all(torch.equal(found[g], perm[g]) for g in perm)


def test_objective_never_below_identity_and_seeded():
    gen = torch.Generator().manual_seed(0)
    model = ltray.build_model("mlp", image_size=8, width=24, depth=3)
    spec = ltray.spec_for(model)
    noise = lambda: {k: torch.randn(v.shape, generator=gen) for k, v in model.state_dict().items()}
    m = Matcher(spec)
    for _ in range(3):
        m.add_pair(noise(), noise())
    identity = ltray.identity_permutation(spec)
    found = m.solve(seed=1)
    assert m.objective(found) >= m.objective(identity)
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
