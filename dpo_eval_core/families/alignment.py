"""Tuned answers differ from base answers, in the direction the preference data points: per feature, as a
rate over the data-signal features, and as the share of answers the adapter changes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from .. import compare as CMP
from .. import decide as D
from .. import report as H
from ..claims import Claim, decided, fmt, low_n, not_worse, paired_test, rate_above, rate_floor
from ..errors import ConfigError
from ..family import Family, Kind
from ..features import FEATURE_NAMES
from ..stats import FeatureStat, agreement_difference_ci, agreement_flags, differences, sign, signal_agreement_ci
from .data_signal import data_stats, signal_features, stats

if TYPE_CHECKING:
    from ..run import GateRun

DIFFERS = Kind("tuned-differs", "tuned and base answers differ in this feature (valid split)", over="FEATURE",
               gates=False, detail=True)
AGREES = Kind("sign-agreement", "tuned - base moves the same way as chosen - rejected", over="FEATURE", gates=False,
              detail=True)
RATE = Kind("sign-agreement-rate", "share of data-signal features that agree is at least the threshold", rate=True,
            validity=True)
CHANGES = Kind("adapter-changes-answers", "a share of the valid-split answers differs from the base model's: CI "
                                          "lower bound above 0", gates=False)
DIRECTION = AGREES.name
"""What `not-worse[...]` compares: each adapter's sign agreement per data-signal feature."""


@dataclass(frozen=True, slots=True)
class Settings:
    min_agreement: float = 0.5
    """sign-agreement-rate passes when the lower bound of its interval is above this share of data-signal
    features: 0.5 is what an adapter that moves answers in no particular direction scores, so a pass shows
    that more features move the data's way than chance would."""
    max_agreement_drop: float = 0.1
    """Margin of not-worse[sign-agreement] and not-lower[sign-agreement-rate], in share of data-signal features:
    real data has 15 to 60 signal features (16 on UltraFeedback, 58 on the demo), so one feature is 0.02 to
    0.07 of the rate; a tenth is the smallest drop a run can resolve."""

    def __post_init__(self) -> None:
        for name in ("min_agreement", "max_agreement_drop"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"alignment.{name}", getattr(self, name), "a number in [0, 1]")


def feature_stats(run: GateRun) -> list[FeatureStat]:
    """Per-feature statistics of all four roles (its chosen-rejected tests equal data_stats')."""
    return run.stage("feature stats", lambda: stats(run, {**run.data_features, **run.answer_features}))


def agreement_ci(run: GateRun) -> tuple[float, float]:
    """Bootstrap interval of the sign-agreement rate over the data-signal features (valid split)."""
    g = run.cfg.gate
    signal = {s.feature for s in signal_features(data_stats(run), g.alpha)}
    return signal_agreement_ci({**run.data_features, **run.answer_features}, [p.split for p in run.pairs.pairs],
                               FEATURE_NAMES, signal, g.ci_level, g.n_bootstrap, np.random.default_rng(run.cfg.seed))


def agreement_rate(k: int, n: int, pairs_ci: tuple[float, float], s: Settings, gate: Any) -> Claim:
    """sign-agreement-rate: k of n data-signal features move the data's way. Two doubts, both kept: the
    features are few (an exact interval over them) and each one's direction is measured on few pairs (a
    bootstrap over the pairs, which keeps the features' correlation). The claim is decided on the union of
    the two intervals."""
    rate, lo_f, hi_f, bounds = D.proportion_bounds(k, n, gate.ci_level)
    lo_p, hi_p = pairs_ci
    lo = lo_f if math.isnan(lo_p) else min(lo_f, lo_p)
    hi = hi_f if math.isnan(hi_p) else max(hi_f, hi_p)
    d = D.above(rate, lo, hi, s.min_agreement, n, rate_floor(gate), bounds)
    ci = f"{gate.ci_level:.0%} CI [{lo:.3f}, {hi:.3f}]"
    return decided(RATE.id(), d, f"CI low > {s.min_agreement}", ci,
                   f"{k} of {n} data-signal features move the data's way (rate {fmt(rate)}, {ci}: the union of "
                   f"the exact interval over features [{lo_f:.3f}, {hi_f:.3f}] and the bootstrap over pairs "
                   f"[{fmt(lo_p)}, {fmt(hi_p)}]; need CI low > {s.min_agreement})", units="features")


