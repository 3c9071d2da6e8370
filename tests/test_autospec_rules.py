"""The rules of ltray.core.oprules and attention_rules that refine a group into a subgroup (issue 24): a Linear output
split into a gate and a value (chunk, split, F.glu), features viewed as (heads, head_dim), nn.MultiheadAttention,
grouped convolutions and GroupNorm. Each model's derived spec keeps f(x; pi theta) == f(x; theta) for a random pi
that moves every group, undoing one tensor of it breaks that, and a planted permutation is recovered by weight
matching."""
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import ltray
from ltray.core.autospec import FrozenAxesWarning, verify_spec
from ltray.core.spec_report import spec_report
from ltray.core.symmetry import PermutationSpec
from ltray.errors import LtrayError
from test_autospec import assert_matching_recovers_a_planted_permutation


class GLUMLP(nn.Module):
    """Pre-norm residual GLU blocks x + W_out (a * silu(b)), with a, b the halves of W_in LayerNorm(x), split by
    Tensor.chunk, torch.split or F.glu (a * sigmoid(b))."""

    def __init__(self, d_in=48, width=32, hidden=64, blocks=2, num_classes=10, how="chunk"):
        super().__init__()
        self.how, self.embed = how, nn.Linear(d_in, width)
        self.blocks = nn.ModuleList(nn.ModuleDict(dict(norm=nn.LayerNorm(width), w_in=nn.Linear(width, 2 * hidden),
                                                       w_out=nn.Linear(hidden, width))) for _ in range(blocks))
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        x = self.embed(x.flatten(1))
        for block in self.blocks:
            h = block["w_in"](block["norm"](x))
            if self.how == "chunk":
                a, b = h.chunk(2, dim=-1)
                h = a * F.silu(b)
            elif self.how == "split":
                a, b = torch.split(h, h.shape[-1] // 2, dim=-1)
                h = F.silu(a) * b
            else:
                h = F.glu(h, dim=-1)
            x = x + block["w_out"](h)
        return self.head(x)


class Attention(nn.Module):
    """Explicit multi-head self-attention: q, k, v from one fused Linear (chunked) or three, viewed as (heads,
    head_dim), scores by matmul and softmax or by F.scaled_dot_product_attention."""

    def __init__(self, width, heads, fused=False, sdpa=False):
        super().__init__()
        self.heads, self.fused, self.sdpa = heads, fused, sdpa
        self.qkv = nn.Linear(width, 3 * width) if fused else nn.ModuleList(nn.Linear(width, width) for _ in range(3))
        self.proj = nn.Linear(width, width)

    def forward(self, x):   # (B, L, E)
        B, L, E = x.shape
        qkv = self.qkv(x).chunk(3, dim=-1) if self.fused else [lin(x) for lin in self.qkv]
        q, k, v = (t.view(B, L, self.heads, E // self.heads).transpose(1, 2) for t in qkv)   # (B, heads, L, dim)
        if self.sdpa:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = (q @ k.transpose(-2, -1) / math.sqrt(E // self.heads)).softmax(-1) @ v
        return self.proj(out.transpose(1, 2).reshape(B, L, E))


class TinyViT(nn.Module):
    """Patch embedding, class token, position embedding, pre-norm encoder layers (nn.TransformerEncoderLayer, i.e.
    nn.MultiheadAttention, or the explicit Attention above), a LayerNorm and a head on the class token."""

    def __init__(self, width=32, heads=4, layers=2, patch=4, image=16, channels=3, num_classes=10, attn="mha"):
        super().__init__()
        self.patch = nn.Conv2d(channels, width, patch, patch)
        self.cls = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, 1 + (image // patch) ** 2, width) * 0.02)
        if attn == "mha":
            self.layers = nn.ModuleList(nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0,
                                                                   batch_first=True, norm_first=True)
                                        for _ in range(layers))
        else:
            self.layers = nn.ModuleList(nn.ModuleDict(dict(
                norm1=nn.LayerNorm(width), attn=Attention(width, heads, "fused" in attn, "sdpa" in attn),
                norm2=nn.LayerNorm(width),
                mlp=nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))))
                for _ in range(layers))
        self.norm, self.head = nn.LayerNorm(width), nn.Linear(width, num_classes)

    def forward(self, x):
        h = self.patch(x).flatten(2).transpose(1, 2)   # (B, patches, width)
        h = torch.cat([self.cls.expand(len(h), -1, -1), h], 1) + self.pos
        for layer in self.layers:
            if isinstance(layer, nn.TransformerEncoderLayer):
                h = layer(h)
            else:
                h = h + layer["attn"](layer["norm1"](h))
                h = h + layer["mlp"](layer["norm2"](h))
        return self.head(self.norm(h[:, 0]))


class GroupedCNN(nn.Module):
    """A ResNeXt-style bottleneck (1x1, grouped 3x3, 1x1) with GroupNorm on the residual stream."""

    def __init__(self, c=24, width=32, groups=4, num_classes=10):
        super().__init__()
        self.stem, self.gn = nn.Conv2d(3, c, 3, padding=1), nn.GroupNorm(3, c)
        self.conv1, self.bn1 = nn.Conv2d(c, width, 1), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, padding=1, groups=groups), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, c, 1), nn.BatchNorm2d(c)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x):
        x = F.relu(self.gn(self.stem(x)))
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(h)))))
        return self.head(F.adaptive_avg_pool2d(F.relu(x + h), 1).flatten(1))


