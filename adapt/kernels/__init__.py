"""Low-level in-place folding ops (SSF scale/shift, LoRA low-rank update, BatchNorm fold).

Methods import these to merge themselves; reparameterization and soups build on them.
Nothing here imports the rest of adapt.
"""

from adapt.kernels.fold import add_low_rank_, fold_batchnorm_, scale_shift_

__all__ = ["add_low_rank_", "fold_batchnorm_", "scale_shift_"]
