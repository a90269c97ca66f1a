"""adapt: parameter-efficient adaptation of frozen pretrained vision backbones."""

from adapt import _compat  # noqa: F401  (must run before anything imports timm/torchvision)
from adapt.errors import AdaptError

__all__ = ["AdaptError"]
__version__ = "0.1.0"
