import timm
import torch

from adapt.backbones import RANDOM_WEIGHTS, create_backbone, is_head_key
from adapt.methods import METHODS, count_trainable, create_method
from adapt.methods.ssf import ScaleShift
from conftest import perturb_trainable


def test_ssf_on_vit_base_matches_the_paper_count():
    model = timm.create_model("vit_base_patch16_224", num_classes=0)
    method = create_method("ssf")
    method.apply(model)
    assert count_trainable(model) == 205_824
    wrapped = method.wrapped
    assert len(wrapped) == 1 + 12 * 6 + 1  # patch embed, 6 per block, final norm
    for name in ("patch_embed.proj", "blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.norm1",
                 "blocks.0.norm2", "blocks.0.mlp.fc1", "blocks.0.mlp.fc2", "norm"):  # fmt: skip
        assert name in wrapped, name
    assert "SSF after 74 layers" in method.report()


def test_ssf_on_lite0_goes_between_norm_and_activation():
    model, _ = create_backbone(num_classes=10)
    method = create_method("ssf")
    method.apply(model)
    assert set(method.wrapped.values()) == {"BatchNormAct2d (in its affine, one node with its frozen statistics and activation)"}
    assert isinstance(model.bn1.ssf, ScaleShift)
    # the SSF really runs before ReLU6: set it so that everything becomes negative
    with torch.no_grad():
        model.bn1.ssf.scale.zero_()
        model.bn1.ssf.shift.fill_(-1.0)
    model.eval()
    stem = model.bn1(model.conv_stem(torch.randn(1, 3, 32, 32)))
    assert torch.count_nonzero(stem) == 0


def test_ssf_works_on_other_timm_families():
    for name in ("test_resnet", "test_convnext"):
        model = timm.create_model(name, num_classes=4)
        method = create_method("ssf")
        method.apply(model)
        assert len(method.wrapped) > 5 and count_trainable(model) > 0
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 4)


def _one_step(method_name: str):
    model, _ = create_backbone(num_classes=10)
    method = create_method(method_name)
    method.apply(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()  # BatchNorm statistics stay frozen inside the model
    images, labels = torch.randn(8, 3, 32, 32), torch.arange(8) % 10
    torch.nn.functional.cross_entropy(model(images), labels).backward()
    optimizer.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    return model, method, changed


def test_after_a_step_only_method_parameters_and_head_moved():
    for name in ("ssf", "bitfit", "linear"):
        model, method, changed = _one_step(name)
        trainable = set(method.trainable_state(model))
        assert changed and changed <= trainable, (name, sorted(changed - trainable)[:5])
        assert any(is_head_key(model, k) for k in changed)
        # BatchNorm statistics stay the pretrained ones
        assert not any(k.endswith(("running_mean", "running_var")) for k in changed)
    _, _, changed = _one_step("ssf")
    assert all(".ssf." in k or k.startswith("classifier.") for k in changed)


def test_full_moves_backbone_weights_and_statistics():
    _, _, changed = _one_step("full")
    assert "conv_stem.weight" in changed and "bn1.running_mean" in changed


def test_trainable_state_roundtrip_for_every_method():
    for name in METHODS:
        source, _ = create_backbone("test_vit", RANDOM_WEIGHTS, num_classes=3, seed=0)
        method = create_method(name)
        source = method.apply(source)  # the adapted model (HST: a wrapper around the backbone)
        perturb_trainable(source, 1.0)
        target, _ = create_backbone("test_vit", RANDOM_WEIGHTS, num_classes=3, seed=0)
        target = create_method(name).apply(target)
        create_method(name).load_trainable_state(target, method.trainable_state(source))
        x = torch.randn(2, 3, 160, 160)
        source.eval(), target.eval()
        assert torch.equal(source(x), target(x)), name
