import subprocess
import sys

import torch


def test_importing_adapt_makes_timm_and_torchvision_importable():
    # A fresh interpreter: the fix must work when adapt is the first import.
    code = "import adapt, timm, torchvision; from torchvision import transforms; print(transforms.Resize.__name__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Resize"


def test_schemas_exist_and_fix_is_idempotent():
    from adapt._compat import _op_exists, ensure_torchvision_importable

    ensure_torchvision_importable()
    ensure_torchvision_importable()
    assert _op_exists("nms") and _op_exists("qnms")
    assert torch.ops.torchvision.nms is not None
