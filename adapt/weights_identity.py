"""Which published checkpoint a weights file is, as far as it says: for presets that need specific weights.

The VTAB-1k papers do not use one "ViT-B/16 IN-21k": SSF and HST load timm's AugReg checkpoint
(`vit_base_patch16_224.augreg_in21k`, `B_16-i21k-300ep-...npz`, normalised with 0.5), SPT, NOAH and V-PETL
Bench the original `imagenet21k/ViT-B_16.npz` (`vit_base_patch16_224.orig_in21k`, ImageNet mean/std). A file
is recognised by its name, by a hub folder's config.json (timm's `pretrained_cfg.tag`), or by the `backbone`
that adapt records in the files it writes; anything else is unknown (None), never guessed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

# timm's tag -> what the name of a file holding those weights contains (lower case), in the order tried
NAME_PATTERNS = {
    "augreg_in21k": (r"augreg[_-]?in21k", r"b_16-i21k-300ep", r"augreg.*21k"),
    "orig_in21k": (r"orig[_-]?in21k", r"(^|/)vit-b_16\.npz$", r"imagenet21k"),
    "dino": (r"dino",),
}
DESCRIPTIONS = {"augreg_in21k": "AugReg ImageNet-21k (timm's vit_base_patch16_224.augreg_in21k, mean = std = 0.5)",
                "orig_in21k": "the original ImageNet-21k ViT-B_16.npz (timm's vit_base_patch16_224.orig_in21k, "
                              "ImageNet mean/std)",
                "dino": "DINO's ViT-B/16 (timm's vit_base_patch16_224.dino)"}  # fmt: skip


def weights_tag(weights: str | Path | None) -> str | None:
    """The timm tag of the published checkpoint these weights are (augreg_in21k, orig_in21k, ...), or None
    when neither the name nor the file says."""
    if weights is None:
        return None
    path = Path(weights).expanduser()
    text = str(path).lower()
    for tag, patterns in NAME_PATTERNS.items():
        if any(re.search(pattern, text) for pattern in patterns):
            return tag
    return _config_tag(path) if path.is_dir() else _metadata_tag(path)


def _config_tag(folder: Path) -> str | None:
    """A hub folder's timm tag (config.json: pretrained_cfg.tag, or a tagged architecture name)."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    cfg = config.get("pretrained_cfg")
    tag = cfg.get("tag") if isinstance(cfg, dict) else None
    architecture = config.get("architecture")
    if not tag and isinstance(architecture, str) and "." in architecture:
        tag = architecture.partition(".")[2]
    return tag if isinstance(tag, str) and tag else None


def _metadata_tag(file: Path) -> str | None:
    """The tag in the `backbone` name adapt records in a .safetensors it wrote (e.g. "vit_…_224.augreg_in21k")."""
    if file.suffix != ".safetensors" or not file.is_file():
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt") as handle:
            backbone = (handle.metadata() or {}).get("backbone", "")
    except (SafetensorError, OSError, ValueError):
        return None
    tag = backbone.partition(".")[2] if isinstance(backbone, str) else ""
    return tag or None


def weights_note(preset: str, expected: str, weights: str | Path | None, option: str = "weights") -> str | None:
    """One line when a preset runs on other weights than it was published with (or on weights that do not
    say which they are); None when they are the published ones. `option`: how the weights were given."""
    from adapt.errors import term

    found = weights_tag(weights)
    if found == expected:
        return None
    wanted = DESCRIPTIONS.get(expected, expected)
    seen = f"they look like {DESCRIPTIONS.get(found, found)}" if found else "they do not say which checkpoint they are"
    return (f"preset {preset} was published with {wanted}; {term(option)} {weights}: {seen}, so its numbers may not "
            "be comparable")
