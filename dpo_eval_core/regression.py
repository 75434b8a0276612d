"""Compare a run with the results.json of an earlier release (--baseline).

A baseline is only comparable when it gated the same pairs with the same split on the same base
weights; anything else is refused with the reason. Then: every gating claim that passed in the
baseline must still pass, and the headline rates must not have dropped by more than their margin: a
non-inferiority decision (decide.py) on the items both runs have (pairs matched by id, or data-signal
features matched by name), or, where the baseline recorded no per-item values, on Newcombe's interval
for two independent proportions, and the message says it is unpaired.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from . import decide as D
from .claims import Claim, decided, margin_for, not_worse_message
from .compare import compare_correct, match
from .config import GateConfig
from .errors import ConfigError
from .results import load_results

Results = Mapping[str, Any]



def mismatch(baseline: Results, base_fingerprint: str, data_fingerprint: str) -> str | None:
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


def load_baseline(path: Path, base_fingerprint: str, data_fingerprint: str) -> dict[str, Any]:
    """The --baseline results, refused (ConfigError) unless made on the same data, split and base."""
    baseline = load_results(path)
    why = mismatch(baseline, base_fingerprint, data_fingerprint)
    if why is not None:
        raise ConfigError("--baseline", str(path), "a results.json made on the same data and base as this run",
                          f"Refused, not compared: {why}.")
    return baseline


def passed_gating_claims(baseline: Results) -> list[str]:
    """Ids of the baseline's gating claims that passed: each must still pass."""
    return sorted(c["id"] for c in baseline["claims"] if c["gating"] and c["applicable"] and c["passed"])


def still_passes(claim_id: str, current: Claim | None, why_missing: str = "") -> Claim:
    """The claim that passed in the baseline passes now (with this run's thresholds); inconclusive now is
    inconclusive here, never a pass."""
    cid = f"still-passes[{claim_id}]"
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


PER_PAIR = {"reward-accuracy": "correct", "reward-accuracy-per-token": "correct_per_token"}
"""Rates whose per-pair values results.json records (under "rewards", with the pair ids)."""
PER_FEATURE = "sign-agreement-rate"
"""The rate over data-signal features: results.json records each one's sign agreement (its claims)."""


def agreement_by_feature(claims: Any) -> dict[str, bool]:
    """{feature: agrees} over the data-signal features, from claim records or Claims (sign-agreement[F])."""
    out = {}
    for c in claims:
        get = c.get if isinstance(c, Mapping) else lambda k, c=c: getattr(c, k)
        cid = get("id")
        if cid.startswith("sign-agreement[") and get("applicable") and get("value") is not None:
            out[cid[len("sign-agreement["):-1]] = get("value") > 0
    return out


def paired_values(baseline: Results, current: Mapping[str, Any], claim_id: str
                  ) -> tuple[np.ndarray, np.ndarray] | str:
    """(this run's, the baseline's) per-item values of a rate on the items both have: pairs matched by id, or
    data-signal features by name; or why there are none (the baseline predates per-item values)."""
    if claim_id == PER_FEATURE:
        old = agreement_by_feature(baseline.get("claims", []))
        if not old:
            return "the baseline records no per-feature sign agreement"
        names = sorted(set(old) & set(current["agreement"]))
        return (np.array([current["agreement"][f] for f in names], dtype=float),
                np.array([old[f] for f in names], dtype=float))
    field = PER_PAIR.get(claim_id)
    if field is None:
        return f"{claim_id} has no per-item values"
    old = baseline.get("rewards") or {}
    if not old.get("pair_ids") or not old.get(field):
        return "the baseline records no per-pair values (it was made by an older dpo-eval)"
    return match(current["pair_ids"], current[field], old["pair_ids"], old[field])


def not_lower_paired(claim_id: str, this: np.ndarray, old: np.ndarray, gate: GateConfig) -> Claim:
    """This run's rate is not below the baseline's by more than the margin, on the items both have (Tango's
    paired score interval)."""
    cid = f"not-lower[{claim_id}]"
    c = compare_correct(claim_id, this, old)
    if c.n == 0:
        return Claim(cid, False, None, "", "", 0, "no item was scored by both runs", applicable=False)
    margin, text = margin_for(claim_id, c.other, gate)
    d = c.decide(gate.alpha, margin)
    return decided(cid, d, f"lower bound > -{margin:.4g}", f"paired [{d.low:+.4g}, {d.high:+.4g}]",
                   not_worse_message(c, d, gate, text, f"{claim_id} now", "the baseline's", worse="REGRESSED"),
                   units="features" if claim_id == PER_FEATURE else "pairs")


def not_lower(claim_id: str, baseline_claim: Mapping[str, Any] | None, current: Claim, gate: GateConfig,
              why_unpaired: str) -> Claim:
    """Where no per-item values exist: non-inferiority on Newcombe's interval for two independent proportions
    (this run's k of n against the baseline's), with the reason it is unpaired in the message."""
    cid = f"not-lower[{claim_id}]"
    threshold = "lower bound > -margin"
    if baseline_claim is None or baseline_claim.get("value") is None or not baseline_claim.get("n"):
        return Claim(cid, False, None, threshold, "", None,
                     f"the baseline has no value for {claim_id}, so a drop cannot be measured", applicable=False)
    if current.value is None or not current.n or math.isnan(current.value):
        return Claim(cid, False, current.value, threshold, "", current.n,
                     f"{claim_id} has no value in this run ({current.message})", inconclusive=True)
    margin, text = margin_for(claim_id, float(baseline_claim["value"]), gate)
    n1, n2 = int(current.n), int(baseline_claim["n"])
    k1, k2 = round(current.value * n1), round(float(baseline_claim["value"]) * n2)
    level = 1 - 2 * gate.alpha
    lo, hi = D.newcombe_unpaired(k1, n1, k2, n2, level)
    at = lambda m: D.newcombe_unpaired(k1 * m / n1, m, k2 * m / n2, m, level)  # noqa: E731
    d = D.not_worse(k1 / n1 - k2 / n2, lo, hi, margin, min(n1, n2), D.min_items(gate.alpha), at)
    verdict = {"pass": "not lower beyond the margin", "fail": "REGRESSED: the drop is shown to exceed the margin",
               "inconclusive": "the data cannot tell whether the drop is within the margin"}[d.outcome]
    return decided(cid, d, f"lower bound > -{margin:.4g}", f"unpaired [{lo:+.4g}, {hi:+.4g}]",
                   f"{claim_id} {k1 / n1:.4g} ({k1} of {n1}) now against the baseline's {k2 / n2:.4g} ({k2} of {n2}): "
                   f"difference {d.estimate:+.4g}, one-sided {1 - gate.alpha:.0%} bounds [{lo:+.4g}, {hi:+.4g}] "
                   f"(Newcombe, unpaired: {why_unpaired}); margin {text}; {verdict}")
