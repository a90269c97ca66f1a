"""Make PyPI's CUDA-built torchvision importable beside the CPU torch wheel.

torchvision's C++ ops do not load against the CPU build of torch, so the import of
`torchvision` (which timm performs) fails in `_meta_registrations.py` at
`register_fake("torchvision::nms")`: the op schema it decorates does not exist.
Declaring the two schemas it needs (`nms`, `qnms`) beforehand lets the import
finish. We never call those ops; everything we use from torchvision (transforms)
is pure Python. When torchvision's own ops did load, the schemas already exist
and nothing is done.
"""

from __future__ import annotations

import torch

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library: torch.library.Library | None = None


def _op_exists(name: str) -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
    except RuntimeError:
        return False
    return True


def ensure_torchvision_importable() -> None:
    """Declare the torchvision op schemas that a failed C++ extension load leaves missing."""
    global _library
    missing = [name for name in _SCHEMAS if not _op_exists(name)]
    if not missing:
        return
    if _library is None:
        _library = torch.library.Library("torchvision", "FRAGMENT")
    for name in missing:
        _library.define(_SCHEMAS[name])


ensure_torchvision_importable()
