"""The keys of task wgan_gp, and its recipe: the shared keys whose defaults it changes (measured on
the digits: docs/tasks.md, "WGAN-GP")."""
from dataclasses import dataclass
from typing import Optional

from utils.config import TASK_HELP, Config, key


@dataclass
class WganGpConfig(Config):
    task: str = key("wgan_gp", TASK_HELP)
    epochs: int = key(300, "total epochs of the run, counted across its resumed parents", at_least=1)
    lr: float = key(1e-3, "peak learning rate (the generator's; the critic's too unless critic_lr)", above=0)
    ema_decay: float = key(0.999, "EMA of the generator and critic, moved after each generator step (0: off); its "
                           "samples are the ones measured and saved", at_least=0, below=1)
    generator: str = key("dcgan_generator", "the generator, a key of model_dict", model=True)
    critic: str = key("dcgan_critic", "the critic, a key of model_dict", model=True)
    latent_dim: int = key(64, "size of the generator's latent code", at_least=1)
    n_critic: int = key(2, "critic steps per generator step (each takes one batch; the paper: 5, 2 does better here)", at_least=1)
    gp_weight: float = key(10.0, "weight of the gradient penalty", at_least=0)
    critic_lr: Optional[float] = key(None, "the critic's peak learning rate (null: lr)", above=0)
    fid_features: Optional[str] = key(None, "a classifier run (id | latest | name:<name>) on the same data whose features give "
                                      "the Frechet distance, each epoch and in inference.py")
    fid_samples: int = key(1000, "generated samples for the Frechet distance and the class histogram", at_least=1)
    sample_seed: int = key(0, "seed of the latent codes of samples.png and of the generated samples measured", at_least=0)
