"""Looks: every run that decides claims about one adapter on other data is another chance to pass it.

A team whose gate says "inconclusive: about 900 pairs would decide it" collects more data and runs again. If
both runs decided at the full one-sided 0.025, the second run would be a second chance, and a bad adapter would
pass 0.051 of the time after one extension, 0.097 after two (docs/decisions.md). So the gate spends its error
across the looks a user makes on one adapter, as a group-sequential trial spends it across interim analyses:
the first look decides at 0.8 of the total, every later look at half of what the one before it left
(0.1, 0.05, ...), and the shares sum to one. By the union bound the chance that any look passes an adapter that
should not ship stays at most the total, whatever the looks' data have in common.

A look is the adapter (its weights' digest) judged on its inputs: the pairs and their split, the families'
settings (their data files by content; not a baseline, another adapter or a judge, which are what the adapter
is measured against or by) and the generation settings. A re-run on the same inputs is the same look (the
same decisions, at the same level); the look count lives in a small JSON ledger (by default in the
cache directory, `--looks` elsewhere), which CI keeps with its baseline so that a job with a fresh cache still
counts earlier looks.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import LooksError

FIRST = 0.8
"""Share of the total one-sided error the first look on an adapter spends; every later look spends half of
what is left before it."""

SEQUENTIAL_DEFAULT = ("auto", 64)
"""gate.sequential and gate.first_round as they come: a run with other ones decides the same data in other rounds,
so it is another look (left out of the digest at the default, so that ledgers kept before rounds existed still
count their looks); gate.max_items is not: a larger cap continues the same rounds."""

GENERATION_FIELDS = ("train_answers", "max_new_tokens", "max_length", "do_sample", "temperature", "top_p", "seed")
"""EvalConfig fields that change the answers a look decides on (besides the pairs and the families' settings)."""


def share(look: int) -> float:
    """The share of the total error spent at the look-th look: 0.8, 0.1, 0.05, ... (summing to one)."""
    if look < 1:
        raise ValueError(f"look {look}: looks count from 1")
    return FIRST if look == 1 else (1 - FIRST) / 2 ** (look - 1)


@dataclass(frozen=True, slots=True)
class Earlier:
    """One earlier look on the adapter, as its ledger keeps it."""

    inputs: str
    tail: float
    first_run: str
    """When a claim was first decided on this look (UTC, ISO 8601)."""


@dataclass(frozen=True, slots=True)
class Look:
    """This run's look on its adapter: which one, the one-sided error it decides at, and the looks before it."""

    number: int
    inputs: str
    total: float
    """One-sided error across every look on this adapter: (1 - ci_level) / 2."""
    earlier: tuple[Earlier, ...] = ()

    @property
    def tail(self) -> float:
        """This look's one-sided error: its share of the total, never more than what earlier looks left."""
        return min(share(self.number) * self.total, self.total - sum(e.tail for e in self.earlier))

    @property
    def ci_level(self) -> float:
        """The two-sided level whose intervals decide this look (0.96 at the first look of a 0.95 gate)."""
        return 1 - 2 * self.tail

    @property
    def next_ci_level(self) -> float:
        """The level the next look on this adapter (other data) will decide at: the sizes an inconclusive claim
        reports are sized for it, since a run with more data is that look."""
        return 1 - 2 * min(share(self.number + 1) * self.total, self.total - self.spent)

    @property
    def spent(self) -> float:
        return sum(e.tail for e in self.earlier) + self.tail

    def line(self) -> str:
        """One console line: which look, at what level, and what the next one would get."""
        before = (f"; {len(self.earlier)} earlier on other inputs spent {sum(e.tail for e in self.earlier):.4g}"
                  if self.earlier else "")
        return (f"look {self.number} on this adapter: decided at one-sided {self.tail:.4g} ({self.total:.4g} across "
                f"every look{before}; a run on more or other data is look {self.number + 1}, at "
                f"{(1 - self.next_ci_level) / 2:.4g})")

    def record(self) -> dict[str, Any]:
        return {"number": self.number, "tail": self.tail, "total": self.total, "spent": self.spent,
                "next_tail": (1 - self.next_ci_level) / 2, "inputs": self.inputs,
                "earlier": [dataclasses.asdict(e) for e in self.earlier]}


def inputs_digest(pairs_fingerprint: str, cfg: Any, file_digest: Callable[[Path], str],
                  references: frozenset[str] = frozenset()) -> str:
    """What a look decides on, as one digest: the pairs (and split), the generation settings, the rounds
    (sequential.py, when not the default), and every family's settings with the files they name read by content
    (a multiple-choice set that gained questions is a new look even at the same path), except the families in `references`, whose settings name what the adapter is
    measured against or by (--baseline, --compare, --judge), not data it is judged on."""
    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, (str, Path)) and Path(v).is_file():
            return f"file:{file_digest(Path(v))}"
        return v if isinstance(v, (int, float, bool, type(None))) else str(v)

    parts = {"pairs": pairs_fingerprint, "generation": {k: plain(getattr(cfg, k)) for k in GENERATION_FIELDS},
             "families": [[name, plain(settings)] for name, settings in cfg.families if name not in references]}
    rounds = (cfg.gate.sequential, cfg.gate.first_round)
    if rounds != SEQUENTIAL_DEFAULT:  # another way of deciding on the same data is another chance: another look
        parts["sequential"] = list(rounds)
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {"version": 1, "adapters": {}}
    try:
        data = json.loads(path.read_text())
        assert isinstance(data.get("adapters"), dict)
        return data
    except (ValueError, AssertionError, AttributeError) as e:
        raise LooksError(f"--looks {path}: not a looks ledger ({e}). It counts the gate's earlier runs on each "
                           f"adapter; restore it from where CI keeps it, or move it aside to start counting anew "
                           f"(earlier runs' chances to pass are then no longer counted).") from None


def find(path: Path, adapter: str, inputs: str, total: float) -> Look:
    """This run's look on `adapter` (read only): the recorded one with these inputs, else the next."""
    recorded = [Earlier(**e) for e in _read(path)["adapters"].get(adapter, [])]
    for i, e in enumerate(recorded):
        if e.inputs == inputs:
            return Look(i + 1, inputs, total, tuple(recorded[:i]))
    look = Look(len(recorded) + 1, inputs, total, tuple(recorded))
    if look.tail <= 0 or not math.isfinite(look.tail):
        raise LooksError(f"adapter {adapter[:12]}: its {len(recorded)} earlier looks (ledger {path}) have spent the "
                           f"whole one-sided error {total:g}, so no further look can pass it. Gate it on the inputs of "
                           f"an earlier look, or train a new adapter.")
    return look


def commit(path: Path, adapter: str, look: Look) -> None:
    """Record `look` in the ledger (once; a re-run of the same look writes nothing). Refuses when another run on
    this adapter took the same place in the meantime, since this run's level would then be wrong."""
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        data = _read(path)
        rows = data["adapters"].setdefault(adapter, [])
        if any(r["inputs"] == look.inputs for r in rows):
            return
        if len(rows) != look.number - 1:
            raise LooksError(f"adapter {adapter[:12]}: another run recorded a look on it while this one ran (ledger "
                               f"{path}); run again to decide at the level of the look it now is.")
        rows.append(dataclasses.asdict(Earlier(look.inputs, look.tail,
                                               dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))))
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(path)
