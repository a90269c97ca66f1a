"""Merging: folded models equal the adapted ones, load into plain timm, and stay in place."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from adapt.adapted import AdaptedModel
from adapt.data import load_data
from adapt.kernels import add_low_rank_, fold_batchnorm_, scale_shift_
from adapt.merging.reparam import AllocationTracker, merge_adapted, peak_extra_bytes, save_merged
from adapt.methods import METHODS
from adapt.methods.peft_tuners import PeftTuner
from adapt.train import TrainConfig
from adapt.tuning import TuneJob, tune

TOLERANCE = 1e-4  # max |logit difference| in fp32
MERGEABLE = [name for name, cls in METHODS.items() if cls.mergeable]
SIZED_BY_BACKBONE = [name for name in MERGEABLE if not METHODS[name].budgeted]  # spt has its own ViT test
# trained on Lite0 and merged: our own folds, and DoRA for peft's (test_peft_tuners checks each peft merge bitwise)
TRAINED_ON_LITE0 = [name for name in MERGEABLE if not issubclass(METHODS[name], PeftTuner)] + ["dora"]


def _perturbed_vit(method: str) -> AdaptedModel:
    adapted = AdaptedModel.create(method, ["a", "b", "c"], 160, "test_vit", "random", seed=0)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in adapted.model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=generator))
    adapted.model.eval()
    return adapted


@pytest.mark.parametrize("method", SIZED_BY_BACKBONE)
def test_merge_is_exact_on_a_tiny_vit(method):
    adapted = _perturbed_vit(method)
    x = torch.randn(4, 3, 160, 160, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = adapted.model(x)
        merged, report = merge_adapted(adapted)
        after = merged(x)
    assert (before - after).abs().max() <= TOLERANCE
    assert not [k for k in merged.state_dict() if ".ssf." in k or "lora_" in k or "base_layer" in k]
    # our folds work in place (2 tensors at most); peft's own merge builds its delta and, for DoRA, the norms: more
    temporaries = 8 if issubclass(METHODS[method], PeftTuner) else 2
    assert report.peak_extra_bytes <= temporaries * report.largest_tensor_bytes


@pytest.fixture(scope="module")
def trained_lite0(tmp_path_factory):
    """Each mergeable method after a few real training steps on digits (Lite0, 48 px)."""
    out = tmp_path_factory.mktemp("trained")
    for method in TRAINED_ON_LITE0:
        budget = {"budget": "20k", "sensitivity_batches": 2, "sensitivity_batch_size": 16}
        job = TuneJob(method=method, image_size=48, limit=96, options=budget if METHODS[method].budgeted else None)
        tune(job, TrainConfig(epochs=1, batch_size=16, lr=1e-2), out / method)
    return out


@pytest.mark.parametrize("method", TRAINED_ON_LITE0)
def test_merge_is_exact_on_lite0_after_training(trained_lite0, method):
    adapted, _ = AdaptedModel.from_checkpoint(trained_lite0 / method / "adapter.safetensors")
    test = load_data("digits", 48, adapted.mean, adapted.std).test
    images = torch.stack([test[i][0] for i in range(len(test))])
    model = adapted.model.eval()
    with torch.no_grad():
        before = model(images)
        merged, _ = merge_adapted(adapted)
        after = merged(images)
    assert (before - after).abs().max() <= TOLERANCE
    assert torch.equal(before.argmax(-1), after.argmax(-1))


def test_fold_bn_keeps_outputs(trained_lite0):
    adapted, _ = AdaptedModel.from_checkpoint(trained_lite0 / "ssf" / "adapter.safetensors")
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        before = adapted.model.eval()(x)
        merged, report = merge_adapted(adapted, fold_bn=True)
        after = merged(x)
    assert report.batchnorms_folded == 49
    assert (before - after).abs().max() <= TOLERANCE
    assert torch.all(merged.bn1.running_mean == 0) and torch.all(merged.bn1.weight == 1)


SUBPROCESS_LOAD = """
import json, sys, torch
# the environment's torchvision fix (see adapt/_compat.py), without importing adapt:
lib = torch.library.Library("torchvision", "FRAGMENT")
for op in ("nms", "qnms"):
    lib.define(op + "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
import timm
from safetensors.torch import load_file
name, classes, path, inputs = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
model = timm.create_model(name, num_classes=classes).eval()
model.load_state_dict(load_file(path))  # strict
with torch.no_grad():
    logits = model(load_file(inputs)["x"])
assert "adapt" not in sys.modules
print(json.dumps(logits.tolist()))
"""


@pytest.mark.parametrize("method", ["ssf", "lora"])
def test_merged_file_loads_into_plain_timm_without_adapt(trained_lite0, tmp_path, method):
    from safetensors.torch import save_file

    adapted, _ = AdaptedModel.from_checkpoint(trained_lite0 / method / "adapter.safetensors")
    x = torch.randn(3, 3, 48, 48)
    save_file({"x": x}, tmp_path / "x.safetensors")
    with torch.no_grad():
        expected = adapted.model.eval()(x)
    merged, _ = merge_adapted(adapted)
    save_merged(tmp_path / "merged.safetensors", merged, adapted)
    command = [sys.executable, "-c", SUBPROCESS_LOAD, "tf_efficientnet_lite0", "10",
               str(tmp_path / "merged.safetensors"), str(tmp_path / "x.safetensors")]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    logits = torch.tensor(json.loads(result.stdout))
    assert (logits - expected).abs().max() <= TOLERANCE


def test_kernels_match_their_formulas_and_work_in_place():
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(64, 32, 3, 3, generator=g)
    b, a = torch.randn(64, 4, generator=g), torch.randn(4, 32 * 9, generator=g)
    expected = weight + 0.5 * (b @ a).view(64, 32, 3, 3)
    pointer = weight.data_ptr()
    assert peak_extra_bytes(lambda: add_low_rank_(weight, b, a, 0.5)) == 0
    assert weight.data_ptr() == pointer and torch.allclose(weight, expected, atol=1e-5)

    linear = torch.nn.Linear(8, 6)
    scale, shift = torch.randn(6, generator=g), torch.randn(6, generator=g)
    x = torch.randn(5, 8, generator=g)
    with torch.no_grad():
        expected = scale * linear(x) + shift
        assert peak_extra_bytes(lambda: scale_shift_(linear.weight, linear.bias, scale, shift)) == 0
        assert torch.allclose(linear(x), expected, atol=1e-6)

    conv, bn = torch.nn.Conv2d(3, 4, 3, bias=False), torch.nn.BatchNorm2d(4).eval()
    with torch.no_grad():
        bn.running_mean.normal_(generator=g), bn.running_var.uniform_(0.5, 2, generator=g)
        bn.weight.normal_(generator=g), bn.bias.normal_(generator=g)
        x = torch.randn(2, 3, 8, 8, generator=g)
        expected = bn(conv(x))
        fold_batchnorm_(conv.weight.data, bn)
        assert torch.allclose(bn(conv(x)), expected, atol=1e-5)


def test_merge_cli_reports_and_writes(trained_lite0, tmp_path):
    from click.testing import CliRunner

    from adapt.cli import cli

    out = tmp_path / "merged.safetensors"
    result = CliRunner().invoke(cli, ["merge", str(trained_lite0 / "bitfit" / "adapter.safetensors"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "peak extra memory" in result.output and "ms" in result.output
    assert len(load_file(out)) == 296


TRITON_CHECK = """
import torch
from adapt.kernels.fused_triton import scale_add_low_rank_
g = torch.Generator().manual_seed(0)
for shape, rank in [((100, 70), 8), ((64, 32, 3, 3), 4), ((130, 200), 20)]:
    w = torch.randn(*shape, generator=g)
    b, a = torch.randn(shape[0], rank, generator=g), torch.randn(rank, w[0].numel(), generator=g)
    s = torch.randn(shape[0], generator=g)
    rows = w.view(shape[0], -1)
    cases = [(s, b, a, s[:, None] * (rows + 0.5 * b @ a)), (None, b, a, rows + 0.5 * b @ a), (s, None, None, s[:, None] * rows)]
    for scale, bb, aa, expected in cases:
        out = w.clone()
        scale_add_low_rank_(out, scale, bb, aa, 0.5)
        assert torch.allclose(out.view(shape[0], -1), expected, atol=1e-4), (shape, scale is None, bb is None)
        assert not torch.equal(out, w)
print("ok")
"""


def test_triton_kernel_in_the_interpreter():
    pytest.importorskip("triton")
    env = {**__import__("os").environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", TRITON_CHECK], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_the_memory_count_follows_storages_that_autograd_keeps():
    """A custom Function's output saved for backward lives in autograd after its tensor object is
    gone: it must still count, until backward frees it."""

    class Doubled(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            y = x * 2
            ctx.save_for_backward(y)
            return y

        @staticmethod
        def backward(ctx, grad):
            (y,) = ctx.saved_tensors
            return grad * (y != 0)

    x = torch.randn(10_000, requires_grad=True)
    size = x.numel() * x.element_size()
    losses, live_after_backward = [], []

    def work():
        loss = Doubled.apply(x).sum()  # the output tensor object dies here; its storage is saved
        filler = torch.ones(10_000)  # allocated while the saved output lives
        losses.append(loss + filler.sum())
        del filler
        losses[-1].backward()

    with AllocationTracker() as tracker:
        work()
        live_after_backward.append(tracker.live)
    assert tracker.peak >= 2 * size  # the saved output and the filler at once
    assert live_after_backward[0] < 2 * size  # backward freed the saved output; x.grad and scalars remain