class ConvNeXtBlockSE(nn.Module):
    """Depthwise 7x7, channels-last LayerNorm via permute, an inverted MLP, layer scale (C, 1, 1), and a
    squeeze-excitation gate (N, C, 1, 1) multiplied into the features."""

    def __init__(self, c=16, num_classes=10):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 2, 2)
        self.dw, self.norm = nn.Conv2d(c, c, 7, padding=3, groups=c), nn.LayerNorm(c)
        self.fc1, self.fc2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.scale = nn.Parameter(torch.rand(c, 1, 1) + 0.5)
        self.se1, self.se2 = nn.Conv2d(c, 4, 1), nn.Conv2d(4, c, 1)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x):
        x = self.stem(x)
        h = self.norm(self.dw(x).permute(0, 2, 3, 1))
        h = self.fc2(F.gelu(self.fc1(h))).permute(0, 3, 1, 2)
        x = x + self.scale * h
        x = x * torch.sigmoid(self.se2(F.relu(self.se1(F.adaptive_avg_pool2d(x, 1)))))
        return self.head(x.mean((2, 3)))


# name: (model factory, input shape, number of groups, minimum share of parameters moved)
CASES = {
    "glu_chunk": (lambda: GLUMLP(how="chunk"), (2, 48), 3, 0.99),   # stream + one hidden group per block
    "glu_split": (lambda: GLUMLP(how="split"), (2, 48), 3, 0.99),
    "glu_F": (lambda: GLUMLP(how="glu"), (2, 48), 3, 0.99),
    "vit_mha": (lambda: TinyViT(attn="mha"), (2, 3, 16, 16), 5, 0.99),   # stream + heads and MLP per layer
    "vit_explicit": (lambda: TinyViT(attn="explicit"), (2, 3, 16, 16), 5, 0.99),
    "vit_fused_sdpa": (lambda: TinyViT(attn="fused_sdpa"), (2, 3, 16, 16), 5, 0.99),
    "grouped_cnn": (GroupedCNN, (2, 3, 8, 8), 3 + 1, 0.99),           # 3 GroupNorm groups of the stem, conv1
    "convnext_block_se": (ConvNeXtBlockSE, (2, 3, 8, 8), 3, 0.99),     # stream, fc1, se1
}


def _derived(name):
    factory, shape, _, _ = CASES[name]
    torch.manual_seed(0)
    model, x = factory().eval(), torch.randn(shape)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FrozenAxesWarning)
        return model, x, ltray.spec_for(model, x)


