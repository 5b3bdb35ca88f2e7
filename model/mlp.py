import torch
from torch import nn


class MLP(nn.Module):
    """Flattened pixels -> one hidden layer -> logits. No BatchNorm, so its result does not
    depend on how a batch is split across processes or micro-batches (tests rely on this)."""

    def __init__(self, in_channels: int, num_classes: int, image_size: int,
                 dropout: float = 0.0, pretrained: bool = False, hidden: int = 256):
        super().__init__()
        if pretrained:
            raise ValueError("mlp has no pretrained weights; set pretrained: false")
        self.net = nn.Sequential(
            nn.Flatten(),                                            # (B, C*H*W)
            nn.Linear(in_channels * image_size * image_size, hidden), nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),                          # (B, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
