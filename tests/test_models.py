"""model_dict: every model builds for the data's channels, size and classes."""
import inspect
import time

import pytest
import torch

from model import model_dict

CLASSIFIERS = sorted(n for n, cls in model_dict.items() if "num_classes" in inspect.signature(cls).parameters
                     and "spacing" not in inspect.signature(cls).parameters)  # a segmentation network: tests/tasks/test_segment.py
VOLUMETRIC = [n for n in CLASSIFIERS if getattr(model_dict[n], "volumetric", False)]


@pytest.mark.parametrize("name", [n for n in CLASSIFIERS if n not in VOLUMETRIC])
@pytest.mark.parametrize("channels, size, classes", [(1, 8, 10), (3, 32, 5)])
def test_forward_shapes(name, channels, size, classes):
    model = model_dict[name](in_channels=channels, num_classes=classes, image_size=size, dropout=0.1).eval()
    with torch.no_grad():
        assert model(torch.randn(2, channels, size, size)).shape == (2, classes)


@pytest.mark.parametrize("name", VOLUMETRIC)
@pytest.mark.parametrize("channels, size, classes", [(1, (8, 8, 8), 2), (2, (20, 16, 12), 4), (1, (72, 64, 64), 3)])
def test_volume_models_fit_the_volume(name, channels, size, classes):
    model = model_dict[name](in_channels=channels, num_classes=classes, image_size=size, dropout=0.1).eval()
    with torch.no_grad():
        assert model(torch.randn(1, channels, *size)).shape == (1, classes)


def test_resnet_on_large_images_keeps_the_imagenet_stem():
    model = model_dict["resnet18"](in_channels=1, num_classes=3, image_size=96).eval()
    assert model.net.conv1.kernel_size == (7, 7) and model.net.conv1.in_channels == 1
    with torch.no_grad():
        assert model(torch.randn(1, 1, 96, 96)).shape == (1, 3)


def test_pretrained_weights_unavailable_fail_fast_with_the_path(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    import socket

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")
    monkeypatch.setattr(socket, "create_connection", no_network)
    t0 = time.perf_counter()
    with pytest.raises(OSError) as e:
        model_dict["resnet18"](in_channels=3, num_classes=10, image_size=64, pretrained=True)
    assert time.perf_counter() - t0 < 30
    assert str(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in str(e.value)


@pytest.mark.parametrize("channels, size", [(1, 8), (1, 28), (3, 32), (3, 13)])
def test_gan_models_fit_the_image(channels, size):
    generator = model_dict["dcgan_generator"](latent_dim=16, out_channels=channels, image_size=size).eval()
    critic = model_dict["dcgan_critic"](in_channels=channels, image_size=size)
    with torch.no_grad():
        images = generator(torch.randn(3, 16))
        assert images.shape == (3, channels, size, size) and images.abs().max() <= 1
        assert critic(images).shape == (3,)
