"""The keys of task segment, and its recipe: the shared keys whose defaults it changes."""
from dataclasses import dataclass
from typing import Optional

from utils.config import TASK_HELP, Config, key


@dataclass
class SegmentConfig(Config):
    task: str = key("segment", TASK_HELP)
    dataset: str = key("mni152_tissue", "the cases: mni152_tissue (the offline brain, labelled by tissue) | volume_folder "
                       "(nnU-Net's raw layout: dataset.json, imagesTr/, labelsTr/)", choices=("mni152_tissue", "volume_folder"))
    data_dir: Optional[str] = key(None, "volume_folder: the folder with dataset.json, imagesTr/ and labelsTr/")
    intensity: str = key("auto", "each channel's rule: auto (nnU-Net's: ct for a channel named CT, zscore for the others) | "
                         "zscore (per case) | ct (clipped to the foreground's 0.5..99.5th percentiles, z-scored with its "
                         "mean and std)", choices=("auto", "zscore", "ct"))
    spacing: Optional[list[float]] = key(None, "voxel spacing (mm, X Y Z in RAS) cases are resampled to: one number or three; "
                                         "auto: the cases' median, as nnU-Net", above=0, auto_int=True, triple=True)
    patch_size: Optional[list[int]] = key(None, "training patch (voxels): one side or three; auto: the median case's shape, "
                                          "capped at 64 a side and rounded to what the network halves", at_least=8,
                                          at_most=512, auto_int=True, triple=True)
    patches_per_epoch: int = key(64, "training patches drawn per epoch (an epoch is this many patches, not a pass over cases)",
                                 at_least=1)
    oversample_foreground: float = key(0.33, "share of patches centred on a voxel of a random foreground class present in "
                                       "the case (nnU-Net: a third)", at_least=0, at_most=1)
    deep_supervision: bool = key(True, "Dice + cross-entropy also on the decoder's coarser outputs, weighted 1/2^k")
    width: int = key(16, "features of the U-Net's first stage, doubled per stage up to 320 (nnU-Net: 32)", at_least=1)
    overlap: float = key(0.5, "sliding window: share of a patch that neighbouring windows overlap (Gaussian weighting)",
                         at_least=0, below=1)
    mirror: bool = key(True, "inference.py: average the sliding window over the 8 mirrorings of the axes (validation "
                       "during training: off, for speed)")
    save_probabilities: bool = key(False, "inference.py --input: also write each class's probability as <case>_prob.nii.gz")
    augment: str = key("auto", "auto (flips of every axis, rotation and scale with p 0.2, gamma with p 0.3, noise with p 0.1) "
                       "| none", choices=("auto", "none"))
    epochs: int = key(15, "total epochs of the run, counted across its resumed parents (15: about 15 minutes on 2 CPU "
                      "cores for the demo)", at_least=1)
    batch_size: int = key(2, "global batch of patches per optimizer step (nnU-Net: 2)", at_least=1)
    lr: float = key(3e-3, "peak learning rate", above=0)
    weight_decay: float = key(3e-5, "weight decay (not applied to biases and norm weights)", at_least=0)
    warmup_epochs: float = key(1.0, "linear learning-rate warmup, then the schedule", at_least=0)
    base_model: str = key("unet3d", "the network, a key of model_dict (unet3d: nnU-Net's design, sized from the patch and "
                          "the spacing)", model=True)
