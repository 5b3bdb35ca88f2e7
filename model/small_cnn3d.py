import torch
from torch import nn


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    # 3x3x3 conv (no bias: BN follows) -> BN -> ReLU; keeps the size.
    return nn.Sequential(nn.Conv3d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm3d(cout), nn.ReLU(inplace=True))


class _Stage(nn.Module):
    """Halve every side, widen, then one residual pair of convs: small_cnn's stage in 3D.
    (B, cin, X, Y, Z) -> maxpool -> (B, cin, ceil(X/2), ...) -> conv -> (B, cout, ...) -> x + res(x)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.pool = nn.MaxPool3d(2, ceil_mode=True)
        self.widen = _conv_bn_relu(cin, cout)
        self.res = nn.Sequential(_conv_bn_relu(cout, cout), _conv_bn_relu(cout, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.widen(self.pool(x))
        return x + self.res(x)


class SmallCNN3d(nn.Module):
    """small_cnn's adaptive residual design for volumes (model/small_cnn.py).

    stem: one 3x3x3 conv at full resolution (16 channels), then stride-2 stages (maxpool + conv +
    residual pair, widths 32, 64, 128, 128) until the largest side is at most 6 voxels:
    16^3 -> 2 stages (4^3), 32^3 -> 3 (4^3), 64^3 -> 4 (4^3). Then global average pooling, dropout
    and a linear head. Narrower than the 2D model: a 3D conv costs a side's worth more.
    """

    volumetric = True     # takes (B, C, X, Y, Z)
    max_side = 6
    stem_width = 16
    widths = (32, 64, 128, 128)

    def __init__(self, in_channels: int, num_classes: int, image_size, dropout: float = 0.0, pretrained: bool = False):
        super().__init__()
        if pretrained:
            raise ValueError("small_cnn3d has no pretrained weights; set pretrained: false")
        side, n_stages = max(image_size), 0
        while side > self.max_side or n_stages == 0:
            side = (side + 1) // 2
            n_stages += 1
        layers, cin = [_conv_bn_relu(in_channels, self.stem_width)], self.stem_width
        for i in range(n_stages):
            cout = self.widths[min(i, len(self.widths) - 1)]
            layers.append(_Stage(cin, cout))
            cin = cout
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool3d(1), nn.Flatten())  # (B, cin)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(cin, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, num_classes) logits
