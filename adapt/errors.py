"""The one exception type that the CLI turns into a one-line message and a non-zero exit."""

import contextlib
import contextvars
from collections.abc import Iterator


class AdaptError(Exception):
    """A problem with the user's input (files, arguments, data) that they can fix."""


def describe_mismatch(what: str, missing: list[str], unexpected: list[str], wrong_shapes: list[str]) -> str:
    """One line naming (at most five of) the missing and unexpected keys and the wrong shapes."""

    def some(keys: list[str]) -> str:
        return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

    parts = [
        f"{label}: {some(keys)}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shapes", wrong_shapes))
        if keys
    ]
    return f"{what}: " + "; ".join(parts)


def compare_tensors(
    expected: dict[str, tuple[int, ...]],
    given: dict[str, tuple[int, ...]],
    given_name: str = "given",
    expected_name: str = "expected",
) -> tuple[list[str], list[str], list[str]]:
    """Missing keys, unexpected keys and 'key: given (..) vs expected (..)' shape mismatches, sorted.

    given_name/expected_name say where each shape comes from (e.g. "file" and "model")."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    wrong = sorted(
        f"{k}: {given_name} {tuple(given[k])} vs {expected_name} {tuple(expected[k])}"
        for k in set(expected) & set(given)
        if given[k] != expected[k]
    )
    return missing, unexpected, wrong



_SPEAK_FLAGS = contextvars.ContextVar("adapt_speak_flags", default=False)  # True while a CLI command runs


@contextlib.contextmanager
def speaking_flags() -> Iterator[None]:
    """While the block runs, `term` names options as command-line flags (the CLI wraps each command)."""
    token = _SPEAK_FLAGS.set(True)
    try:
        yield
    finally:
        _SPEAK_FLAGS.reset(token)


def term(name: str) -> str:
    """How a message names an option: `--image-size` on the command line, `image_size` through the
    Python API, so that each audience reads the names it typed."""
    return f"--{name.replace('_', '-')}" if _SPEAK_FLAGS.get() else name
