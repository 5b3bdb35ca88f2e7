"""The keys of task alpha_wgan_gp, and its recipe: the shared keys whose defaults it changes."""
from dataclasses import dataclass
from typing import Optional

from utils.config import TASK_HELP, Config, key


@dataclass
class AlphaWganGpConfig(Config):
    task: str = key("alpha_wgan_gp", TASK_HELP)
    dataset: str = key("mni152", "the data set: a volume set (mni152: the offline brain patches; volume_folder: your NIfTI files)",
                       choices=("mni152", "volume_folder"))
    volume_size: Optional[list[int]] = key([32, 32, 32], "volumes are resampled to this cube: a power of two from 8 to 256",
                                           triple=True)
    epochs: int = key(40, "total epochs of the run, counted across its resumed parents (40: about 15 minutes on 2 CPU cores "
                      "at the defaults)", at_least=1)
    batch_size: int = key(8, "global batch per iteration (each of the three phases takes the same batch)", at_least=1)
    lr: float = key(2e-4, "peak learning rate of the four Adams (betas 0.5, 0.9)", above=0)
    warmup_epochs: float = key(0.0, "linear learning-rate warmup, then the schedule", at_least=0)
    scheduler: str = key("none", "none | step | cosine (stepped every iteration)", choices=("none", "step", "cosine"))
    weight_decay: float = key(0.0, "weight decay (not applied to biases and norm weights)", at_least=0)
    ema_decay: float = key(0.999, "EMA of the four networks, moved after each E and G step (0: off); its weights are the ones "
                           "validated, measured and saved (over epochs 10-15, held-out MMD^2 0.13 against 0.19 without, "
                           "L1 0.27 against 0.26, and no epoch-to-epoch swings)", at_least=0, below=1)
    width: int = key(16, "width of the first stage of the critic and the encoder (the paper: 64); the generator mirrors it",
                     at_least=1)
    code_dim: int = key(128, "size of the code E gives and G takes (the paper: 1000)", at_least=1)
    code_critic_width: int = key(256, "hidden width of the code critic's MLP (the paper: 4096)", at_least=1)
    critic_norm: str = key("none", "normalisation in D and CD: none | layer | batch (the paper: batch, which collapsed here: "
                           "held-out L1 stuck at 0.61, samples' MS-SSIM 0.94; layer: L1 0.29 against none's 0.26, MMD^2 "
                           "0.15 against 0.19; docs/tasks.md)", choices=("none", "layer", "batch"))
    l1_weight: float = key(10.0, "lambda: weight of the reconstruction L1 in the encoder and generator's loss", at_least=0)
    gp_weight: float = key(10.0, "weight of both critics' gradient penalties (the norm over each whole sample)", at_least=0)
