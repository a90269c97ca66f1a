"""peft's other tuners (DoRA, LoHa, LoKr, IA3, OFT, BOFT, VeRA): our merge is peft's merge, bit for bit, and
each exports as a peft folder that `PeftModel.from_pretrained` loads to the same outputs."""

import copy

import pytest
import timm
import torch

from adapt import AdaptError
from adapt.adapted import AdaptedModel
from adapt.backbones import RANDOM_WEIGHTS, classifier_prefixes, create_backbone
from adapt.methods import create_method
from adapt.methods.peft_tuners import PeftTuner
from adapt.peft_format import export_peft
from conftest import perturb_trainable

TUNERS = ["dora", "loha", "lokr", "ia3", "oft", "boft", "vera"]
ON_LITE0 = ["dora", "loha", "lokr", "ia3", "oft", "boft"]  # VeRA: peft has it for Linear layers only


def _peft_merge(backbone, method: PeftTuner, ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """peft's own path: get_peft_model with the same config, our trained tensors in, merge_and_unload."""
    from peft import get_peft_model

    config = method.peft_config()
    config.modules_to_save = list(classifier_prefixes(backbone))
    peft_model = get_peft_model(backbone, config, adapter_name="default")
    with torch.no_grad():
        for key, parameter in peft_model.named_parameters():
            if parameter.requires_grad:
                ours_key = key.removeprefix("base_model.model.").replace(".modules_to_save.default.", ".")
                parameter.copy_(ours[ours_key])
    return peft_model.merge_and_unload().state_dict()


@pytest.mark.parametrize("backbone, name", [("test_vit", n) for n in TUNERS] + [("tf_efficientnet_lite0", n) for n in ON_LITE0])
def test_our_merge_is_peft_merge_and_unload_bitwise(backbone, name):
    size = 160 if backbone == "test_vit" else 64
    model, _ = create_backbone(backbone, RANDOM_WEIGHTS, 3, size if backbone != "test_vit" else None, seed=0)
    method = create_method(name)
    model = method.apply(model)
    perturb_trainable(model, 0.05)  # every tuner starts as the identity: move it
    trained = {k: v.clone() for k, v in method.trainable_state(model).items()}
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        adapted_out = model(x)
        merged = method.merge(copy.deepcopy(model))
        merged_out = merged(x)
    assert (adapted_out - merged_out).abs().max() <= 1e-5 * max(1.0, adapted_out.abs().max().item())
    fresh, _ = create_backbone(backbone, RANDOM_WEIGHTS, 3, size if backbone != "test_vit" else None, seed=0)
    theirs = _peft_merge(fresh, method, trained)
    ours = merged.state_dict()
    assert set(ours) == set(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours), [k for k in ours if not torch.equal(ours[k], theirs[k])][:3]
    assert set(ours) == set(timm.create_model(backbone, num_classes=3, pretrained=False).state_dict())  # plain timm again


def test_tuners_that_cannot_take_a_backbone_say_why_in_a_line():
    model, _ = create_backbone("tf_efficientnet_lite0", RANDOM_WEIGHTS, 3, 64)
    with pytest.raises(AdaptError, match="peft's vera adapts Linear layers, and there are none outside the head"):
        create_method("vera").apply(model)
    model, _ = create_backbone("tf_efficientnet_lite0", RANDOM_WEIGHTS, 3, 64)
    oft = create_method("oft")
    oft.apply(model)
    assert oft.left_out and "do not fit the block size" in oft.report()  # 16-, 24-, 40-channel inputs vs blocks of 32


@pytest.mark.parametrize("name", TUNERS)
def test_tuner_exports_load_in_peft_with_identical_outputs(tmp_path, name):
    from peft import PeftModel

    adapted = AdaptedModel.create(name, ["a", "b", "c"], 160, "test_vit", "random", seed=0)
    perturb_trainable(adapted.model, 0.05)
    adapted.save(tmp_path / "adapter.safetensors")
    folder = export_peft(tmp_path / "adapter.safetensors", tmp_path / "peft")
    base = timm.create_model(f"local-dir:{folder / 'base'}", pretrained=True)
    peft_model = PeftModel.from_pretrained(base, str(folder)).eval()
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        assert torch.equal(peft_model(x), adapted.model.eval()(x))


def test_tuner_options_are_peft_options():
    loha = create_method("loha", {"r": 4, "alpha": 2, "module_dropout": 0.1})
    model, _ = create_backbone("test_vit", RANDOM_WEIGHTS, 3)
    loha.apply(model)
    config = loha.peft_config()
    assert (config.r, config.alpha, config.module_dropout) == (4, 2, 0.1)
    dora = create_method("dora", {"rank": 4})
    dora.apply(create_backbone("test_vit", RANDOM_WEIGHTS, 3)[0])
    assert dora.peft_config().use_dora and dora.peft_config().r == 4
    with pytest.raises(AdaptError, match="rank_dropout"):
        create_method("lokr", {"rank_dropout": 1.5})


def test_an_ia3_soup_is_the_mean_of_the_merged_models(tmp_path):
    """(IA)³ scales weights by its vectors, W * l, which is linear in l: its soup averages the vectors."""
    from adapt.merging.adapter_soup import make_soup
    from adapt.merging.recipes import Uniform
    from adapt.merging.reparam import merge_adapted

    merged = []
    for i in range(2):
        adapted = AdaptedModel.create("ia3", ["a", "b", "c"], 160, "test_vit", "random", seed=0)
        torch.manual_seed(i)
        perturb_trainable(adapted.model, 0.1)
        adapted.save(tmp_path / f"ia3-{i}.safetensors")
        merged.append(merge_adapted(adapted)[0].state_dict())
    summary = make_soup([tmp_path / f"ia3-{i}.safetensors" for i in range(2)], tmp_path / "soup.safetensors", Uniform())
    assert summary.kind == "adapters"
    soup, _ = AdaptedModel.from_checkpoint(tmp_path / "soup.safetensors")
    souped = merge_adapted(soup)[0].state_dict()
    for key, tensor in souped.items():
        assert torch.allclose(tensor, (merged[0][key] + merged[1][key]) / 2, atol=1e-6), key
