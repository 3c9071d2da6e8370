"""ltray.core.autospec: specs derived from one recorded forward pass keep f(x; pi theta) == f(x; theta), equal the
hand-written specs of ltray's models, and let weight matching recover a planted permutation."""
import warnings
from functools import cache

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import ltray
from ltray.core.autospec import FrozenAxesWarning, derive_spec, verify_spec
from ltray.core.matching import Matcher
from ltray.errors import LtrayError
from ltray.models import resolve_model
from ltray.core.specs import mlp_spec, resnet18_spec
from ltray.core.symmetry import PermutationSpec


class ResidualMLP(nn.Module):
    """Pre-norm residual blocks x + W2 gelu(W1 LayerNorm(x)): the stream, its LayerNorms and the head's input
    are one group; each block's hidden layer is another."""

    def __init__(self, d_in=48, width=32, hidden=64, blocks=2, num_classes=10):
        super().__init__()
        self.embed = nn.Linear(d_in, width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(width), nn.Linear(width, hidden), nn.GELU(),
                                                  nn.Linear(hidden, width)) for _ in range(blocks))
        self.norm, self.head = nn.LayerNorm(width), nn.Linear(width, num_classes)

    def forward(self, x):
        x = self.embed(x.flatten(1))
        for block in self.blocks:
            x = x + block(x)
        return self.head(self.norm(x))


class ConcatCNN(nn.Module):
    """Concatenates the raw input and two branches along channels, normalises the concatenation (DenseNet
    style), mixes it, pools to 4 x 4 and flattens the map into an MLP head."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.a, self.b = nn.Conv2d(8, 6, 3, padding=1), nn.Conv2d(8, 4, 1)
        self.bn_cat, self.mix = nn.BatchNorm2d(3 + 6 + 4), nn.Conv2d(3 + 6 + 4, 12, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(12 * 4 * 4, 32), nn.Linear(32, num_classes)

    def forward(self, x):
        h = F.relu(self.bn(self.stem(x)))
        h = torch.cat([x, F.relu(self.a(h)), F.relu(self.b(h))], dim=1)
        h = F.adaptive_avg_pool2d(F.relu(self.mix(self.bn_cat(h))), 4)
        return self.fc2(F.relu(self.fc1(h.flatten(1))))


class CumsumMLP(nn.Module):
    """A cumulative sum over fc1's units: no rule covers it, and its result depends on the units' order."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 4)

    def forward(self, x):
        return self.fc3(F.relu(self.fc2(torch.cumsum(F.relu(self.fc1(x)), dim=1))))


def _vgg11_bn(hidden=None):
    model = resolve_model("torchvision:vgg11_bn", in_channels=3, image_size=32)
    if hidden:   # torchvision's 4096-wide classifier makes one matcher step cost ~1 TFLOP; keep its structure
        model.classifier[0], model.classifier[3] = nn.Linear(512 * 7 * 7, hidden), nn.Linear(hidden, hidden)
        model.classifier[6] = nn.Linear(hidden, 10)
    return model


def _mlp3():
    return nn.Sequential(nn.Flatten(), nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 32), nn.SiLU(),
                         nn.Linear(32, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 10))


# name: (model factory, input shape, number of permutation groups the architecture has)
CASES = {
    "vgg11_bn": (_vgg11_bn, (1, 3, 32, 32), 8 + 2),          # 8 convs, 2 hidden classifier layers
    "resnet34": (lambda: resolve_model("torchvision:resnet34", in_channels=3, image_size=32), (1, 3, 32, 32),
                 4 + 16),                                     # 4 residual streams, 16 blocks' inner layers
    "mlp3": (_mlp3, (2, 3, 4, 4), 3),
    "residual_mlp": (ResidualMLP, (2, 3, 4, 4), 1 + 2),
    "concat_cnn": (ConcatCNN, (2, 3, 8, 8), 5),               # stem, a, b, mix, fc1
}


@cache
def _derived(name: str):
    """(model, input, spec) with the spec from spec_for, which derives and verifies; no axis may be frozen."""
    factory, shape, _ = CASES[name]
    torch.manual_seed(0)
    model, x = factory(), torch.randn(shape)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FrozenAxesWarning)
        return model, x, ltray.spec_for(model, x)


