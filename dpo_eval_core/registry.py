"""The claim families of this installation, and claim ids resolved to the family and kind that make them.

Built-in families are the modules of `dpo_eval_core.families` (each defines `FAMILY`); a user's package adds
its own through the `dpo_eval.families` entry point group, naming a `Family` object:

    [project.entry-points."dpo_eval.families"]
    privacy = "my_gate.privacy:FAMILY"

Everything that needs to know which claims exist asks here: the gate config's defaults and validation
("did you mean"), the plugin's parameters and xdist units, results.json, the report and the docs.
"""

from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points
from typing import Iterable, Sequence

from . import families as builtin
from .errors import ConfigError, did_you_mean
from .family import Family, Kind

ENTRY_POINTS = "dpo_eval.families"


def discover() -> tuple[Family, ...]:
    """The built-in families and those installed through the entry point, by rank; a name used twice, or an
    entry point that does not name a Family, is refused with the package that brought it."""
    found = [importlib.import_module(f"{builtin.__name__}.{m.name}").FAMILY
             for m in pkgutil.iter_modules(builtin.__path__)]
    for ep in entry_points(group=ENTRY_POINTS):
        try:
            family = ep.load()
        except Exception as e:  # a broken plugin must name itself, not crash the gate anonymously
            raise ConfigError(f"entry point {ENTRY_POINTS}: {ep.name}", ep.value, "an importable Family",
                              f"Importing it failed: {type(e).__name__}: {e}. Fix or uninstall that package.") from e
        if not isinstance(family, Family):
            raise ConfigError(f"entry point {ENTRY_POINTS}: {ep.name}", ep.value, "a dpo_eval_core.family.Family",
                              f"It names a {type(family).__name__}.")
        found.append(family)
    names = [f.name for f in found]
    if dup := sorted({n for n in names if names.count(n) > 1}):
        raise ConfigError(f"entry points {ENTRY_POINTS}", dup, "family names used once",
                          "Two packages declare a family of the same name: uninstall one.")
    kinds = [k.pattern for f in found for k in f.kinds]
    if dup := sorted({k for k in kinds if kinds.count(k) > 1}):
        raise ConfigError(f"entry points {ENTRY_POINTS}", dup, "claim ids made by one family only",
                          "Two families make the same claim id: rename one kind.")
    return tuple(sorted(found, key=lambda f: (f.rank, f.name)))


def split_id(claim_id: str) -> tuple[str, str | None]:
    """'data-signal[n_tokens]' -> ('data-signal', 'n_tokens'); 'still-passes[no-nan-logits[8bit]]' keeps the
    inner brackets; 'reward-margin' -> ('reward-margin', None)."""
    head, bracket, rest = claim_id.partition("[")
    return (head, rest[:-1]) if bracket and rest.endswith("]") else (head, None)


def resolve(families: Iterable[Family], claim_id: str) -> tuple[Family, Kind, str | None] | None:
    """(family, kind, bracket value) of a claim id, `family[*]` included; None for an id no family makes."""
    families = tuple(families)
    head, arg = split_id(claim_id)
    for family in families:
        kind = family.kind(head, arg)
        if kind is None:
            continue
        if arg is None or arg == "*":
            return family, kind, arg
        if kind.holds_claim and (resolve(families, arg) is not None or any(k.name == arg for f in families
                                                                            for k in f.kinds)):
            return family, kind, arg
        if family.accepts is not None and family.accepts(kind, arg):
            return family, kind, arg
    return None


def kinds(families: Iterable[Family]) -> list[Kind]:
    return [k for f in families for k in f.kinds]


def rates(families: Iterable[Family]) -> tuple[str, ...]:
    """Claims whose value must not fall below the baseline's beyond its margin (`not-lower[...]`)."""
    return tuple(k.id() for k in kinds(families) if k.rate and k.over is None)


def default_gating(families: Iterable[Family]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(k.gating_entry for k in kinds(families) if k.gates))


def check_claim_ids(families: Sequence[Family], ids: Iterable[str], option: str) -> None:
    """Raise ConfigError naming the closest known id for each id no family makes."""
    known = sorted({k.gating_entry for k in kinds(families)})
    for cid in ids:
        if resolve(families, cid) is None:
            hint = did_you_mean(cid, known)
            raise ConfigError(option, cid, "a claim id or family[*] of the installed claim families",
                              f"{hint} Known: {', '.join(known)}.".strip())
