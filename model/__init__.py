"""model_dict: the one registry. Adding a model is one class and one line here.

A classifier takes (in_channels, num_classes, image_size, dropout, pretrained) and returns logits
of shape (B, num_classes); one for volumes says `volumetric = True` and gets image_size as
(X, Y, Z). A GAN's generator takes (latent_dim, out_channels, image_size) and its critic
(in_channels, image_size): each task builds its models with its own arguments (tasks/).
"""
from model.alpha_gan import AlphaCritic, AlphaEncoder, AlphaGenerator, CodeCritic
from model.dcgan import DCGANCritic, DCGANGenerator
from model.dcgan3d import DCGAN3dCritic, DCGAN3dGenerator
from model.mlp import MLP
from model.resnet import ResNet18, ResNet50
from model.resnet3d import ResNet18_3d
from model.small_cnn import SmallCNN
from model.small_cnn3d import SmallCNN3d
from model.small_cnn_v1 import SmallCNNv1
from model.unet3d import UNet3d

model_dict = {
    "small_cnn": SmallCNN,
    "resnet18": ResNet18,
    "resnet50": ResNet50,
    "mlp": MLP,
    "small_cnn_v1": SmallCNNv1,
    "dcgan_generator": DCGANGenerator,
    "dcgan_critic": DCGANCritic,
    "small_cnn3d": SmallCNN3d,
    "resnet18_3d": ResNet18_3d,
    "dcgan3d_generator": DCGAN3dGenerator,
    "dcgan3d_critic": DCGAN3dCritic,
    "alpha_encoder": AlphaEncoder,
    "alpha_generator": AlphaGenerator,
    "alpha_critic": AlphaCritic,
    "code_critic": CodeCritic,
    "unet3d": UNet3d,
}