def _randomised_state(model):
    """Non-trivial BatchNorm statistics and affine parameters, so that a mis-permuted one changes outputs."""
    gen = torch.Generator().manual_seed(5)
    state = dict(model.state_dict())
    for k, v in state.items():
        if k.endswith("running_var"):
            state[k] = torch.rand(v.shape, generator=gen) + 0.5
        elif k.endswith(("running_mean", "bias")) or (v.ndim == 1 and k.endswith("weight")):
            state[k] = v + torch.randn(v.shape, generator=gen) * 0.1
    return state


def _partition(spec: PermutationSpec) -> set[frozenset]:
    """Which (key, axis) pairs move together: the spec up to a renaming of its groups."""
    return {frozenset(members) for members in spec.groups.values()}


@pytest.mark.parametrize("name", CASES)
def test_derived_spec_keeps_the_function(name):
    model, x, spec = _derived(name)
    assert set(spec.axes) == set(model.state_dict()) and len(spec.groups) == CASES[name][2]
    state = _randomised_state(model)
    perm = ltray.random_permutation(spec, seed=1)
    assert all(not torch.equal(p, torch.arange(len(p))) for p in perm.values())
    permuted = ltray.apply_permutation(spec, perm, state)
    model.eval()
    with torch.no_grad():
        expected = functional_call(model, state, (x,))
        got = functional_call(model, permuted, (x,))
        (key, _), *_ = spec.groups[sorted(spec.groups)[0]]   # undo the permutation of one tensor: must show
        broken = functional_call(model, permuted | {key: state[key]}, (x,))
    scale = float(expected.abs().max())
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5 * scale)
    assert not torch.allclose(broken, expected, rtol=1e-2, atol=1e-2 * scale)


@pytest.mark.parametrize("name", CASES)
def test_weight_matching_recovers_a_planted_permutation(name):
    if name == "vgg11_bn":   # the same derivation on a 64-wide classifier (see _vgg11_bn)
        torch.manual_seed(0)
        model = _vgg11_bn(hidden=64)
        spec = derive_spec(model, torch.randn(CASES[name][1]))
    else:
        model, _, spec = _derived(name)
    assert_matching_recovers_a_planted_permutation(spec, _randomised_state(model))


def assert_matching_recovers_a_planted_permutation(spec: PermutationSpec, state: dict, seed: int = 11) -> None:
    """Weight matching of pi(state) to state finds pi, at an objective no lower than pi's."""
    perm = ltray.random_permutation(spec, seed=seed)
    m = Matcher(spec)
    m.add_pair(ltray.apply_permutation(spec, perm, state), state)
    found = m.solve()
    assert m.objective(found) >= m.objective(perm) - 1e-9 * abs(m.objective(perm))
    assert all(torch.equal(found[g], perm[g]) for g in perm)


@pytest.mark.parametrize("blocks,weak", [(2, False), (2, True), (8, False)])
def test_a_planted_permutation_is_recovered_through_a_residual_stream_of_many_blocks(blocks, weak):
    """Pre-norm blocks, stream 48, hidden 96. The stream is scored mostly through every block's two weights, which
    also carry the blocks' hidden groups: descent from the identity alone stalled at ~63 % of the planted objective
    with 8 blocks (one of two seeds), and always with 2 blocks when the stream's own tensors (embedding, output
    biases, head) are weak. Both seeds must reach the planted permutation and its objective."""
    torch.manual_seed(0)
    model = ResidualMLP(width=48, hidden=96, blocks=blocks)
    spec, state = ltray.spec_for(model), dict(model.state_dict())
    if weak:
        for k in ["embed.weight", "embed.bias", "head.weight"] + [f"blocks.{i}.3.bias" for i in range(blocks)]:
            state[k] = state[k] * 0.01
    perm = ltray.random_permutation(spec, seed=1)
    m = Matcher(spec)
    m.add_pair(ltray.apply_permutation(spec, perm, state), state)
    for seed in (0, 1):
        found = m.solve(seed=seed)
        assert m.objective(found) >= m.objective(perm) - 1e-9 * abs(m.objective(perm))
        assert all(torch.equal(found[g], perm[g]) for g in perm)