def alignment(stats: Sequence[FeatureStat], s: Settings, gate: Any,
              rate_ci: tuple[float, float] = (math.nan, math.nan), empty_roles: Sequence[str] = ()) -> list[Claim]:
    """tuned vs base per feature, sign agreement per signal feature, and the agreement rate.
    `empty_roles` names answer sets (tuned, base) in which every answer is empty: nothing can pass then."""
    if empty_roles:
        why = (f"every {' and every '.join(empty_roles)} answer is empty (the model emitted EOS first), so there is "
               f"no text to compare; check the chat template, EOS ids and --max-new-tokens")
        return [Claim(k.id(f.feature), False, None, "", "", 0, why) for k in (DIFFERS, AGREES) for f in stats] + [
            Claim(RATE.id(), False, None, "", "", 0, why)]
    claims = [paired_test(DIFFERS.id(f.feature), f.p_tb, f.p_tb_adj, f.r_tb, f.n_valid, f.n_tb_nonzero,
                          f"avg(tuned-base)/S = {fmt(f.tb_valid)} [{fmt(f.tb_valid_ci[0])}, "
                          f"{fmt(f.tb_valid_ci[1])}] on valid", gate) for f in stats]
    signal = {f.feature for f in signal_features(stats, gate.alpha)}
    for f in stats:
        if f.feature not in signal:
            claims.append(Claim(AGREES.id(f.feature), False, None, "data signal first", f"p_cr_adj={fmt(f.p_cr_adj)}",
                                f.n_valid, f"skipped: no data signal for this feature (p_adj={fmt(f.p_cr_adj)} >= "
                                f"{gate.alpha})", applicable=False))
            continue
        claims.append(Claim(AGREES.id(f.feature), f.sign_agreement > 0, float(f.sign_agreement),
                            "+1 (same direction)", "", f.n_valid,
                            f"chosen-rejected {fmt(f.cr_valid)}, tuned-base {fmt(f.tb_valid)} "
                            f"[{fmt(f.tb_valid_ci[0])}, {fmt(f.tb_valid_ci[1])}] (normalised, valid split)"
                            + low_n(f.n_valid)))
    agree = [f.sign_agreement > 0 for f in stats if f.feature in signal]
    if not agree:
        return claims + [Claim(RATE.id(), False, None, f"CI low > {s.min_agreement}", "", 0,
                               "no feature has data signal, so agreement cannot be measured")]
    return claims + [agreement_rate(sum(agree), len(agree), rate_ci, s, gate)]


def changed_answers(run: GateRun) -> Claim:
    """Share of valid-split prompts whose tuned answer differs from the base answer (greedy: a zero adapter
    gives 0; a weak one leaves many answers as they were), on its exact interval."""
    tuned, base = run.answers["tuned"], run.answers["base"]
    changed = [t.text != b.text for i in run.valid_index if (t := tuned[i]) and (b := base[i])]
    if not any(changed):
        return Claim(CHANGES.id(), False, 0.0 if changed else None, "CI low > 0", "", len(changed),
                     f"none of the {len(changed)} valid-split answers differs from the base model's")
    return rate_above(CHANGES.id(), sum(changed), len(changed), 0.0, run.cfg.gate,
                      "valid-split answers that differ from the base model's: share", units="answers")


def claims(run: GateRun, _: str | None) -> list[Claim]:
    empty = [role for role, gens in run.answers.items()
             if (given := [g for g in gens if g is not None]) and all(not g.text.strip() for g in given)]
    return alignment(feature_stats(run), run.settings(FAMILY), run.cfg.gate, agreement_ci(run), empty) + [
        changed_answers(run)]


def agreement_by_feature(claims: Sequence[Any]) -> dict[str, bool]:
    """{feature: agrees} over the data-signal features, from claim records or Claims (sign-agreement[F])."""
    out = {}
    for c in claims:
        get = c.get if isinstance(c, Mapping) else lambda k, c=c: getattr(c, k)
        head, _, arg = get("id").partition("[")
        if head == AGREES.name and arg and get("applicable") and get("value") is not None:
            out[arg[:-1]] = get("value") > 0
    return out


