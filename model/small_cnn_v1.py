import torch
from torch import nn


class SmallCNNv1(nn.Module):
    """The first default model: three 3x3 conv blocks, one pooling stage, global average pooling
    and a linear head. Kept so that runs trained with it (before the recipe keys existed, their
    config.yaml says small_cnn) still load for inference, A/B comparison and continuation."""

    def __init__(self, in_channels: int, num_classes: int, image_size: int,
                 dropout: float = 0.0, pretrained: bool = False):
        super().__init__()
        if pretrained:
            raise ValueError("small_cnn_v1 has no pretrained weights; set pretrained: false")

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                                 nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

        self.features = nn.Sequential(
            block(in_channels, 32),             # (B, 32, H, W)
            block(32, 64), nn.MaxPool2d(2),     # (B, 64, H/2, W/2)
            block(64, 128),                     # (B, 128, H/2, W/2)
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),  # (B, 128)
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, num_classes) logits
