"""Lean and fast: frozen layers that keep nothing they do not need, the shipped `adapt methods` table,
the module layering, hub folders written once."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import safetensors.torch
import timm
import torch
from click.testing import CliRunner
from conftest import saved_bytes

import adapt.hub
from adapt.adapted import AdaptedModel
from adapt.backbones import create_backbone
from adapt.cli import cli
from adapt.data import load_data
from adapt.hub import save_hub_folder
from adapt.kernels.frozen_batchnorm import frozen_batchnorm_act
from adapt.merging.reparam import AllocationTracker, peak_extra_bytes
from adapt.methods import METHODS, create_method, method_rows
from adapt.methods.lean import LeanResidualBlock, without_lean_layers
from adapt.methods.mixins import without_mixin
from adapt.methods.rows_cache import SHIPPED, SHIPPED_FOR
from adapt.train_config import TrainConfig


def test_the_shipped_methods_table_is_what_the_methods_count():
    shipped = json.loads(SHIPPED.read_text())
    fresh = [dataclasses.asdict(row) for row in method_rows(list(METHODS), **SHIPPED_FOR)]
    assert shipped == fresh, (
        "adapt/methods/default_rows.json is stale: regenerate it with python -c 'import adapt; from adapt.methods import "
        "METHODS; from adapt.methods.rows_cache import write_shipped_rows; write_shipped_rows(list(METHODS))'"
    )


def test_a_cold_methods_call_on_the_default_backbone_imports_no_torch(tmp_path):
    code = ("import sys, os; os.environ['ADAPT_CACHE_DIR'] = sys.argv[1]; from adapt.cli import cli; "
            "from click.testing import CliRunner; result = CliRunner().invoke(cli, ['methods']); "
            "print(result.exit_code, 'torch' in sys.modules, 'ssf' in result.output and 'spt' in result.output)")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "empty-cache")], capture_output=True, text=True,
                            timeout=60)  # fmt: skip
    assert result.stdout.split() == ["0", "False", "True"], result.stdout + result.stderr
    assert not (tmp_path / "empty-cache").exists()  # nothing built, nothing kept


def test_another_backbone_says_that_it_builds(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPT_CACHE_DIR", str(tmp_path))
    first = CliRunner().invoke(cli, ["methods", "--backbone", "test_vit", "--num-classes", "3"])
    assert first.exit_code == 0 and "counting each method's parameters on test_vit" in first.output
    again = CliRunner().invoke(cli, ["methods", "--backbone", "test_vit", "--num-classes", "3"])
    assert "counting" not in again.output


def test_evaluation_does_not_import_the_training_loop():
    code = "import sys, adapt.evaluation; print('adapt.train' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False", result.stdout + result.stderr


def test_a_hub_folder_writes_its_weights_once(tmp_path, monkeypatch):
    writes = []
    original = adapt.hub.save_tensors_atomic

    def counted(path, *args, **kwargs):
        writes.append(str(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(adapt.hub, "save_tensors_atomic", counted)
    monkeypatch.setattr(safetensors.torch, "save_file", lambda *a, **k: writes.append("timm's copy"))
    model, _ = create_backbone("test_vit", "random", num_classes=3)
    folder = save_hub_folder(tmp_path / "hub", model, ["a", "b", "c"], 224, (0.5,) * 3, (0.5,) * 3, {"k": "v"})
    assert len(writes) == 1 and writes[0].endswith("model.safetensors")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((folder / "config.json").read_text())["label_names"] == ["a", "b", "c"]


def _loss_and_grads(model, x, labels):
    model.zero_grad()
    torch.manual_seed(1)  # the same dropout masks (SPT's structured dropout) in both passes
    x = x.clone().requires_grad_(True)  # the input's gradient too: the first norm's grad_x path
    loss = torch.nn.functional.cross_entropy(model(x), labels)
    loss.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), {**grads, "input": x.grad}


@pytest.mark.parametrize("method_name, options", [("linear", {}), ("bitfit", {}), ("lora", {"rank": 2}), ("ssf", {}),
                                                   ("spt", {"budget": "2%"}), ("repadapter", {"dropout": 0.0}),
                                                   ("dora", {"rank": 2}), ("ia3", {})])  # fmt: skip
def test_lean_frozen_layers_equal_the_plain_layers(method_name, options):
    """Forward and every gradient equal the layers' own forward (eval-mode BatchNorm + in-place ReLU6)."""

    data = load_data("digits", 32, (0.5,) * 3, (0.5,) * 3, limit=64)
    setup = (data, TrainConfig(batch_size=16))
    adapted = AdaptedModel.create(method_name, data.class_names, 32, "tf_efficientnet_lite0", options=options, setup=setup)
    model = adapted.model.train()
    with torch.no_grad():  # as if trained: trained affines far from their start, so a wrong gradient shows
        for name, parameter in model.named_parameters():
            if parameter.requires_grad:
                parameter.add_(0.05 * torch.randn_like(parameter))
    torch.manual_seed(0)
    x, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 3, 5, 9])
    loss, grads = _loss_and_grads(model, x, labels)
    without_lean_layers(model)  # each layer's own forward (SPT's parametrized norms keep theirs)
    ref_loss, ref_grads = _loss_and_grads(model, x, labels)
    torch.testing.assert_close(loss, ref_loss, rtol=0, atol=1e-6)
    assert grads.keys() == ref_grads.keys()
    for key, grad in grads.items():  # float32 sums in another order: 1e-6 absolute (1e-5 of a large gradient's scale)
        error = float((grad - ref_grads[key]).abs().max())
        assert error <= max(1e-6, 1e-5 * float(ref_grads[key].abs().max())), (key, error)


