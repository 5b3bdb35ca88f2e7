"""The keys of task classify, after the shared ones (utils/config.py); base_model is the last line."""
from dataclasses import dataclass

from utils.config import TASK_HELP, Config, key


@dataclass
class ClassifyConfig(Config):
    task: str = key("classify", TASK_HELP)
    mixup_alpha: float = key(0.0, "mixup with Beta(alpha, alpha) weights (0: off)", at_least=0)
    cutmix_alpha: float = key(0.0, "cutmix with Beta(alpha, alpha) areas (0: off; with mixup, half the samples each)", at_least=0)
    label_smoothing: float = key(0.1, "label smoothing of the training loss", at_least=0, below=1)
    dropout: float = key(0.1, "dropout before the classifier", at_least=0, below=1)
    pretrained: bool = key(False, "resnets: start from torchvision's ImageNet weights")
    base_model: str = key("small_cnn", "the classifier, a key of model_dict (small_cnn on volumes: small_cnn3d)", model=True)
