import torch
from torch import nn


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    # 3x3 conv (no bias: BN follows) -> BN -> ReLU; keeps H and W.
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _Stage(nn.Module):
    """Halve H and W, widen, then one residual pair of convs (a ResNet9-style stage).

    (B, cin, H, W) -> maxpool -> (B, cin, ceil(H/2), ceil(W/2)) -> conv -> (B, cout, ...) -> x + res(x).
    Pooling before the widening conv makes every conv of the stage run at the reduced
    resolution, which is where nearly all the compute of the model goes.
    """

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.pool = nn.MaxPool2d(2, ceil_mode=True)  # ceil: odd sizes (7, 25, ...) keep their border
        self.widen = _conv_bn_relu(cin, cout)
        self.res = nn.Sequential(_conv_bn_relu(cout, cout), _conv_bn_relu(cout, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.widen(self.pool(x))
        return x + self.res(x)


class SmallCNN(nn.Module):
    """A compact residual CNN whose depth follows the image size; the default model.

    stem: one 3x3 conv at full resolution (32 channels), then stride-2 stages (maxpool + conv +
    residual pair, widths 64, 128, 256, 256) until the feature map is at most 7 px on a side:
    8 px -> 1 stage (4x4), 16 -> 2 (4x4), 28 -> 2 (7x7), 32 -> 3 (4x4), 64 -> 4 (4x4).
    Then global average pooling, dropout and a linear head. Only conv, BN, ReLU, maxpool and
    average pooling: deterministic on CPU under torch.use_deterministic_algorithms(True).
    Channel counts are multiples of 32, which suits bf16 matrix units (AMX) with channels_last.
    """

    max_side = 7          # stop downsampling once the feature map is at most this many px
    stem_width = 32
    widths = (64, 128, 256, 256)  # stage i gets widths[min(i, 3)] channels

    def __init__(self, in_channels: int, num_classes: int, image_size: int,
                 dropout: float = 0.0, pretrained: bool = False):
        super().__init__()
        if pretrained:
            raise ValueError("small_cnn has no pretrained weights; set pretrained: false")
        n_stages, side = 0, image_size
        while side > self.max_side or n_stages == 0:  # at least one stage, even for tiny images
            side = (side + 1) // 2
            n_stages += 1
        layers = [_conv_bn_relu(in_channels, self.stem_width)]  # (B, 32, H, W)
        cin = self.stem_width
        for i in range(n_stages):  # each: (B, cin, h, w) -> (B, cout, ceil(h/2), ceil(w/2))
            cout = self.widths[min(i, len(self.widths) - 1)]
            layers.append(_Stage(cin, cout))
            cin = cout
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())  # (B, cin)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(cin, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, num_classes) logits
