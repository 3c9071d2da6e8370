"""ltray.core.spec_report and `ltray spec MODEL`: group sizes, moved and fixed parameter counts worked out by hand,
and the op that froze a group named."""
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ltray
from ltray.core.spec_report import FrozenOp, fixed_entries, spec_report
from ltray.models import resolve_model


class RunningSum(nn.Module):
    """embed -> fc -> running sum over fc's units -> head: the sum sees the order of fc's units, so it freezes them."""

    def __init__(self):
        super().__init__()
        self.embed, self.fc, self.head = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.fc(F.relu(self.embed(x))).cumsum(1))


def test_a_2_mlp_moves_all_but_its_output_bias():
    """16 inputs, 8 hidden units, 10 classes: 16*8 + 8 + 8*10 + 10 = 226 entries; only fc2.bias (10) stays."""
    report = spec_report(ltray.build_model("mlp", in_channels=1, image_size=4, width=8))
    assert report.groups == {"P_fc1": 8} and report.frozen == ()
    assert (report.parameters, report.moved, report.tensors, report.moved_tensors) == (226, 216, 4, 3)
    assert report.moved_share == 216 / 226
    assert report.lines()[0] == ("MLP: 1 permutation group(s); 216 of 226 parameters move (95.6 %), 10 stay; "
                                 "3 of 4 parameter tensors move")


def test_the_op_that_froze_a_group_is_named_and_its_tensors_stay():
    """fc is frozen by cumsum: embed (8*16 + 16) and fc.weight's input axis (16*16) move; fc.bias (16) and the
    head (16*4 + 4) stay. 144 + 272 + 68 = 484 entries, 400 move."""
    torch.manual_seed(0)
    report = spec_report(RunningSum(), torch.randn(4, 8))
    assert report.groups == {"P_embed": 16}
    assert report.frozen == (FrozenOp("call 'cumsum' in 'RunningSum'", "has no permutation rule", ("P_fc",)),)
    assert (report.parameters, report.moved, report.tensors, report.moved_tensors) == (484, 400, 6, 3)
    assert report.lines()[-1] == "  call 'cumsum' in 'RunningSum' has no permutation rule; froze P_fc"


def test_fixed_entries_of_segmented_axes_and_size_one_groups():
    sizes = {"P_a": 4, "P_b": 1}
    cat = ((None, 3), ("P_a", 1), ("P_b", 2))       # 3 raw channels, 4 moved, 1 * 2 that a size-1 group keeps
    assert fixed_entries((cat,), torch.Size([9]), sizes) == 3 + 2
    assert fixed_entries((None, cat), torch.Size([5, 9]), sizes) == 5 * 5
    assert fixed_entries(("P_a", cat), torch.Size([4, 9]), sizes) == 0
    assert fixed_entries(("P_b", None), torch.Size([1, 7]), sizes) == 7
    assert fixed_entries((), torch.Size([]), sizes) == 1   # a scalar no group acts on


def test_the_command_prints_the_report():
    done = subprocess.run([sys.executable, "-m", "ltray", "spec", "mlp", "--in-channels", "1", "--image-size", "4",
                           "--width", "8", "--depth", "2"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    # 16*8 + 8 + 8*8 + 8 + 8*10 + 10 = 298 entries, fc3.bias (10) stays
    assert done.stdout.splitlines() == [
        "MLP: 2 permutation group(s); 288 of 298 parameters move (96.6 %), 10 stay; 5 of 6 parameter tensors move",
        "  P_fc1  size 8", "  P_fc2  size 8", "frozen by ops: none"]


def test_gated_mlps_and_attention_move_what_the_issue_asks():
    """Issue 24's floor of 80 %: a GLU MLP and a small ViT (nn.MultiheadAttention, and explicit q/k/v with heads)
    move all but their head's bias, and no op freezes a group (chunk, view into heads, attention have rules)."""
    from test_autospec_rules import GLUMLP, TinyViT

    torch.manual_seed(0)
    for model, x in [(GLUMLP(), torch.randn(2, 48)), (TinyViT(attn="mha"), torch.randn(2, 3, 16, 16)),
                     (TinyViT(attn="explicit"), torch.randn(2, 3, 16, 16))]:
        report = spec_report(model, x)
        assert report.frozen == () and report.moved_share >= 0.99, report.lines()[0]


@pytest.mark.slow   # convnext_tiny has 28 M parameters: the two specs take ~11 s to derive and verify on 2 cores
@pytest.mark.parametrize("name,groups", [("mobilenet_v2", 25), ("convnext_tiny", 22)])
def test_torchvision_mobile_and_convnext_move_everything_but_the_classifier_bias(name, groups):
    """Depthwise convolutions, squeeze-excitation, layer scale and channels-last LayerNorm all have rules."""
    model = resolve_model(f"torchvision:{name}", num_classes=10, in_channels=3, image_size=32)
    report = spec_report(model, torch.randn(2, 3, 32, 32))
    assert report.frozen == () and len(report.groups) == groups
    assert report.parameters - report.moved == 10
