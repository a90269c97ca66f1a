"""Gradient checkpointing: the same gradients and statistics as without it, less memory, clear refusals."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
from conftest import perturb_trainable
from safetensors.torch import load_file

from adapt import AdaptError
from adapt.adapted import AdaptedModel
from adapt.data import load_data
from adapt.merging.reparam import peak_extra_bytes
from adapt.methods.norms import statistics_kept
from adapt.train import TrainConfig
from adapt.tuning import TuneJob, tune

DATA = load_data("digits", 32, (0.5,) * 3, (0.5,) * 3, limit=64)


def _adapted(method: str, backbone: str = "tf_efficientnet_lite0", options: dict | None = None) -> AdaptedModel:
    weights = "random" if backbone == "test_vit" else None
    adapted = AdaptedModel.create(method, DATA.class_names, 32, backbone, weights, options,
                                  setup=(DATA, TrainConfig(batch_size=16)))  # fmt: skip
    torch.manual_seed(0)
    perturb_trainable(adapted.model, 0.05)  # as if trained: a wrong gradient shows
    return adapted


def _step(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict, dict]:
    """Loss, every gradient and every buffer after one forward and backward (statistics kept, as adapt.train does)."""
    model.train().zero_grad()
    torch.manual_seed(1)  # the same dropout masks in both runs
    loss = torch.nn.functional.cross_entropy(model(x), labels)
    with statistics_kept(model) if getattr(model, "grad_checkpointing", False) else nullcontext():
        loss.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads, {k: b.clone() for k, b in model.named_buffers()}


@pytest.mark.parametrize("method, backbone, options", [
    ("bitfit", "tf_efficientnet_lite0", {}), ("lora", "tf_efficientnet_lite0", {"rank": 2}),
    ("ssf", "tf_efficientnet_lite0", {}), ("spt", "tf_efficientnet_lite0", {"budget": "2%"}),
    ("full", "tf_efficientnet_lite0", {}), ("ssf", "test_vit", {}), ("lora", "test_vit", {"rank": 2}),
])  # fmt: skip
def test_checkpointed_blocks_give_the_same_gradients_and_statistics(method, backbone, options):
    adapted = _adapted(method, backbone, options)
    start = {k: b.clone() for k, b in adapted.model.named_buffers()}
    x, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 3, 5, 9])
    loss, grads, buffers = _step(adapted.model, x, labels)
    with torch.no_grad():
        for key, buffer in adapted.model.named_buffers():
            buffer.copy_(start[key])
    adapted.set_grad_checkpointing(True)
    checkpointed_loss, checkpointed_grads, checkpointed_buffers = _step(adapted.model, x, labels)
    torch.testing.assert_close(checkpointed_loss, loss, rtol=0, atol=1e-6)
    assert checkpointed_grads.keys() == grads.keys()
    for key, grad in grads.items():
        torch.testing.assert_close(checkpointed_grads[key], grad, rtol=0, atol=1e-6, msg=key)
    for key, buffer in buffers.items():  # full fine-tuning's running statistics moved once, not twice
        torch.testing.assert_close(checkpointed_buffers[key], buffer, rtol=0, atol=1e-6, msg=key)
    if method == "full":
        assert any(not torch.equal(buffers[k], start[k]) for k in buffers)  # the statistics did train


def test_statistics_would_count_the_batch_twice_without_being_kept():
    """What statistics_kept is for: without it, a checkpointed step moves full fine-tuning's statistics twice."""
    adapted = _adapted("full")
    adapted.set_grad_checkpointing(True)
    model = adapted.model.train()
    norm = model.bn1
    before = norm.num_batches_tracked.clone()
    torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3])).backward()
    assert int(norm.num_batches_tracked - before) == 1  # the stem is not checkpointed
    block_norm = model.blocks[1][0].bn1
    counted = block_norm.num_batches_tracked.clone()
    loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert int(block_norm.num_batches_tracked - counted) == 2
    counted = block_norm.num_batches_tracked.clone()
    loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    with statistics_kept(model):
        loss.backward()
    assert int(block_norm.num_batches_tracked - counted) == 1


def test_checkpointing_keeps_far_less_for_backward():
    """Measured 0.62: the peak moves into backward, where the largest block runs again (its expanded 48 x 48
    maps and their gradients)."""
    adapted = _adapted("ssf")
    x, labels = torch.randn(8, 3, 96, 96), torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])

    def step() -> None:
        torch.nn.functional.cross_entropy(adapted.model(x), labels).backward()

    plain = peak_extra_bytes(step)
    adapted.set_grad_checkpointing(True)
    checkpointed = peak_extra_bytes(step)
    assert checkpointed <= 0.7 * plain, (checkpointed, plain)


def test_a_checkpointed_run_trains_the_same_weights_and_statistics(tmp_path):
    job = TuneJob(data="digits", method="full", image_size=32, limit=48)
    plain = tune(job, TrainConfig(epochs=1, batch_size=16), tmp_path / "plain")
    checkpointed = tune(job, TrainConfig(epochs=1, batch_size=16, grad_checkpointing=True), tmp_path / "checkpointed")
    a, b = load_file(tmp_path / "plain" / "adapter.safetensors"), load_file(tmp_path / "checkpointed" / "adapter.safetensors")
    assert a.keys() == b.keys() and any(k.endswith("running_mean") for k in a)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-5, msg=key)  # 3 AdamW steps of 1e-6 differences
    assert checkpointed.test_acc == plain.test_acc


def test_methods_and_settings_that_cannot_checkpoint_say_why(monkeypatch):
    with pytest.raises(AdaptError, match="hst cannot use gradient checkpointing: its taps run"):
        _adapted("hst").set_grad_checkpointing(True)
    monkeypatch.setattr("timm.layers.config._USE_REENTRANT_CKPT", True)
    with pytest.raises(AdaptError, match="TIMM_REENTRANT_CKPT is on"):
        _adapted("ssf").set_grad_checkpointing(True)
