"""Project exceptions. Every message says what was seen, what was expected and the fix."""

from __future__ import annotations

import difflib
from typing import Iterable


class DpoEvalError(Exception):
    """Base class: a problem with the user's input or environment, not a bug."""


class ConfigError(DpoEvalError):
    """An option value or combination is invalid."""

    def __init__(self, option: str, value: object, expected: str, fix: str = "") -> None:
        self.option, self.value, self.expected = option, value, expected
        msg = f"{option}={value!r} is invalid: expected {expected}."
        super().__init__(f"{msg} {fix}".strip())


def check_choice(option: str, value: object, allowed: tuple[str, ...]) -> None:
    """Raise ConfigError naming the allowed values unless `value` is one of them."""
    if value not in allowed:
        raise ConfigError(option, value, "one of " + ", ".join(allowed))


def did_you_mean(value: str, known: Iterable[str]) -> str:
    """'Did you mean 'x'?' naming the closest known values, or '' when none is close."""
    close = difflib.get_close_matches(value, list(known), n=3, cutoff=0.5)
    return f"Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


class DataError(DpoEvalError):
    """Preference data cannot be read or has no usable pairs."""


class CheckpointError(DpoEvalError):
    """An adapter or base model cannot be loaded as asked."""


class CacheError(DpoEvalError):
    """A cache entry cannot be written (the run goes on without it only where said)."""


class EndpointError(DpoEvalError):
    """A server (a judge's) cannot be reached, refuses the request, or answers something that is not the API."""


class LooksError(DpoEvalError):
    """The ledger of looks cannot be read, changed under the run, or says the adapter's error is spent."""


class ResourceError(DpoEvalError):
    """The machine ran out of something the run needs (accelerator memory): the message names the phase, what
    was asked and free, and the options that need less."""