def _randomised(model):
    gen = torch.Generator().manual_seed(5)
    return {k: v + torch.randn(v.shape, generator=gen) * 0.1 if v.is_floating_point() and v.ndim == 1 else v
            for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", CASES)
def test_the_refined_spec_keeps_the_function_and_every_group_matters(name):
    model, x, spec = _derived(name)
    assert len(spec.groups) == CASES[name][2]
    state = _randomised(model)
    perm = ltray.random_permutation(spec, seed=1)
    assert all(not torch.equal(p, torch.arange(len(p))) for p in perm.values())
    permuted = ltray.apply_permutation(spec, perm, state)
    with torch.no_grad():
        expected = functional_call(model, state, (x,))
        assert torch.allclose(functional_call(model, permuted, (x,)), expected, rtol=1e-4,
                              atol=1e-5 * float(expected.abs().max()))
        for g, members in spec.groups.items():   # every group acts on the function: undoing one tensor shows
            key = next(k for k, _ in members if k.endswith("weight") and k in dict(model.named_parameters()))
            broken = functional_call(model, permuted | {key: state[key]}, (x,))
            assert not torch.allclose(broken, expected, rtol=1e-3, atol=1e-3 * float(expected.abs().max())), g
    assert spec_report(model, x).moved_share >= CASES[name][3]


@pytest.mark.parametrize("name", ["glu_chunk", "vit_mha", "vit_fused_sdpa", "grouped_cnn"])
def test_weight_matching_recovers_a_planted_permutation_of_refined_groups(name):
    model, _, spec = _derived(name)
    assert_matching_recovers_a_planted_permutation(spec, _randomised(model))


def test_the_halves_of_a_gate_move_alike_and_not_apart():
    model, x, spec = _derived("glu_chunk")
    halves = (("P_blocks.0.w_in", 1), ("P_blocks.0.w_in", 1))
    assert spec.axes["blocks.0.w_in.weight"] == (halves, "P_embed") and spec.axes["blocks.0.w_in.bias"] == (halves,)
    assert spec.axes["blocks.0.w_out.weight"] == ("P_embed", "P_blocks.0.w_in")
    # Each half on its own permutation (the value's units paired with other gates) is not a symmetry.
    apart = dict(spec.axes, **{"blocks.0.w_in.weight": ((("P_blocks.0.w_in", 1), ("P_apart", 1)), "P_embed"),
                               "blocks.0.w_in.bias": ((("P_blocks.0.w_in", 1), ("P_apart", 1)),)})
    with pytest.raises(LtrayError, match="breaks invariance"):
        verify_spec(model, PermutationSpec(apart, dict(spec.sizes, P_apart=64)), x)


def test_heads_move_as_blocks_alike_in_q_k_v_and_the_output_projection():
    model, x, spec = _derived("vit_mha")
    heads = ("P_layers.0.self_attn.heads", 8)   # 4 heads of 8 features
    assert spec.sizes["P_layers.0.self_attn.heads"] == 4
    assert spec.axes["layers.0.self_attn.in_proj_weight"] == ((heads,) * 3, "P_patch")
    assert spec.axes["layers.0.self_attn.out_proj.weight"] == ("P_patch", (heads,))
    assert spec.axes["layers.1.norm1.weight"] == spec.axes["norm.bias"] == ("P_patch",)   # one residual stream
    _, _, explicit = _derived("vit_explicit")
    q, k = explicit.axes["layers.0.attn.qkv.0.weight"][0], explicit.axes["layers.0.attn.qkv.1.weight"][0]
    assert q == k == explicit.axes["layers.0.attn.qkv.2.weight"][0] == explicit.axes["layers.0.attn.proj.weight"][1]
    assert explicit.sizes[q[0][0]] == 4 and q[0][1] == 8
    # Features permuted one by one across heads (a stream-like group on q and k) are not a symmetry.
    loose = dict(spec.axes, **{"layers.0.self_attn.in_proj_weight": (((("P_loose", 1),) * 2) + (heads,), "P_patch"),
                               "layers.0.self_attn.in_proj_bias": ((("P_loose", 1),) * 2 + (heads,),)})
    with pytest.raises(LtrayError, match="breaks invariance"):
        verify_spec(model, PermutationSpec(loose, dict(spec.sizes, P_loose=32)), x)


def test_grouped_convolutions_move_whole_groups_and_groupnorm_channels_stay_in_theirs():
    model, x, spec = _derived("grouped_cnn")
    assert spec.axes["conv2.weight"] == ((("P_conv1", 8),), None, None, None)   # 4 groups of 8 channels
    assert spec.axes["conv1.weight"][0] == spec.axes["conv3.weight"][1] == (("P_conv1", 8),)
    stream = tuple((g, 1) for g in ("P_stem", "P_stem[1]", "P_stem[2]"))   # GroupNorm(3, 24): 3 groups of 8
    assert spec.axes["gn.weight"] == (stream,) and spec.axes["head.weight"] == (None, stream)
    assert all(spec.sizes[g] == 8 for g, _ in stream)


class UnalignedSum(nn.Module):
    """3 channels of 2 positions plus 2 channels of 3 positions, flattened and added: blocks of 2 and 3 entries
    do not nest, so no refinement lines them up."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Conv1d(1, 3, 1), nn.Conv1d(1, 2, 1), nn.Linear(6, 2)

    def forward(self, x):
        return self.head(self.a(x[:, :, :2]).flatten(1) + self.b(x).flatten(1))


def test_a_freeze_inside_a_rule_reaches_a_warnings_filter():
    """The add's rule freezes and warns; with the warning an error, deriving stops there (it used to be swallowed by
    the handler for rules that do not fit their arguments, leaving a silently frozen spec)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", FrozenAxesWarning)
        with pytest.raises(FrozenAxesWarning, match=r"'add' in 'UnalignedSum' joins axes whose segments do not line "
                                                    r"up; froze P_a, P_b"):
            ltray.spec_for(UnalignedSum(), torch.randn(2, 1, 3))
