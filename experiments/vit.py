"""A small vision transformer for the CLI's `--model experiments.vit:vit` (issue 24, item 4).

Patch embedding (a Conv2d whose stride is its kernel), a class token and a learned position embedding, pre-norm
nn.TransformerEncoderLayer blocks (nn.MultiheadAttention, GELU MLP), a final LayerNorm and a linear head on the
class token. Its permutation spec is derived by ltray.core.autospec: the residual stream is one group (patch
embedding, tokens, every LayerNorm, the projections in and out of each block), each layer's heads move as blocks
of head_dim alike in q, k, v and the output projection, each feed-forward hidden layer is a group; only the head's
bias stays (`python -m ltray spec experiments.vit:vit --in-channels 1 --image-size 28`).

The image is cut into a `grid` x `grid` of patches whatever its size (MNIST 28 px: 7 px patches, 16 tokens and
the class token), so the same factory fits MNIST and the bundled 8 x 8 digits (2 px patches) of the smoke test.
Run from the repository root with `python -m ltray ...`, which puts the root on sys.path (Ray's workers get the
driver's working directory on theirs).
"""
import torch
from torch import nn


class ViT(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28, width: int = 64,
                 heads: int = 4, layers: int = 2, grid: int = 4, mlp_ratio: int = 2):
        super().__init__()
        if image_size % grid:
            raise ValueError(f"image size {image_size} is not a multiple of the {grid} x {grid} patch grid")
        patch = image_size // grid
        self.patch = nn.Conv2d(in_channels, width, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.pos = nn.Parameter(torch.randn(1, 1 + grid * grid, width) * 0.02)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(width, heads, mlp_ratio * width, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True) for _ in range(layers))
        self.norm, self.head = nn.LayerNorm(width), nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:   # (B, C, H, W) -> (B, classes)
        h = self.patch(x).flatten(2).transpose(1, 2)       # (B, grid^2, width)
        h = torch.cat([self.cls.expand(len(h), -1, -1), h], 1) + self.pos
        for layer in self.layers:
            h = layer(h)
        return self.head(self.norm(h[:, 0]))


def vit(num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> ViT:
    """The experiment's ViT: width 64, 4 heads of 16, 2 encoder layers, feed-forward 128, 4 x 4 patches."""
    return ViT(num_classes, in_channels, image_size)
