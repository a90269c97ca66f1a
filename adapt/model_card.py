"""The README.md model card of an exported folder (a hub folder, a peft adapter folder).

It says what a person looking at the folder on the Hub needs: what was trained and how many
values, on which backbone and data, the classes, the held-out accuracy the run measured,
the command that made the folder, and how to load it.
"""

from __future__ import annotations

from typing import Any

from adapt.checkpoint import CheckpointMeta


def model_card(meta: CheckpointMeta, trained: int | None, loader: str, library: str, command: str | None = None,
               merged: bool = False) -> str:  # fmt: skip
    """Markdown with the Hub's YAML header, for the model of checkpoint `meta` (folded into its weights when
    `merged`); `loader` is the Python that loads the folder."""
    training = meta.training
    method = meta.method
    classes = ", ".join(meta.class_names[:20]) + (" …" if len(meta.class_names) > 20 else "")
    rows: list[tuple[str, Any]] = [
        ("method", f"{method} {meta.method_options}" if meta.method_options else method),
        ("backbone", f"{meta.backbone} ({meta.backbone_weights} weights)"),
        ("data", training.get("data") or "not recorded"),
        ("classes", f"{len(meta.class_names)}: {classes}"),
        ("input", f"{meta.image_size}px, mean {meta.mean}, std {meta.std}"),
    ]
    if training.get("eval_acc") is not None:
        rows.append(("accuracy", f"{training['eval_acc']:.2%} on {training.get('eval_split', 'held-out')} "
                                 f"(epoch {training.get('epoch', '?')} of {training.get('epochs', '?')})"))  # fmt: skip
    if trained is not None:
        rows.append(("trained values", f"{trained:,}"))
    if command:
        rows.append(("made with", f"`{command}`"))
    table = "\n".join(f"| {name} | {str(value).replace('|', '/')} |" for name, value in rows)
    return (
        f"---\nlibrary_name: {library}\ntags:\n- image-classification\n- adapt\n- {method}\n---\n\n"
        f"# {meta.backbone} adapted with {method}\n\n"
        f"Made by [adapt](https://pypi.org/project/adapt-vision/): parameter-efficient adaptation of a frozen "
        f"pretrained backbone{', folded back into its own weights' if merged else ''}.\n\n"
        f"| | |\n|---|---|\n{table}\n\n## Load it\n\n```python\n{loader.strip()}\n```\n"
    )
