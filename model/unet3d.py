import torch
from torch import nn

MAX_WIDTH = 320  # nnU-Net caps 3D stages at 320 features


def _conv(cin: int, cout: int, stride: tuple) -> nn.Sequential:
    # 3x3x3 conv (bias: InstanceNorm's affine shift makes it redundant, nnU-Net keeps it) -> IN -> LeakyReLU(0.01)
    return nn.Sequential(nn.Conv3d(cin, cout, 3, stride=stride, padding=1), nn.InstanceNorm3d(cout, eps=1e-5, affine=True),
                         nn.LeakyReLU(0.01, inplace=True))


def plan_strides(patch: tuple, spacing: tuple, min_side: int = 4, max_stages: int = 6) -> list[tuple]:
    """nnU-Net's rule, in short: each stage after the first halves the axes that are still at least
    2 * min_side voxels and whose spacing is within twice the finest one (coarse axes wait until the
    others have caught up), until no axis can be halved. Returns the stride of every stage, the first (1, 1, 1)."""
    size, space, strides = list(patch), list(spacing), [(1, 1, 1)]
    while len(strides) < max_stages:
        finest = min(space)
        s = tuple(2 if size[a] >= 2 * min_side and space[a] <= 2 * finest else 1 for a in range(3))
        if s == (1, 1, 1):
            break
        size = [n // k for n, k in zip(size, s)]
        space = [v * k for v, k in zip(space, s)]
        strides.append(s)
    return strides


class UNet3d(nn.Module):
    """nnU-Net's generic 3D U-Net ("PlainConvUNet"), sized from the patch and the voxel spacing.

    Encoder: stages of two conv-IN-LeakyReLU blocks, the first conv of each stage after the first
    strided (plan_strides); widths width, 2*width, ... capped at 320. Decoder: a transposed conv
    with the stage's stride, concatenation with the skip, two blocks. Deep supervision: a 1x1x1 head
    on every decoder stage; in training mode the model returns the list of logits, finest first
    ((B, classes, X, Y, Z), then each coarser scale), in eval mode only the finest.
    patch sides must be divisible by the product of the strides (the task picks such patches)."""
    volumetric = True

    def __init__(self, in_channels: int, num_classes: int, patch: tuple, spacing: tuple = (1.0, 1.0, 1.0),
                 width: int = 32, deep_supervision: bool = True):
        super().__init__()
        self.strides = plan_strides(tuple(patch), tuple(spacing))
        widths = [min(width * 2**i, MAX_WIDTH) for i in range(len(self.strides))]
        self.encoder = nn.ModuleList()
        cin = in_channels
        for w, s in zip(widths, self.strides):
            self.encoder.append(nn.Sequential(_conv(cin, w, s), _conv(w, w, (1, 1, 1))))
            cin = w
        self.up, self.decoder, self.heads = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for i in range(len(widths) - 1, 0, -1):  # from the bottom up
            self.up.append(nn.ConvTranspose3d(widths[i], widths[i - 1], self.strides[i], stride=self.strides[i]))
            self.decoder.append(nn.Sequential(_conv(2 * widths[i - 1], widths[i - 1], (1, 1, 1)),
                                              _conv(widths[i - 1], widths[i - 1], (1, 1, 1))))
            self.heads.append(nn.Conv3d(widths[i - 1], num_classes, 1))
        self.deep_supervision = deep_supervision

    def forward(self, x: torch.Tensor):
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        outs = []
        for up, block, head, skip in zip(self.up, self.decoder, self.heads, reversed(skips[:-1])):
            x = block(torch.cat([up(x), skip], dim=1))
            outs.append(head(x))
        if self.training and self.deep_supervision:
            return outs[::-1]  # finest first
        return outs[-1]

    @staticmethod
    def divisor(patch: tuple, spacing: tuple) -> tuple:
        """What each patch side must be a multiple of: the product of the strides along it."""
        out = [1, 1, 1]
        for s in plan_strides(tuple(patch), tuple(spacing)):
            out = [o * k for o, k in zip(out, s)]
        return tuple(out)