def compare(run: GateRun, other: GateRun, what: str, cid: str) -> tuple[Claim, Any]:
    """Each adapter's sign agreement (its answers minus the base's, the data's way) per data-signal feature
    on the valid pairs, paired by feature; with the bootstrap over pairs of the two rates' difference."""
    g, s = run.cfg.gate, run.settings(FAMILY)
    valid = np.array([p.split == "valid" for p in run.pairs.pairs])
    signal = {f.feature: f for f in signal_features(data_stats(run), g.alpha)}
    cols = [j for j, f in enumerate(FEATURE_NAMES) if f in signal]
    d_cr, d_a = differences({**run.data_features, **run.answer_features})
    _, d_b = differences({**run.data_features, "tuned": other.answer_features["tuned"],
                          "base": run.answer_features["base"]})
    d_cr, d_a, d_b = (x[valid][:, cols] for x in (d_cr, d_a, d_b))
    boot = agreement_difference_ci(d_cr, d_a, d_b, 1 - 2 * g.alpha, g.n_bootstrap, np.random.default_rng(run.cfg.seed))
    scale = {f.feature: f.scale for f in data_stats(run)}
    shifts = CMP.feature_shifts(
        run.answer_features["tuned"][valid], other.answer_features["tuned"][valid], FEATURE_NAMES,
        [scale[f] for f in FEATURE_NAMES], [sign(signal[f].cr_train) if f in signal else 0 for f in FEATURE_NAMES],
        g.correction)
    c = CMP.compare_correct(what, agreement_flags(d_cr, d_a), agreement_flags(d_cr, d_b), boot)
    if c.n == 0:
        return Claim(cid, False, None, "", "", 0, "the data has no data-signal feature (train split), so there is no "
                     f"direction to compare the answers in: nothing to compare with --compare {other.cfg.adapter}",
                     applicable=False), {"items": {what: c}, "features": shifts}
    return not_worse(cid, c, s.max_agreement_drop, f"max_agreement_drop {s.max_agreement_drop}", g, "this adapter",
                     f"--compare {other.cfg.adapter}", units="data-signal features",
                     unit="data-signal features"), {"items": {what: c}, "features": shifts}


def regressed(now: Mapping[str, bool], baseline: Mapping[str, Any], s: Settings, gate: Any, cid: str) -> Claim:
    """The sign-agreement rate against the baseline's, paired by data-signal feature (`now`: this run's
    {feature: agrees}; the baseline's from its sign-agreement claims)."""
    old = agreement_by_feature(baseline.get("claims", []))
    if not old:
        return Claim(cid, False, None, "", "", 0, "the baseline records no per-feature sign agreement",
                     applicable=False)
    names = sorted(set(old) & set(now))
    c = CMP.compare_correct(RATE.name, np.array([now[f] for f in names], dtype=float),
                            np.array([old[f] for f in names], dtype=float))
    if c.n == 0:
        return Claim(cid, False, None, "", "", 0, "no item was scored by both runs", applicable=False)
    return not_worse(cid, c, s.max_agreement_drop, f"max_agreement_drop {s.max_agreement_drop}", gate,
                     f"{RATE.name} now", "the baseline's", worse="REGRESSED", units="features",
                     unit="data-signal features")


def not_lower(run: GateRun, baseline: Mapping[str, Any], kind: Kind, cid: str) -> Claim:
    now = agreement_by_feature([c for f in FEATURE_NAMES if (c := run.claim(AGREES.id(f))) is not None])
    return regressed(now, baseline, run.settings(FAMILY), run.cfg.gate, cid)


def report(results: Mapping[str, Any]) -> str:
    """tuned - base against the data's direction, for the data-signal features."""
    signal = {c["id"].partition("[")[2][:-1] for c in results.get("claims", [])
              if c["id"].startswith(AGREES.name + "[") and c["applicable"]}
    features = results.get("features") or []
    return H.section("Sign agreement per feature", H.sign_agreement_plot(features, signal) if features else None)


FAMILY = Family(
    "alignment", (DIFFERS, AGREES, RATE, CHANGES), claims, needs=frozenset({"answers"}), settings=Settings, rank=50,
    arguments=lambda run, kind: FEATURE_NAMES, accepts=lambda kind, arg: arg in FEATURE_NAMES,
    section=lambda run: {"features": run.stages["feature stats"]} if "feature stats" in run.stages else {},
    report=report, compared=lambda run: (DIRECTION,), compare=compare, not_lower=not_lower,
    doc="Tuned answers differ from base answers, in the direction the preference data points.")
