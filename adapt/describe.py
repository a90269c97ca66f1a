"""What a file or folder that adapt wrote is, and what it holds (`adapt info`).

Every kind of output is recognised by what it carries, not by its name: adapter checkpoints
(and soups of them, and continual tasks' checkpoints), merged models and soups of them,
hub folders and run folders, peft exports, SPT sensitivity scores and allocations,
perceptual-init backbones, training states, and the JSON/YAML records of runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapt.errors import AdaptError

SENSITIVITY_KEY = "adapt_sensitivity"
PERCEPTUAL_KEY = "perceptual_init"


@dataclass
class Description:
    path: str
    kind: str  # one line: what the file is
    fields: dict[str, Any] = field(default_factory=dict)  # what it holds, by name (JSON values)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, **self.fields}


def describe(path: str | Path) -> Description:
    """Describe any output of adapt; raise AdaptError naming what `path` is when it is none of them."""
    path = Path(path).expanduser()
    if not path.exists():
        raise AdaptError(f"not found: {path}")
    if path.is_dir():
        return _describe_folder(path)
    if path.suffix == ".safetensors":
        return _describe_safetensors(path)
    if path.suffix == ".json":
        return _describe_json(path)
    if path.suffix == ".jsonl":
        from adapt.config import read_text_file

        lines = read_text_file(path).splitlines()
        rows = [_parsed(line, f"{path} line {n}", mapping=False) for n, line in enumerate(lines, 1) if line.strip()]
        return Description(str(path), "a run's per-epoch metrics (one JSON line per epoch)", {"epochs": len(rows),
                           "last": rows[-1] if rows else None})  # fmt: skip
    if path.suffix in (".yaml", ".yml"):
        from adapt.config import read_yaml_mapping

        return Description(str(path), "the resolved options of a run (config.yaml; --resume reads them)", read_yaml_mapping(path))
    raise AdaptError(f"{path} is not a file adapt writes (a .safetensors, .json or .yaml file, or a folder)")


def _describe_folder(folder: Path) -> Description:
    from adapt.checkpoint import checkpoint_file

    if (folder / "adapter_config.json").is_file():
        return _describe_peft(folder)
    inner = _describe_safetensors(checkpoint_file(folder))
    where = "hub folder" if (folder / "config.json").is_file() else "run folder"
    return Description(str(folder), f"{where}: {inner.kind}", {"file": inner.path, **inner.fields})


def _describe_peft(folder: Path) -> Description:
    from adapt.config import read_text_file

    config = _parsed(read_text_file(folder / "adapter_config.json"), str(folder / "adapter_config.json"))
    fields: dict[str, Any] = {
        "peft": {k: config.get(k) for k in ("peft_type", "r", "lora_alpha", "lora_dropout", "target_modules", "modules_to_save")},
        "base model": config.get("base_model_name_or_path"),
    }
    if (folder / "adapt.json").is_file():
        from adapt.checkpoint import CheckpointMeta

        meta = CheckpointMeta.from_json(_parsed(read_text_file(folder / "adapt.json"), str(folder / "adapt.json")),
                                        str(folder / "adapt.json"))  # fmt: skip
        fields.update(_checkpoint_fields(meta))
    return Description(str(folder), "peft LoRA adapter folder (PeftModel.from_pretrained loads it)", fields)


def _describe_safetensors(path: Path) -> Description:
    from adapt.checkpoint import FORMAT_KEY, MERGED_KEY, checked_meta, read_tensors

    tensors, metadata = read_tensors(path)
    counts = _counts(tensors)
    if FORMAT_KEY in metadata or MERGED_KEY in metadata:
        meta = checked_meta(tensors, metadata, path)
        fields = {**_checkpoint_fields(meta), **counts}
        soup = meta.training.get("soup")
        if meta.merged:
            kind = "soup of merged models" if soup else "merged model: a plain timm state dict"
            fields["tensors"] = f"{len(tensors):,} tensors, {counts['values']:,} values (the whole network)"
        else:
            kind = "soup of adapters" if soup else ("continual task checkpoint" if meta.head else "adapter checkpoint")
        return Description(str(path), kind, fields)
    if "soup" in metadata:
        soup = _parsed(metadata["soup"], f"{path}: metadata 'soup'")
        return Description(str(path), "soup of plain state dicts", {"soup": soup, **counts})
    if SENSITIVITY_KEY in metadata:
        keep = ("backbone", "backbone_weights", "data", "image_size", "batches", "batch_size", "seed", "sample", "drop_path")
        return Description(str(path), "SPT sensitivity scores (adapt allocate reads them)",
                           {**{k: metadata[k] for k in keep if k in metadata}, "scored tensors": len(tensors)})  # fmt: skip
    if PERCEPTUAL_KEY in metadata:
        record = _parsed(metadata[PERCEPTUAL_KEY], f"{path}: metadata '{PERCEPTUAL_KEY}'")
        return Description(str(path), "perceptual-init backbone: a plain timm state dict (use with --weights)",
                           {"backbone": metadata.get("backbone"), **record, **counts})  # fmt: skip
    if {"run", "epoch", "optimizer"} <= set(metadata):
        run = _parsed(metadata["run"], f"{path}: metadata 'run'")
        if not metadata["epoch"].isdigit():
            raise AdaptError(f"{path}: metadata 'epoch' is not a whole number ({metadata['epoch'][:40]!r})")
        return Description(str(path), f"training state after epoch {metadata['epoch']} (tune --resume reads it)",
                           {"run": run, "epochs finished": int(metadata["epoch"])})  # fmt: skip
    return Description(str(path), "a safetensors file adapt did not write (no adapt metadata)", counts)


def _counts(tensors: dict[str, Any]) -> dict[str, Any]:
    """Float values (what was trained or averaged) apart from integer entries (SPT's indices, BN counters)."""
    values = sum(t.numel() for t in tensors.values() if t.is_floating_point())
    entries = sum(t.numel() for t in tensors.values() if not t.is_floating_point())
    words = f"{len(tensors):,} tensors: {values:,} values" + (f" (+ {entries:,} index/buffer entries)" if entries else "")
    return {"tensors": words, "values": values, "index entries": entries}


def _checkpoint_fields(meta: Any) -> dict[str, Any]:
    from adapt.methods import create_method

    method = (f"full network (folded from {meta.training.get('merged_method', 'an adapter')})" if meta.merged
              else create_method(meta.method, meta.method_options).options_line())  # fmt: skip
    head = None
    if meta.head is not None:
        sizes = ", ".join(str(n) for n in meta.head["task_sizes"])
        head = f"{meta.head['kind']} (incremental: tasks of {sizes} classes) {json.dumps(meta.head.get('options') or {})}"
    fields = {
        "method": method,
        "backbone": f"{meta.backbone} ({meta.backbone_weights})",
        "backbone sha256": meta.backbone_sha256 or None,
        "classes": meta.class_names,
        "image size": f"{meta.image_size}px, mean {meta.mean}, std {meta.std}",
        "head": head or "the backbone's timm classifier",
        "training": meta.training,
    }
    return {k: v for k, v in fields.items() if v is not None}


def _parsed(text: str, where: str, mapping: bool = True) -> Any:
    """JSON text (a mapping unless `mapping` is False), or one line naming `where` it is not."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise AdaptError(f"{where} is not valid JSON") from None
    if mapping and not isinstance(value, dict):
        raise AdaptError(f"{where} is not a JSON object (a mapping of name: value) but {type(value).__name__}")
    return value


SUMMARY_TYPES = {"test_acc": (int, float), "history": list, "trainable_params": int, "total_params": int}


def _describe_json(path: Path) -> Description:
    from adapt.config import read_text_file

    data = _parsed(read_text_file(path), str(path), mapping=False)
    if isinstance(data, dict):
        if {"budget", "rank", "structured", "unstructured"} <= set(data):
            from adapt.methods.spt.allocation import Allocation

            allocation = Allocation.load(path)  # every field checked
            return Description(str(path), "SPT allocation (adapt tune --method spt --allocation FILE reads it)",
                               {k: data[k] for k in ("budget", "rank", "structured_module", "adapter_form", "rule") if k in data}
                               | {"structured": len(allocation.structured), "sparse": len(allocation.unstructured),
                                  "vectors": len(allocation.vectors)})  # fmt: skip
        if {"test_acc", "run", "history"} <= set(data):
            for key, kind in SUMMARY_TYPES.items():
                if key in data and (not isinstance(data[key], kind) or isinstance(data[key], bool)):
                    raise AdaptError(f"{path}: '{key}' is {type(data[key]).__name__}, not what a run's summary holds")
            return Description(str(path), "a finished run's summary", {k: data.get(k) for k in ("test_acc", "test_split",
                               "trainable_params", "total_params", "run")} | {"epochs": len(data["history"])})  # fmt: skip
        if {"matrix", "tasks", "setup"} <= set(data):
            return Description(str(path), "a continual run's results (accuracy matrix and metrics)", data)
        if data and all(isinstance(v, dict) and "accuracy" in v and "split" in v for v in data.values()):
            return Description(str(path), "evaluation results (adapt eval), one entry per data, split and limit", data)
        if "accuracy" in data and "split" in data:
            return Description(str(path), "an evaluation result (adapt eval --out)", data)
        if "tasks" in data and "plain_mean" in data:
            return Description(str(path), "a VTAB-1k table", data)
    raise AdaptError(f"{path} is JSON that adapt did not write (not an allocation, summary, evaluation or continual result)")
