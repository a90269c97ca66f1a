"""Low-level in-place folding ops (SSF scale/shift, LoRA low-rank update, BatchNorm fold into convs).

Methods import these to merge themselves; reparameterization and soups build on them.
Nothing here imports the rest of adapt.
"""

from adapt.kernels.batchnorm import conv_batchnorm_pairs, fold_conv_batchnorms_
from adapt.kernels.fold import add_low_rank_, fold_batchnorm_, scale_shift_

__all__ = ["add_low_rank_", "conv_batchnorm_pairs", "fold_batchnorm_", "fold_conv_batchnorms_", "scale_shift_"]