@pytest.mark.parametrize("name,kw", [("mlp", dict(image_size=8, width=16)),
                                     ("mlp", dict(image_size=8, width=16, depth=3)),
                                     ("conv8", dict(in_channels=3, image_size=32, width=4)),
                                     ("conv8bn", dict(in_channels=3, image_size=32, width=4)),
                                     ("resnet18", dict(in_channels=3, image_size=32))], ids=str)
def test_derived_specs_equal_the_hand_written_ones(name, kw):
    model = ltray.build_model(name, **kw)
    hand = ltray.spec_for(model)
    derived = derive_spec(model)
    assert _partition(derived) == _partition(hand)
    assert set(derived.axes) == set(hand.axes)


def test_concatenation_and_flatten_give_segmented_axes():
    _, _, spec = _derived("concat_cnn")
    a, b, mix = spec.axes["a.weight"][0], spec.axes["b.weight"][0], spec.axes["mix.weight"][0]
    assert (a, b, mix) == ("P_a", "P_b", "P_mix")
    cat = ((None, 3), (a, 1), (b, 1))   # the raw input's 3 channels stay, then the two branches
    assert spec.axes["mix.weight"][1] == cat
    assert spec.axes["bn_cat.weight"] == spec.axes["bn_cat.running_var"] == (cat,)
    assert spec.axes["fc1.weight"] == ("P_fc1", ((mix, 16),))   # 12 channels of 4 x 4 maps
    _, _, vgg = _derived("vgg11_bn")
    assert vgg.axes["classifier.0.weight"] == ("P_classifier.0", ((vgg.axes["features.25.weight"][0], 49),))
    assert vgg.axes["classifier.6.weight"] == (None, "P_classifier.3")   # logits never move


def test_residual_streams_share_one_group_named_after_their_first_layer():
    _, _, spec = _derived("resnet34")
    stream = {k for k, a in spec.groups["P_conv1"]}
    assert {"conv1.weight", "bn1.running_mean", "layer1.2.bn2.weight", "layer2.0.conv1.weight",
            "layer2.0.downsample.0.weight"} <= stream
    assert spec.axes["layer2.0.downsample.0.weight"][:2] == (spec.axes["layer2.2.conv2.weight"][0], "P_conv1")
    _, _, mlp = _derived("residual_mlp")
    assert mlp.axes["blocks.1.0.weight"] == mlp.axes["norm.bias"] == ("P_embed",)
    assert mlp.axes["blocks.0.3.weight"] == ("P_embed", "P_blocks.0.1") and mlp.axes["head.weight"][1] == "P_embed"


def test_an_op_without_a_rule_freezes_what_it_touches_and_says_so():
    torch.manual_seed(0)
    model = CumsumMLP()
    with pytest.warns(FrozenAxesWarning, match=r"'cumsum' in 'CumsumMLP' has no permutation rule; froze P_fc1"):
        spec = ltray.spec_for(model, torch.randn(4, 8))
    assert spec.axes["fc1.weight"] == (None, None) and spec.axes["fc1.bias"] == (None,)
    assert spec.axes["fc2.weight"] == ("P_fc2", None) and spec.axes["fc3.weight"] == (None, "P_fc2")
    # Reading cumsum as elementwise would permute fc1's units too: verification rejects that spec.
    with pytest.raises(LtrayError, match=r"breaks invariance at tensor 'fc1.weight' \(axis 0, group 'P_fc1'\)"):
        verify_spec(model, mlp_spec(2).with_sizes(model.state_dict()), torch.randn(4, 8))


def test_verification_names_the_first_tensor_of_the_broken_group():
    """A spec that forgets one BatchNorm buffer: fresh running_var is all ones, so only the jitter shows it."""
    model, x = ltray.build_model("resnet18", in_channels=3, image_size=32), torch.randn(1, 3, 8, 8)
    axes = dict(resnet18_spec().axes, **{"layer2.0.bn1.running_var": (None,)})
    verify_spec(model, resnet18_spec(), x)
    with pytest.raises(LtrayError, match=r"at tensor 'layer2.0.conv1.weight' \(axis 0, group 'P_l2_0'\)"):
        verify_spec(model, PermutationSpec(axes), x)