def test_lean_batchnorm_with_a_zero_trained_weight_keeps_its_input():
    norm = torch.nn.BatchNorm2d(6).eval()
    with torch.no_grad():
        norm.running_mean.normal_(), norm.running_var.uniform_(0.5, 2), norm.bias.normal_()
        norm.weight.normal_()
        norm.weight[:2] = 0.0
    x = torch.randn(3, 6, 5, 5)
    y = frozen_batchnorm_act(x, norm, norm.weight, norm.bias, (0.0, 6.0))
    y.square().sum().backward()
    grads = norm.weight.grad.clone(), norm.bias.grad.clone()
    norm.zero_grad()
    torch.nn.functional.relu6(norm(x)).square().sum().backward()
    torch.testing.assert_close(y, torch.nn.functional.relu6(norm(x)), rtol=0, atol=1e-6)
    torch.testing.assert_close(grads[0], norm.weight.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[1], norm.bias.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("activation", [(0.0, 6.0), (None, None)])
def test_a_trained_batchnorm_backward_allocates_no_map_beyond_its_input_gradient(activation):
    """The scale's gradient is a dot product per channel (no g * y map), and a masked gradient becomes the input
    gradient in place: backward allocates one map, the input gradient, and a few vectors. Gradients exact."""
    torch.manual_seed(0)
    norm = torch.nn.BatchNorm2d(16).eval()
    with torch.no_grad():
        norm.running_var.uniform_(0.5, 2), norm.weight.uniform_(0.5, 1.5), norm.bias.normal_()
    x = torch.randn(8, 16, 24, 24, requires_grad=True)
    grad = torch.randn(8, 16, 24, 24)
    y = frozen_batchnorm_act(x, norm, norm.weight, norm.bias, activation)
    peak = peak_extra_bytes(lambda: y.backward(grad))
    assert x.numel() * 4 <= peak <= x.numel() * 4 + 4096, peak
    lean = [t.grad.clone() for t in (x, norm.weight, norm.bias)]
    for t in (x, norm.weight, norm.bias):
        t.grad = None
    reference = norm(x)
    (reference.clamp(*activation) if activation[0] is not None else reference).backward(grad)
    # the scale's and shift's gradients sum 4,608 float32 products each, in another order than torch's: 1e-4
    for ours, theirs, tolerance in zip(lean, (x.grad, norm.weight.grad, norm.bias.grad), (1e-5, 1e-4, 1e-4)):
        torch.testing.assert_close(ours, theirs, rtol=tolerance, atol=tolerance)


def _block_run(block, x, grad):
    """(bytes the forward left alive, the input's and the trained parameters' gradients)."""
    x = x.clone().requires_grad_(True)
    with AllocationTracker() as tracker:
        out = block(x)
        alive = tracker.live
    out.backward(grad)
    return alive, [x.grad] + [p.grad for p in block.parameters() if p.requires_grad]


def test_a_residual_blocks_last_norm_keeps_no_output_and_its_gradients_stay_exact():
    """SSF trains every norm's scale; in a block with a skip the projection norm (no activation) keeps nothing:
    its output is recovered as the block's sum minus its input, which stay alive anyway."""
    model, _ = create_backbone(num_classes=5)
    create_method("ssf").apply(model)
    block = model.blocks[1][1].train()
    assert block.has_skip and isinstance(block, LeanResidualBlock)
    with torch.no_grad():
        for parameter in block.parameters():
            if parameter.requires_grad:
                parameter.add_(0.05 * torch.randn_like(parameter))
    x, grad = torch.randn(4, 24, 12, 12), torch.randn(4, 24, 12, 12)
    lean_alive, lean_grads = _block_run(block, x, grad)
    for parameter in block.parameters():
        parameter.grad = None
    without_mixin(block, LeanResidualBlock)
    plain_alive, plain_grads = _block_run(block, x, grad)
    assert plain_alive - lean_alive == x.numel() * 4  # the norm's output, one map
    for ours, theirs in zip(lean_grads, plain_grads, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_a_residual_sum_changed_in_place_is_refused_in_backward():
    model, _ = create_backbone(num_classes=5)
    create_method("ssf").apply(model)
    block = model.blocks[1][1].train()
    out = block(torch.randn(2, 24, 8, 8, requires_grad=True))
    out.mul_(2)
    with pytest.raises(RuntimeError, match="modified in place"):
        out.sum().backward()


def test_a_residual_blocks_recovered_output_serves_a_retained_second_backward():
    model, _ = create_backbone(num_classes=5)
    create_method("ssf").apply(model)
    block = model.blocks[1][1].train()
    x = torch.randn(2, 24, 8, 8, requires_grad=True)
    loss = block(x).square().sum()
    loss.backward(retain_graph=True)
    first = x.grad.clone()
    x.grad = None
    loss.backward()
    torch.testing.assert_close(x.grad, first, rtol=0, atol=0)


@pytest.mark.parametrize("method_name", ["bitfit", "lora"])  # linear: nothing below the head keeps anything
def test_lean_frozen_layers_keep_far_less_for_backward(method_name):
    """Frozen BatchNorm + ReLU6 keep only their output, frozen convs nothing: well under the plain layers'."""

    model, _ = create_backbone(num_classes=5)
    create_method(method_name).apply(model)
    model.train()
    x = torch.randn(4, 3, 64, 64)
    lean = saved_bytes(model, x)
    without_lean_layers(model)
    plain = saved_bytes(model, x)
    assert lean <= 0.6 * plain, (lean, plain)


def test_merged_files_stay_plain_timm_state_dicts():
    for name in ("bitfit", "lora", "linear"):
        model, _ = create_backbone(num_classes=4)
        method = create_method(name)
        method.apply(model)
        merged = method.merge(model)
        fresh = timm.create_model("tf_efficientnet_lite0", num_classes=4)
        fresh.load_state_dict(merged.state_dict(), strict=True)  # num_batches_tracked included
        assert [type(m) for m in merged.modules()] == [type(m) for m in fresh.modules()]
