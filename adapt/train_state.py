"""What resuming a run needs, in one self-contained safetensors file (OUT/train_state.safetensors).

The trained tensors, the optimizer's state (its tensors as tensors, the rest as JSON), the
schedule, the RNG state, the history so far, and the run's identity: what must not change
between an interrupted run and its resumption (method, options, backbone, data, settings).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from adapt.checkpoint import read_tensors, save_tensors_atomic
from adapt.errors import AdaptError

STATE_FILE = "train_state.safetensors"


def _optimizer_tensors(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into tensors (for safetensors) and the JSON rest."""
    tensors = {}
    for index, slots in state["state"].items():
        for slot, value in slots.items():
            tensors[f"optimizer.{index}.{slot}"] = value
    return tensors, {"param_groups": state["param_groups"]}


def _optimizer_state(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        _, index, slot = key.split(".", 2)
        state.setdefault(int(index), {})[slot] = value
    return {"state": state, "param_groups": rest["param_groups"]}


def save_train_state(
    path: Path,
    trainable: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    identity: dict[str, Any],
    epoch: int,
    history: list[dict[str, Any]],
) -> None:
    """Everything `restore_train_state` needs to continue after `epoch`, written atomically."""
    optimizer_tensors, optimizer_rest = _optimizer_tensors(optimizer.state_dict())
    metadata = {
        "run": json.dumps(identity),
        "epoch": str(epoch),
        "history": json.dumps(history),
        "optimizer": json.dumps(optimizer_rest),
        "scheduler": json.dumps(scheduler.state_dict()),
    }
    tensors = {**{f"model.{k}": v for k, v in trainable.items()}, **optimizer_tensors, "rng.torch": torch.get_rng_state()}
    save_tensors_atomic(path, tensors, metadata)


EXTENDABLE = ("epochs",)  # settings of `train` a resumed run may raise (adapt tune --resume --epochs MORE)


# settings added after the first train states, at the values those states were trained with
LATER_SETTINGS = {"cooldown_epochs": 0, "warmup_lr": 0.0, "min_lr": 0.0, "eval_every": None, "label_smoothing": 0.0,
                  "drop_last": False, "lr_stepping": "step", "eval_from": None, "eval_last": 0}


def changed_settings(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between a saved run's identity and this run's, one "KEY was A, now B" each."""
    return [f"{k} was {saved.get(k)!r}, now {now[k]!r}" for k in now if saved.get(k) != now[k]]


def _fixed(identity: dict[str, Any]) -> dict[str, Any]:
    """The identity without what a resumption may change (older states: with the later settings' values, and
    method options added since at their defaults)."""
    train = {k: v for k, v in {**LATER_SETTINGS, **identity.get("train", {})}.items() if k not in EXTENDABLE}
    return {**identity, "train": train, "method_options": {**_option_defaults(identity.get("method")),
                                                           **identity.get("method_options", {})}}  # fmt: skip


def _option_defaults(method: Any) -> dict[str, Any]:
    """A method's options at their defaults ({} for a method not known here)."""
    from adapt.methods import METHODS

    try:
        return METHODS[method]().options() if method in METHODS else {}
    except AdaptError:  # a method whose defaults alone are not a valid configuration
        return {}


def saved_epochs(path: Path) -> tuple[int, int | None]:
    """(epochs finished, epochs planned) of a saved train state, from its metadata alone; (0, None) when
    there is none or it cannot be read (restore_train_state then says why)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        planned = json.loads(metadata.get("run", "{}")).get("train", {}).get("epochs")
        return int(metadata.get("epoch", 0)), planned if isinstance(planned, int) else None
    except (SafetensorError, OSError, ValueError, AttributeError):
        return 0, None


def restore_train_state(
    path: Path, optimizer: torch.optim.Optimizer, scheduler: Any, identity: dict[str, Any]
) -> tuple[dict[str, torch.Tensor], int, list[dict[str, Any]]]:
    """Load the optimizer, schedule and RNG state saved at `path` (refused if the run's identity
    changed, naming each difference; the number of epochs may grow, and `scheduler`, planned for the new
    number, then continues from the saved step); returns (trained tensors, last finished epoch, history)."""
    if not path.is_file():
        raise AdaptError(f"nothing to resume: {path} does not exist")
    tensors, metadata = read_tensors(path)
    saved, now = _fixed(json.loads(metadata["run"])), _fixed(identity)
    changed = changed_settings(saved, now)
    if changed:
        raise AdaptError(f"cannot resume from {path}: " + "; ".join(changed))
    optimizer_tensors = {k: v for k, v in tensors.items() if k.startswith("optimizer.")}
    optimizer.load_state_dict(_optimizer_state(optimizer_tensors, json.loads(metadata["optimizer"])))
    scheduler.load_state_dict(json.loads(metadata["scheduler"]))  # the saved position, on the schedule planned now
    torch.set_rng_state(tensors["rng.torch"])
    trained = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    return trained, int(metadata["epoch"]), json.loads(metadata["history"])
