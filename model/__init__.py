"""model_dict: the one registry. Adding a model is one class and one line here.

Every class takes (in_channels, num_classes, image_size, dropout, pretrained) and returns
logits of shape (B, num_classes).
"""
from model.mlp import MLP
from model.resnet import ResNet18, ResNet50
from model.small_cnn import SmallCNN
from model.small_cnn_v1 import SmallCNNv1

model_dict = {
    "small_cnn": SmallCNN,
    "resnet18": ResNet18,
    "resnet50": ResNet50,
    "mlp": MLP,
    "small_cnn_v1": SmallCNNv1,
}
