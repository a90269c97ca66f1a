"""Typed, validated configuration: one place that checks every option, wherever it came from.

Configurations are dataclasses whose fields carry their constraints (`option(...)`).
`build(cls, mapping, source)` turns a mapping (CLI options, a YAML file, checkpoint
metadata) into the dataclass: unknown keys are refused with the nearest valid name,
then `validate` checks types, finiteness, ranges, choices and regexes. The CLI, YAML
files and checkpoints all pass through here, so no path skips a check.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from adapt.errors import AdaptError

T = TypeVar("T")
MAX_SEED = 2**63 - 1
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 1024  # larger inputs would allocate without bound from a file's say-so
MAX_CLASSES = 100_000  # a head is sized by the class count: more is a typo or a lie, not a task


@dataclasses.dataclass
class NoOptions:
    """The options of a configurable thing that has none (full, linear, bitfit; naive, prototype)."""


def option(
    default: Any = dataclasses.MISSING,
    *,
    default_factory: Any = dataclasses.MISSING,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    choices: tuple | None = None,
    regex: bool = False,
    takes: str | None = None,
) -> Any:
    """A dataclass field with constraints: [low, high] (open ends with *_open), choices, a regex.

    takes: what the option takes in a user's words, with an example, where its type says too little
    (e.g. "a count such as 400000, or text such as 0.4M or 1%")."""
    limits = {"low": low, "high": high, "low_open": low_open, "high_open": high_open, "choices": choices, "regex": regex}
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"limits": limits, "takes": takes})


_WORDS = {int: "a whole number (e.g. 8)", float: "a number (e.g. 0.5)", str: "text", bool: "true or false"}


def type_words(hint: Any) -> str:
    """A type as a user reads it: `int | None` is "a whole number (e.g. 8)", `list[str]` "a list of strings"."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_words(a) for a in args if a is not type(None))
    if origin in (list, tuple):
        item = {str: "strings", int: "whole numbers", float: "numbers"}.get(args[0] if args else Any, "values")
        return f"a list of {item}"
    if origin is dict or hint is dict:
        return "a mapping of name: value"
    return _WORDS.get(hint, getattr(hint, "__name__", None) or str(hint).replace("typing.", ""))


