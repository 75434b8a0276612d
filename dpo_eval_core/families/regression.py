"""Against --baseline (the results.json of the last release): what passed then passes now, and the headline
rates did not drop beyond their margin.

A baseline is only comparable when it gated the same pairs with the same split on the same base weights;
anything else is refused with the reason. Each rate's family says how its values compare with the
baseline's (its `not_lower` hook: paired on the items both runs have where the baseline recorded them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from ..claims import Claim
from ..errors import ConfigError
from ..family import Family, Kind, Option
from ..results import load_results
from ..stages import Stage

if TYPE_CHECKING:
    from ..run import GateRun

BASELINE: Stage[dict[str, Any]] = Stage("baseline")

STILL = Kind("still-passes", "a gating claim that passed in the baseline passes now", over="CLAIM", holds_claim=True)
LOWER = Kind("not-lower", "non-inferiority: a headline rate is shown not to have dropped below the baseline's by more "
                          "than its margin", over="RATE", holds_claim=True)


@dataclass(frozen=True, slots=True)
class Settings:
    baseline: Path | None = None
    """results.json of a previous release to compare against."""

    def __post_init__(self) -> None:
        if self.baseline is not None and not Path(self.baseline).is_file():
            raise ConfigError("--baseline", str(self.baseline), "an existing results.json of an earlier run")


OPTIONS = (Option("--baseline", "baseline", "results.json of the last release to compare against",
                  lambda t: Path(t).expanduser()),)


def mismatch(baseline: Mapping[str, Any], base_fingerprint: str, data_fingerprint: str) -> str | None:
    """Why the baseline cannot be compared with this run, or None when it can."""
    facts = baseline.get("facts", {})
    data = facts.get("data", {})
    reasons = []
    if data.get("fingerprint") != data_fingerprint:
        reasons.append(f"it gated other data or another split ({data.get('source', '?')}, "
                       f"{data.get('pairs', '?')} pairs, fingerprint {str(data.get('fingerprint'))[:12]}; this run: "
                       f"{data_fingerprint[:12]}). Use the same --data, --max-samples, --split, --valid-fraction "
                       f"and --seed as the baseline")
    if facts.get("base_fingerprint") != base_fingerprint:
        reasons.append(f"it was made on another base ({facts.get('base_model', '?')}, weights sha256 "
                       f"{str(facts.get('base_fingerprint'))[:12]}; this run: {base_fingerprint[:12]}). Compare "
                       f"adapters of the same base, or make a new baseline on this one")
    return "; and ".join(reasons) if reasons else None


def baseline(run: GateRun) -> dict[str, Any]:
    """The --baseline results, refused (ConfigError) unless made on the same data, split and base."""
    def load() -> dict[str, Any]:
        path = run.settings(FAMILY).baseline
        if path is None:
            raise ConfigError("--baseline", None, "a results.json of an earlier run", "Regression claims need one.")
        data = load_results(path)
        why = mismatch(data, run.base_fingerprint, run.pairs.fingerprint())
        if why is not None:
            raise ConfigError("--baseline", str(path), "a results.json made on the same data and base as this run",
                              f"Refused, not compared: {why}.")
        return data
    return run.stages.once(BASELINE, load)


def active_baseline(run: GateRun) -> Mapping[str, Any] | None:
    """The --baseline results when this run compares against one (for the families' plans), else None."""
    return baseline(run) if FAMILY.absent(run.cfg) is None else None


def passed_gating_claims(results: Mapping[str, Any]) -> list[str]:
    """Ids of the baseline's gating claims that passed: each must still pass."""
    return sorted(c["id"] for c in results["claims"] if c["gating"] and c["applicable"] and c["passed"])


def still_passes(claim_id: str, current: Claim | None, why_missing: str = "") -> Claim:
    """The claim that passed in the baseline passes now (with this run's thresholds); inconclusive now is
    inconclusive here, never a pass."""
    cid = STILL.id(claim_id)
    if current is None:
        return Claim(cid, False, None, "passes as in the baseline", "", None,
                     f"{claim_id} passed in the baseline but this run cannot compute it: {why_missing}",
                     applicable=False)
    if not current.applicable:
        return Claim(cid, False, current.value, "passes as in the baseline", "", current.n,
                     f"{claim_id} passed in the baseline; now not applicable: {current.message}", applicable=False)
    verb = {"pass": "still passes", "fail": "REGRESSED: passed in the baseline, fails now",
            "inconclusive": "passed in the baseline, and this run cannot show it"}[current.outcome]
    return Claim(cid, current.passed, current.value, "passes as in the baseline", current.uncertainty, current.n,
                 f"{claim_id} {verb}: {current.message}", inconclusive=current.inconclusive,
                 n_needed=current.n_needed)


def _still(run: GateRun, claim_id: str) -> Claim:
    found = run.resolve(claim_id)
    if found is None:
        return still_passes(claim_id, None, "no claim family of this run makes it (a family from a package that is "
                                            "not installed here?)")
    family, kind, arg = found
    if (why := family.absent(run.cfg)) is not None:
        return still_passes(claim_id, None, f"this run does not make it: {why}")
    if arg is not None and family.arguments and not kind.holds_claim and arg not in family.arguments(run, kind):
        return still_passes(claim_id, None, f"this run makes no {kind.name} claim for {arg!r}: pass the same options "
                                            f"as the baseline")
    current = run.claim(claim_id)
    return still_passes(claim_id, current, "" if current is not None else (
        family.unavailable(run.cfg, arg) if family.unavailable else "this machine does not make it"))


def claims(run: GateRun, item: str | None) -> list[Claim]:
    """still-passes[CLAIM] for a claim of the baseline; not-lower[RATE] for a rate kind of this run."""
    assert item is not None
    found = run.resolve(item)
    if found is not None and found[1].rate and found[0].not_lower is not None and found[2] is None:
        current = run.claim(item)
        lower = found[0].not_lower(run, baseline(run), found[1], LOWER.id(item)) if current is not None else None
        return [_still(run, item)] + ([lower] if lower is not None else [])
    return [_still(run, item)]


def _arguments(run: GateRun, kind: Kind) -> tuple[str, ...]:
    if kind is STILL:
        return tuple(passed_gating_claims(load_results(run.settings(FAMILY).baseline)))
    return tuple(k.id() for f in run.families if f.not_lower and f.absent(run.cfg) is None for k in f.kinds
                 if k.rate and k.over is None)


FAMILY = Family(
    "regression", (STILL, LOWER), claims, needs=frozenset({"data"}), settings=Settings, options=OPTIONS,
    per_item=True, rank=90, arguments=_arguments, reference=True,
    absent=lambda cfg: None if cfg.settings_of(FAMILY).baseline else (
        "no --baseline given: pass the results.json of the last release to compare against it"),
    check=baseline, doc="Against the last release: what passed then passes now, and the headline rates did not "
                        "drop beyond their margin.")
