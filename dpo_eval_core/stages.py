"""A run's stages by typed key. The module that computes a stage declares its key once, with the type of its
value (`REWARDS: Stage[RewardStage] = Stage("rewards")`), and every other module reads the stage through that
constant: a stage is never named by a string spelled in another module, and a type checker sees what it
holds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Generic, Hashable, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Stage(Generic[T]):
    """The key of one stage of a run; `arg` tells apart the stages of one kind (a question set, a load)."""

    name: str
    arg: Hashable = None

    def of(self, arg: Hashable) -> Stage[T]:
        """The same kind of stage for one argument."""
        return Stage(self.name, arg)


class Stages:
    """What a run has computed so far, each value under its key, computed once on first use."""

    __slots__ = ("_values",)

    def __init__(self) -> None:
        self._values: dict[Stage[Any], Any] = {}

    def once(self, key: Stage[T], compute: Callable[[], T]) -> T:
        """The stage's value, computed now if it was not yet."""
        if key not in self._values:
            self._values[key] = compute()
        return self._values[key]

    def computed(self, key: Stage[T]) -> T | None:
        """The stage's value if it was computed, else None: reports say only what ran."""
        return self._values.get(key)

    def put(self, key: Stage[T], value: T) -> None:
        """Set a stage computed elsewhere (the claims a series gated, decided before this run)."""
        self._values[key] = value

    def each(self, kind: Stage[T]) -> dict[Hashable, T]:
        """{arg: value} of every computed stage of `kind`'s name (every question set's, every round's)."""
        return {k.arg: v for k, v in self._values.items() if k.name == kind.name}

    def __contains__(self, key: Stage[Any]) -> bool:
        return key in self._values