def _matches(value: Any, hint: Any) -> bool:
    """Whether `value` has the type `hint` (int accepted for float; bool never for int/float)."""
    if hint is Any:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        item = args[0] if args else Any
        return all(_matches(v, item) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            return False
        key_hint, value_hint = args or (Any, Any)
        return all(_matches(k, key_hint) and _matches(v, value_hint) for k, v in value.items())
    return isinstance(value, origin or hint)


def _check_limits(name: str, value: Any, limits: dict[str, Any], source: str) -> None:
    if value is None:
        return
    low, high = limits.get("low"), limits.get("high")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if low is not None and (value < low or (limits["low_open"] and value == low)):
            raise AdaptError(f"{source}: {name} must be {'>' if limits['low_open'] else '>='} {low}, got {value}")
        if high is not None and (value > high or (limits["high_open"] and value == high)):
            raise AdaptError(f"{source}: {name} must be {'<' if limits['high_open'] else '<='} {high}, got {value}")
    if limits.get("choices") is not None and value not in limits["choices"]:
        raise AdaptError(f"{source}: {name} must be one of {', '.join(map(str, limits['choices']))}, got {_shown(value)}")
    if limits.get("regex"):
        try:
            re.compile(value)
        except re.error as error:
            raise AdaptError(f"{source}: {name} is not a valid regular expression ({error})") from None


def _finite(value: Any) -> bool:
    """No NaN or Inf anywhere in a value (numbers inside lists and dicts included)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(_finite(v) for v in value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    return True


def validate(config: Any, source: str = "options") -> None:
    """Check every field of a config dataclass against its type and constraints."""
    hints = typing.get_type_hints(type(config))
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        if not _finite(value):
            raise AdaptError(f"{source}: {item.name} must be finite, got {value}"[:300])
        if not _matches(value, hints[item.name]):
            takes = item.metadata.get("takes") or type_words(hints[item.name])
            raise AdaptError(f"{source}: {item.name} takes {takes}, got {_shown(value)}")
        _check_limits(item.name, value, item.metadata.get("limits", {}), source)


def _shown(value: Any, width: int = 60) -> str:
    """A value as the user wrote it, cut to `width` characters."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def bounded_image_size(value: Any, source: str) -> int:
    """An image size from anywhere (flag, YAML, checkpoint metadata, a hub folder's config), within
    MIN_IMAGE_SIZE..MAX_IMAGE_SIZE: a file must not make adapt allocate without bound."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise AdaptError(f"{source}: the image size must be a whole number of pixels, got {_shown(value)}")
    if not MIN_IMAGE_SIZE <= value <= MAX_IMAGE_SIZE:
        raise AdaptError(f"{source}: the image size must be {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} px, got {int(value)}")
    return int(value)


def refuse_unknown(keys: Any, known: Any, source: str) -> None:
    """Refuse keys that are not options, naming the nearest valid one."""
    known = sorted(known)
    for key in keys:
        if key not in known:
            near = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else f" (options: {', '.join(known) or 'none'})"
            raise AdaptError(f"{source}: unknown option '{key}'{hint}")


def build(cls: type[T], values: Mapping[str, Any], source: str = "options") -> T:
    """The config dataclass `cls` from a mapping, refusing unknown keys and invalid values."""
    if not isinstance(values, Mapping):
        raise AdaptError(f"{source} must be a mapping of option: value, got {type(values).__name__}")
    refuse_unknown(values, [f.name for f in dataclasses.fields(cls)], source)
    try:
        config = cls(**values)
    except TypeError as error:
        raise AdaptError(f"{source}: {error}") from None
    validate(config, source)
    return config


SAFETENSORS = "a safetensors tensor file"


def binary_kind(path: Path) -> str | None:
    """What a tensor file is, by its first bytes: SAFETENSORS (a little-endian header length, then JSON),
    a torch .pth (a zip archive, or a bare pickle), or None for anything else (text, an image...)."""
    if not path.is_file():  # a FIFO would block the read; a folder has no bytes
        return None
    try:
        with open(path, "rb") as handle:
            head = handle.read(9)
    except OSError:
        return None
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 1:
        return SAFETENSORS
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive (a torch .pth state dict)"
    if head[:1] == b"\x80":
        return "a pickle (a torch .pth state dict)"
    return None


def read_text_file(path: Path) -> str:
    """A UTF-8 text file (a leading byte-order mark, as Excel's "CSV UTF-8" writes, dropped), or one line saying
    why it cannot be read."""
    if not path.exists():
        raise AdaptError(f"{path} not found")
    if not path.is_file():  # a folder, or a FIFO that would block the read
        raise AdaptError(f"{path} is not a regular file")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise AdaptError(f"{path} is not UTF-8 text (byte {error.start}); save it as UTF-8") from None
    except OSError as error:
        raise AdaptError(f"cannot read {path}: {error.strerror}") from None


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """A YAML file of option: value (a config), keys as option names (`max-shard-size` -> `max_shard_size`)."""
    import yaml

    text = read_text_file(path)
    try:
        for token in yaml.scan(text, Loader=yaml.SafeLoader):  # before anything is built from the file
            if isinstance(token, (yaml.AnchorToken, yaml.AliasToken)):
                mark = token.start_mark
                raise AdaptError(f"config {path}:{mark.line + 1}: YAML anchors and aliases (&, *) are not read here "
                                 "(adapt never writes them, and aliases can expand without bound); write the values out")  # fmt: skip
        loaded = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise AdaptError(f"cannot read config {path}: {str(error).splitlines()[0]}") from None
    if not isinstance(loaded, dict):
        raise AdaptError(f"config {path} must be a mapping of option: value")
    return {str(key).replace("-", "_"): value for key, value in loaded.items()}
