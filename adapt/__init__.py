"""adapt: parameter-efficient adaptation of frozen pretrained vision backbones.

The Python API is `adapt.load`, `adapt.tune`, `adapt.evaluate`, `adapt.predict`, `adapt.merge`, `adapt.soup`
and `adapt.continual` (adapt.api), each the library call its command makes.

Importing adapt is cheap (the CLI's --help needs no torch): the torchvision fix of
adapt._compat runs when torchvision is first imported, by timm or by anyone, through a
one-shot import hook, so `import adapt` before `import timm` keeps working.
"""

import importlib
import importlib.abc
import sys

from adapt.errors import AdaptError

# the Python API (adapt.api), imported when first used: `import adapt` loads no torch
_API = ("load", "tune", "evaluate", "predict", "merge", "soup", "continual", "compare")
__all__ = ["AdaptError", *_API]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module("adapt.api"), name)
        globals()[name] = value  # looked up once
        return value
    raise AttributeError(f"module 'adapt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])


class _TorchvisionFix(importlib.abc.MetaPathFinder):
    """Runs adapt._compat just before torchvision's first import, then steps aside."""

    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            sys.meta_path.remove(self)
            from adapt import _compat  # noqa: F401  (declares the op schemas torchvision's import needs)
        return None  # the usual finders import the module


if "torchvision" not in sys.modules and not any(isinstance(f, _TorchvisionFix) for f in sys.meta_path):
    sys.meta_path.insert(0, _TorchvisionFix())
