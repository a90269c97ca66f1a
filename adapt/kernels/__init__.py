"""Low-level in-place folding ops (SSF scale/shift, LoRA low-rank update, BatchNorm fold into convs),
and the lean autograd nodes of frozen layers (frozen_batchnorm, frozen_conv).

Methods import these to merge themselves and to train without keeping what backward does not
need; reparameterization and soups build on them.
Nothing here imports the rest of adapt.
"""

from adapt.kernels.batchnorm import FoldedBatchNorm, conv_batchnorm_pairs, fold_conv_batchnorms_, unfold_conv_batchnorm_
from adapt.kernels.fold import add_low_rank_, fold_batchnorm_, scale_shift_

__all__ = ["FoldedBatchNorm", "add_low_rank_", "conv_batchnorm_pairs", "fold_batchnorm_", "fold_conv_batchnorms_",
           "scale_shift_", "unfold_conv_batchnorm_"]
