"""What a claim family is: the one declaration a module makes to add claims to the gate.

A family (dpo_eval_core/families/*.py, or a user's package through the `dpo_eval.families` entry point)
declares, in one place: its kinds of claim (the id, what its bracket ranges over, whether it gates by
default), what shared stages it needs, its settings (a frozen dataclass: the `[tool.dpo_eval.<name>]` table
and its command-line options), and `claims(run, arg)`, which measures from the run's shared stages and
returns its claims. Optional hooks: the inputs to check before any model loads, a results.json section, an
HTML report section, and how one of its values compares with another adapter's (--compare) or with the
last release's (--baseline). The run, the plugin and evals/ know no particular family.

    ANSWERS_CLEAN = Kind("answers-have-no-email", "no answer contains an email address")

    def claims(run, arg):
        texts = [g.text for g in run.answers["tuned"] if g is not None]
        ...
        return [rate_above(ANSWERS_CLEAN.id(), k, n, 0.99, run.gate, "clean answers")]

    FAMILY = Family("privacy", (ANSWERS_CLEAN,), claims, needs=frozenset({"answers"}))
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping, Sequence

if TYPE_CHECKING:
    from .claims import Claim
    from .run import Run

Need = Literal["data", "model", "answers"]
"""Shared stages a family reads: the preference pairs alone, the loaded model, the tuned and base answers
(which need the model, or --serve-url). `data-signal` needs only data and so loads no model."""


@dataclass(frozen=True, slots=True)
class Kind:
    """One kind of claim: its id, or, with `over`, the id before a bracket that ranges over items."""

    name: str
    summary: str
    """One line for docs/claims.md: what holds when the claim passes."""
    over: str | None = None
    """The placeholder of the bracket in the docs (FEATURE, VARIANT, SET...); None: a single claim."""
    gates: bool = True
    """Whether it fails the run by default (gate `gating`); a per-item kind gates as `name[*]`."""
    rate: bool = False
    """A headline rate with an interval: with --baseline, `not-lower[name]` checks it has not dropped."""
    validity: bool = False
    """A claim the demo's control adapters are meant to fail (the validity script's table)."""
    detail: bool = False
    """One of many per-item claims (one per text feature) that summaries count rather than list."""
    holds_claim: bool = False
    """The bracket holds another claim id or kind name (`still-passes[no-nan-logits[8bit]]`, `not-worse[...]`)."""

    def id(self, arg: str | None = None) -> str:
        """The claim id: `reward-margin`, `data-signal[n_tokens]`. The one way to write an id."""
        if (arg is None) != (self.over is None):
            raise ValueError(f"{self.name}: {'no bracket value' if self.over is None else 'a bracket value'} "
                             f"expected, got {arg!r}")
        return self.name if arg is None else f"{self.name}[{arg}]"

    @property
    def pattern(self) -> str:
        """How the docs write it: `data-signal[FEATURE]`, `reward-margin`."""
        return self.name if self.over is None else f"{self.name}[{self.over}]"

    @property
    def gating_entry(self) -> str:
        """How the gate's `gating` list names the whole kind."""
        return self.name if self.over is None else f"{self.name}[*]"


@dataclass(frozen=True, slots=True)
class Option:
    """A command-line option (and ini key `dpo_eval_<field>`) that sets a field of a family's settings."""

    flag: str
    field: str
    help: str
    type: Callable[[str], Any] = str
    repeat: bool = False
    """Repeatable (`--mcq a --mcq b`): the field is a tuple."""
    switch: bool = False
    """A flag without a value that sets the field to True."""


@dataclass(frozen=True, slots=True)
class NoSettings:
    """The settings of a family that has none."""


ClaimsFn = Callable[["Run", "str | None"], "list[Claim]"]
"""(run, the bracket value for a family measured item by item, else None) -> the claims it measured."""


@dataclass(frozen=True)
class Family:
    """A claim family: everything the gate, the plugin, results.json and the report need to know about it."""

    name: str
    """The family's name: its settings table `[tool.dpo_eval.<name>]`, its results.json section."""
    kinds: tuple[Kind, ...]
    claims: ClaimsFn
    needs: frozenset[Need] = frozenset({"model"})
    settings: type = NoSettings
    """A frozen dataclass with defaults; its fields are the table's keys, each with a docstring."""
    options: tuple[Option, ...] = ()
    per_item: bool = False
    """True: `claims` is called once per bracket value (a variant, a set); False: once for all the kinds."""
    arguments: Callable[[Run, Kind], Sequence[str]] | None = None
    """(run, kind) -> the bracket values this run makes claims for (default: none)."""
    accepts: Callable[[Kind, str], bool] | None = None
    """Whether a bracket value could be one of this kind's, without a run (validates `gating` lists); a kind
    that `holds_claim` accepts any claim id or kind name instead."""
    absent: Callable[[Any], str | None] = lambda cfg: None
    """(EvalConfig) -> why the family is skipped (its input was not given, and how to give it), or None."""
    check: Callable[[Run], None] | None = None
    """Reads and refuses bad inputs (files, servers) before any model loads."""
    section: Callable[[Run], Any] | None = None
    """What results.json records under the family's name (None: nothing beyond its claims)."""
    report: Callable[[Mapping[str, Any]], str] | None = None
    """(results document) -> an HTML fragment for the report, from results.json alone."""
    compared: Callable[[Run], Sequence[str]] | None = None
    """(run) -> the items `not-worse[...]` compares for this family under --compare."""
    compare: Callable[[Run, Run, str, str], tuple[Claim, Any]] | None = None
    """(this run, the --compare adapter's run, item, claim id) -> the non-inferiority claim of that item and
    what the comparison's results.json section records of it ({"items": {item: PairedComparison}}, or keys
    of the family's own)."""
    not_lower: Callable[[Run, Mapping[str, Any], Kind, str], Claim | None] | None = None
    """(run, the --baseline results, a rate kind, claim id) -> its non-inferiority claim against the baseline."""
    cuda_only: Callable[[str], bool] | None = None
    """(bracket value) -> True for an item only a CUDA machine measures (its test is marked gpu)."""
    unavailable: Callable[[Any, str | None], str] | None = None
    """(EvalConfig, bracket value) -> why this machine makes no claim for it (when `claims` returns none)."""
    plan: Callable[[Run], Sequence[Any]] | None = None
    """(run) -> plan.ClaimChance per statistical claim: a good adapter's chance to pass it with this run's data,
    from sizes known before any model loads (the plan the gate prints first)."""
    reference: bool = False
    """Its settings name what the adapter is measured against or by (a baseline, another adapter, a judge), not data
    it is judged on: a run that adds or changes them is the same look at the adapter (looks.py)."""
    own_models: bool = False
    """Its claims load models of their own (the quantization probes): they run last, in their own xdist unit."""
    rank: int = 100
    """Where the family comes in the docs and in a run: lower first (built-ins 10-90, yours 100 by default)."""
    doc: str = ""
    """One line for the docs: what the family shows."""

    def kind(self, name: str, arg: str | None) -> Kind | None:
        """The kind of this family that makes `name` with (or without) a bracket value."""
        return next((k for k in self.kinds if k.name == name and (k.over is None) == (arg is None)), None)

    def defaults(self) -> Any:
        return self.settings()

    def fields(self) -> dict[str, dataclasses.Field]:
        return {f.name: f for f in dataclasses.fields(self.settings)}
