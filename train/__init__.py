from train.trainer import Trainer, evaluate, to_device

__all__ = ["Trainer", "evaluate", "to_device"]
