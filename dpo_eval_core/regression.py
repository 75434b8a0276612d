"""Compare a run with the results.json of an earlier release (--baseline).

A baseline is only comparable when it gated the same pairs with the same split on the same base
weights; anything else is refused with the reason. Then: every gating claim that passed in the
baseline must still pass, and the headline rates must not have dropped: by an exact McNemar test on
the pairs both runs scored where the baseline recorded per-pair values, else beyond both intervals.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .claims import Claim
from .compare import PairedComparison, match
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
    """The claim that passed in the baseline passes now (with this run's thresholds)."""
    cid = f"still-passes[{claim_id}]"
    if current is None:
        return Claim(cid, False, None, "passes as in the baseline", "", None,
                     f"{claim_id} passed in the baseline but this run cannot compute it: {why_missing}",
                     applicable=False)
    if not current.applicable:
        return Claim(cid, False, current.value, "passes as in the baseline", "", current.n,
                     f"{claim_id} passed in the baseline; now not applicable: {current.message}", applicable=False)
    verb = "still passes" if current.passed else "REGRESSED: passed in the baseline, fails now"
    return Claim(cid, current.passed, current.value, "passes as in the baseline", current.uncertainty, current.n,
                 f"{claim_id} {verb}: {current.message}")


def _interval(c: Mapping[str, Any] | Claim) -> tuple[float, float, float] | None:
    get = c.get if isinstance(c, Mapping) else lambda k: getattr(c, k)
    ci, value = get("ci"), get("value")
    if not ci or value is None or any(x is None or math.isnan(x) for x in (*ci, value)):
        return None
    return float(value), float(ci[0]), float(ci[1])


PER_PAIR = {"reward-accuracy": "correct", "reward-accuracy-per-token": "correct_per_token"}
"""Rates whose per-pair values results.json records (under "rewards", with the pair ids)."""


def paired_values(baseline: Results, current: Mapping[str, Any], claim_id: str
                  ) -> tuple[np.ndarray, np.ndarray] | str:
    """(this run's, the baseline's) per-pair values of a rate on the pairs both scored, matched by pair id;
    or why there are none (the rate is not per pair, or the baseline predates per-pair values)."""
    field = PER_PAIR.get(claim_id)
    if field is None:
        return f"{claim_id} is a rate over features, not pairs"
    old = baseline.get("rewards") or {}
    if not old.get("pair_ids") or not old.get(field):
        return "the baseline records no per-pair values (it was made by an older dpo-eval)"
    return match(current["pair_ids"], current[field], old["pair_ids"], old[field])


def not_lower_paired(claim_id: str, test: PairedComparison, alpha: float, interval: Claim) -> Claim:
    """Holds unless the baseline is right on significantly more of the shared pairs than this run (exact
    McNemar on the pairs where exactly one is right: the per-pair values of both runs, not two summaries),
    or this run's interval lies wholly below the baseline's (`interval`, the rule without pairs, kept: on a
    handful of pairs a drop from all right to all wrong cannot reach alpha by McNemar)."""
    cid, threshold = f"not-lower[{claim_id}]", f"McNemar p >= {alpha} or not lower; intervals overlap"
    if test.n == 0:
        return Claim(cid, False, None, threshold, "", 0, "no pair was scored by both runs", applicable=False)
    lower = test.prefers(alpha) == "other"
    d, lo, hi = test.difference
    how = "REGRESSED: lower than" if lower else "not significantly lower than"
    also = ("" if interval.passed or not interval.applicable else
            f"; REGRESSED by the interval rule: {interval.message}")
    return Claim(cid, not lower and (interval.passed or not interval.applicable), d, threshold,
                 f"paired CI [{lo:.4g}, {hi:.4g}], p={test.p_value:.3g}", test.n,
                 f"{claim_id} {test.candidate:.4g} now, {how} the baseline's {test.other:.4g} on the same {test.n} "
                 f"pairs: {test.worse} pairs lost, {test.better} gained, exact McNemar p={test.p_value:.3g} "
                 f"(paired); difference {d:+.4g} [{lo:+.4g}, {hi:+.4g}]{also}", ci=(lo, hi))


def not_lower(claim_id: str, baseline_claim: Mapping[str, Any] | None, current: Claim, why_unpaired: str = ""
              ) -> Claim:
    """Holds unless this run's interval lies wholly below the baseline's: a drop beyond both
    uncertainties (non-overlapping 95% intervals; conservative, so noise alone rarely fails it). The
    fallback where no paired test is possible: `why_unpaired` says why, in the message."""
    cid = f"not-lower[{claim_id}]"
    note = f" (interval rule: {why_unpaired})" if why_unpaired else ""
    threshold = "CI high >= baseline CI low"
    if baseline_claim is None or (b := _interval(baseline_claim)) is None:
        return Claim(cid, False, None, threshold, "", None,
                     f"the baseline has no interval for {claim_id}, so a drop cannot be measured",
                     applicable=False)
    if (c := _interval(current)) is None:
        return Claim(cid, False, current.value, threshold, "", current.n,
                     f"{claim_id} has no interval in this run ({current.message}); baseline {b[0]:.4g} "
                     f"[{b[1]:.4g}, {b[2]:.4g}]")
    ok = c[2] >= b[1]
    how = "within the uncertainty of" if ok else "REGRESSED: the intervals do not overlap, below"
    return Claim(cid, ok, c[0] - b[0], threshold, f"now [{c[1]:.4g}, {c[2]:.4g}], baseline [{b[1]:.4g}, {b[2]:.4g}]",
                 current.n, f"{claim_id} {c[0]:.4g} [{c[1]:.4g}, {c[2]:.4g}] {how} the baseline's {b[0]:.4g} "
                            f"[{b[1]:.4g}, {b[2]:.4g}]{note}")