def test_resolve_model_builds_seeded_torchvision_and_factory_models():
    a = resolve_model("torchvision:resnet18", num_classes=7, in_channels=3, seed=3)
    b = resolve_model("torchvision.models:resnet18", num_classes=7, in_channels=3, seed=3)
    c = resolve_model("torchvision:resnet18", num_classes=7, in_channels=3, seed=4)
    assert a.fc.out_features == 7 and all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert not torch.equal(a.conv1.weight, c.conv1.weight)
    assert isinstance(resolve_model("mlp", image_size=8, width=4), ltray.models.MLP)
    for name, message in [("torchvision:nope", "unknown torchvision model 'nope'"),
                          ("no_such_package.mod:f", "cannot import 'no_such_package.mod'"),
                          ("torch.nn:Nope", "module 'torch.nn' has no 'Nope'"),
                          ("vgg", "unknown model 'vgg'.*torchvision:NAME")]:
        with pytest.raises(LtrayError, match=message):
            resolve_model(name, in_channels=3)
    gray = resolve_model("torchvision:resnet18", num_classes=7, in_channels=1, seed=3)   # e.g. MNIST
    assert gray.conv1.in_channels == 1 and set(gray.state_dict()) == set(a.state_dict())
    assert gray(torch.randn(2, 1, 28, 28)).shape == (2, 7)


class BranchingMLP(nn.Module):
    """Python control flow on a tensor's value: torch.fx cannot trace it, one recorded forward follows it."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        if h.mean() > 0:   # a mean over the units does not see their order
            h = h * 2
        return self.fc2(h)


def test_control_flow_on_tensor_values_is_followed():
    with pytest.raises(torch.fx.proxy.TraceError):
        torch.fx.symbolic_trace(BranchingMLP())
    with warnings.catch_warnings():
        warnings.simplefilter("error", FrozenAxesWarning)
        spec = ltray.spec_for(BranchingMLP(), torch.randn(4, 8))
    assert spec.axes["fc1.weight"] == ("P_fc1", None) and spec.axes["fc2.weight"] == (None, "P_fc1")


class TokenMLP(nn.Module):
    """ViT-style tokens without attention: a class token expanded and concatenated before the embedded
    tokens, a position embedding added, a residual MLP, and the class token read back with x[:, 0]."""

    def __init__(self, width=8):
        super().__init__()
        self.cls, self.pos = nn.Parameter(torch.randn(1, 1, width)), nn.Parameter(torch.randn(1, 5, width))
        self.embed, self.norm = nn.Linear(3, width), nn.LayerNorm(width)
        self.fc1, self.fc2, self.head = nn.Linear(width, 16), nn.Linear(16, width), nn.Linear(width, 2)

    def forward(self, x):
        h = torch.cat([self.cls.expand(len(x), -1, -1), self.embed(x)], dim=1) + self.pos
        h = h + self.fc2(F.gelu(self.fc1(self.norm(h))))
        return self.head(h[:, 0])


def test_class_token_position_embedding_and_indexing_keep_the_stream():
    with warnings.catch_warnings():
        warnings.simplefilter("error", FrozenAxesWarning)
        spec = ltray.spec_for(TokenMLP(), torch.randn(2, 4, 3))
    assert spec.axes["cls"] == spec.axes["pos"] == (None, None, "P_embed")
    assert spec.axes["head.weight"] == (None, "P_embed") and spec.axes["fc2.weight"] == ("P_embed", "P_fc1")


def test_spec_for_guesses_an_input_and_says_when_it_cannot():
    spec = ltray.spec_for(ResidualMLP())   # a (2, 48) batch read off the first Linear
    assert len(spec.groups) == 3
    with pytest.raises(LtrayError, match="cannot guess an input"):
        ltray.spec_for(nn.Sequential(nn.ReLU()))
