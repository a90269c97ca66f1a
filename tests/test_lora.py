"""LoRA through peft: targets, training, and the peft folder layout both ways."""

import json
import os

import pytest
import timm
import torch

from adapt import AdaptError
from adapt.adapted import AdaptedModel
from adapt.backbones import create_backbone
from adapt.methods import create_method
from adapt.peft_format import export_peft, import_peft
from conftest import perturb_trainable


def test_default_targets_on_a_vit_and_on_lite0():
    vit = timm.create_model("vit_base_patch16_224", num_classes=0)
    method = create_method("lora", {"rank": 8})
    method.apply(vit)
    assert len(method.targets) == 48 and all(t.rsplit(".", 1)[-1] in {"qkv", "proj", "fc1", "fc2"} for t in method.targets)
    # rank 8: qkv 8*(768+2304), proj 8*1536, fc1 8*(768+3072), fc2 8*(3072+768), per block
    assert sum(p.numel() for p in vit.parameters() if p.requires_grad) == 12 * 8 * (3072 + 1536 + 3840 + 3840)

    lite0, _ = create_backbone(num_classes=10)
    method = create_method("lora")
    method.apply(lite0)
    assert "conv_head" in method.targets and "conv_stem" not in method.targets  # Conv2dSame is left out
    assert not [t for t in method.targets if "conv_dw" in t]  # depthwise (groups > 1) too


def test_options_and_targets_regex():
    vit, _ = create_backbone("test_vit", "random", num_classes=3)
    method = create_method("lora", {"rank": 2, "alpha": 4, "dropout": 0.1, "targets": r"attn\.qkv$"})
    method.apply(vit)
    assert method.targets == [f"blocks.{i}.attn.qkv" for i in range(len(vit.blocks))]
    assert vit.blocks[0].attn.qkv.scaling["default"] == 2.0
    with pytest.raises(AdaptError, match="LoRA found no target layers"):
        create_method("lora", {"targets": "nothing-matches"}).apply(create_backbone("test_vit", "random", num_classes=3)[0])


def _trained_lora_checkpoint(tmp_path):
    adapted = AdaptedModel.create("lora", ["a", "b", "c"], 160, "test_vit", "random", {"rank": 4})
    perturb_trainable(adapted.model, 0.1)
    path = tmp_path / "lora.safetensors"
    adapted.save(path)
    return adapted, path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_peft_export_loads_in_peft_with_identical_outputs(tmp_path):
    from peft import PeftModel

    adapted, path = _trained_lora_checkpoint(tmp_path)
    exported = export_peft(path, tmp_path / "peft", command="adapt export-peft lora.safetensors --out peft")
    folder = tmp_path / "moved"
    exported.rename(folder)  # an export still works once moved (or uploaded)
    assert {"adapter_config.json", "adapter_model.safetensors", "base", "README.md"} <= {p.name for p in folder.iterdir()}
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "base"  # relative to the folder
    card = (folder / "README.md").read_text()
    assert "More Information Needed" not in card and "adapt export-peft lora.safetensors --out peft" in card
    trained = sum(t.numel() for t in adapted.method.trainable_state(adapted.model).values())
    assert f"| trained values | {trained:,} |" in card and "| method | lora" in card
    meta = json.loads((folder / "adapt.json").read_text())
    assert isinstance(meta["class_names"], list) and isinstance(meta["method_options"], dict)  # plain JSON values
    for file in (folder / "adapter_model.safetensors", folder / "base" / "model.safetensors"):
        assert file.stat().st_mode & 0o777 == 0o666 & ~_umask(), file  # not mkstemp's 0600
    # the documented recipe, with timm alone building the base from the exported hub folder
    base = timm.create_model(f"local-dir:{folder / config['base_model_name_or_path']}", pretrained=True)
    peft_model = PeftModel.from_pretrained(base, str(folder)).eval()
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        assert torch.equal(peft_model(x), adapted.model.eval()(x))


def test_peft_export_loads_from_any_working_directory_without_the_network(tmp_path, monkeypatch):
    """Export in one folder and load from another, with every network lookup made to fail loudly and peft's
    offline switch off (so that peft would try): no lookup is made, and the model card's recipe gives our outputs."""
    import socket
    import warnings

    import huggingface_hub
    import peft.utils.other
    from peft import PeftModel

    def no_network(*args, **kwargs):
        raise AssertionError(f"a network lookup was made: {args[:2]}")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for module, name in ((peft.utils.other, "file_exists"), (huggingface_hub, "file_exists"),
                         (huggingface_hub, "hf_hub_download"), (socket.socket, "connect")):  # fmt: skip
        monkeypatch.setattr(module, name, no_network)
    adapted, path = _trained_lora_checkpoint(tmp_path)
    (tmp_path / "here").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_peft(path, "exported")
    assert not [w for w in caught if "fetch" in str(w.message) or "config file" in str(w.message)], caught
    monkeypatch.chdir(tmp_path / "elsewhere")  # where a folder named base/ does not exist
    card = (tmp_path / "here" / "exported" / "README.md").read_text()
    recipe = card.split("```python\n", 1)[1].split("```", 1)[0]
    assert "base_model_name_or_path" in card and str(tmp_path / "here" / "exported") in recipe
    scope: dict = {}
    exec(recipe, scope)  # the card's own recipe
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        assert torch.equal(scope["model"].eval()(x), adapted.model.eval()(x))
    assert isinstance(scope["model"], PeftModel)
    assert json.loads((tmp_path / "here" / "exported" / "adapter_config.json").read_text())["base_model_name_or_path"] == "base"


def test_peft_folder_imports_back(tmp_path):
    adapted, path = _trained_lora_checkpoint(tmp_path)
    folder = export_peft(path, tmp_path / "peft")
    import_peft(folder, tmp_path / "back.safetensors")
    back, meta = AdaptedModel.from_checkpoint(tmp_path / "back.safetensors")
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        assert torch.equal(back.model.eval()(x), adapted.model.eval()(x))
    assert meta.training["imported_from"] == str(folder)

    (folder / "adapt.json").unlink()  # another tool's folder: the backbone must be named
    with pytest.raises(AdaptError, match="pass backbone"):
        import_peft(folder, tmp_path / "x.safetensors")
    import_peft(folder, tmp_path / "named.safetensors", backbone="test_vit", weights="random")
    named, _ = AdaptedModel.from_checkpoint(tmp_path / "named.safetensors")
    with torch.no_grad():
        assert torch.equal(named.model.eval()(x), adapted.model.eval()(x))
    with pytest.raises(AdaptError, match="not a peft adapter folder"):
        import_peft(tmp_path, tmp_path / "y.safetensors")


def test_export_refuses_other_methods(tmp_path):
    adapted = AdaptedModel.create("ssf", ["a", "b"], 160, "test_vit", "random")
    adapted.save(tmp_path / "ssf.safetensors")
    with pytest.raises(AdaptError, match="only peft's tuners"):
        export_peft(tmp_path / "ssf.safetensors", tmp_path / "out")
