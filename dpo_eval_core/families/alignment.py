"""Tuned answers differ from base answers, in the direction the preference data points: per feature, as a
rate over the data-signal features, and as the share of answers the adapter changes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from .. import compare as CMP
from .. import decide as D
from .. import report as H
from ..agreement import Components, Votes, components, signal_columns, votes
from ..claims import Claim, decided, fmt, low_n, not_worse, paired_test, percent, rate_above, rate_floor
from ..errors import ConfigError
from ..family import Family, Kind
from ..features import FEATURE_NAMES
from ..stats import FeatureStat, sign
from .data_signal import data_stats, signal_features, stats
from ..stages import Stage

if TYPE_CHECKING:
    from ..run import GateRun

FEATURE_STATS: Stage[list[FeatureStat]] = Stage("feature stats")
COMPONENTS: Stage[Components] = Stage("agreement components")
VOTES: Stage[Votes] = Stage("agreement votes")

DIFFERS = Kind("tuned-differs", "tuned and base answers differ in this feature (valid split)", over="FEATURE",
               gates=False, detail=True)
AGREES = Kind("sign-agreement", "tuned - base moves the same way as chosen - rejected", over="FEATURE", gates=False,
              detail=True)
RATE = Kind("sign-agreement-rate", "share of the data's independent signal directions (principal components) in which "
            "tuned - base follows the preference, beyond the pull toward the data's texts: CI lower bound above the "
            "threshold", rate=True, validity=True)
CHANGES = Kind("adapter-changes-answers", "a share of the valid-split answers differs from the base model's: CI "
                                          "lower bound above 0", gates=False)
DIRECTION = AGREES.name
"""What `not-worse[...]` compares: each adapter's vote per independent signal direction of the data."""


@dataclass(frozen=True, slots=True)
class Settings:
    min_agreement: float = 0.5
    """sign-agreement-rate passes when the lower bound of its exact interval is above this share of the data's
    independent signal directions: 0.5 is what an adapter that moves answers in a random direction scores
    (each direction is then a fair coin), so a pass shows that the adapter follows the preference."""
    max_agreement_drop: float = 0.1
    """Margin of not-worse[sign-agreement] and not-lower[sign-agreement-rate], in share of the data's
    independent signal directions (57 on the demo): a tenth is the smallest drop a run can resolve."""

    def __post_init__(self) -> None:
        for name in ("min_agreement", "max_agreement_drop"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"alignment.{name}", getattr(self, name), "a number in [0, 1]")


def feature_stats(run: GateRun) -> list[FeatureStat]:
    """Per-feature statistics of all four roles (its chosen-rejected tests equal data_stats')."""
    return run.stages.once(FEATURE_STATS, lambda: stats(run, {**run.data_features, **run.answer_features}))


def agreement_components(run: GateRun) -> Components:
    """The independent directions (principal components) of the data-signal features' chosen - rejected
    differences on the train split that carry data signal: data only, the same for every adapter."""
    def compute() -> Components:
        g, st = run.cfg.gate, data_stats(run)
        scale = [f.scale for f in st]
        cols = signal_columns(FEATURE_NAMES, {f.feature for f in signal_features(st, g.alpha)}, scale)
        train = np.array([p.split == "train" for p in run.pairs.pairs])
        d_cr = run.data_features["chosen"] - run.data_features["rejected"]  # NaN where either is undefined
        return components(d_cr[train][:, cols], [FEATURE_NAMES[j] for j in cols], [scale[j] for j in cols],
                          g.alpha, g.correction)
    return run.stages.once(COMPONENTS, compute)


def agreement_votes(run: GateRun, answer_features: Mapping[str, np.ndarray] | None = None) -> Votes:
    """Each independent direction's vote: does tuned - base follow the preference there, once the pull toward
    the data's texts is projected out? (`answer_features`: another adapter's tuned answers, for --compare.)"""
    def compute() -> Votes:
        comps = agreement_components(run)
        cols = [FEATURE_NAMES.index(f) for f in comps.features]
        values = {**run.data_features, **(answer_features or run.answer_features)}
        train = np.array([p.split == "train" for p in run.pairs.pairs])
        return votes({r: np.asarray(values[r])[:, cols] for r in ("chosen", "rejected", "tuned", "base")}, train,
                     comps)
    return compute() if answer_features is not None else run.stages.once(VOTES, compute)


def agreement_rate(v: Votes, n_features: int, s: Settings, gate: Any) -> Claim:
    """sign-agreement-rate: k of the K independent signal directions follow the preference, on the exact
    interval over directions (each a fair coin for an adapter that moves in a random direction)."""
    k, n = v.agreeing, v.k
    # projecting the general pull out of the votes spends one direction: decided as k - 1 agreeing of n - 1
    # (with all n counted, 20 valid pairs on UltraFeedback's 6 directions passed random adapters 0.029)
    kd, nd = max(k - 1, 0), max(n - 1, 0)
    rate, lo, hi, bounds = D.proportion_bounds(kd, nd, gate.ci_level, gate.sized_at)
    d = D.above(rate, lo, hi, s.min_agreement, nd, rate_floor(gate), bounds if nd else None)
    ci = f"{percent(gate.ci_level)} Clopper-Pearson CI [{lo:.3f}, {hi:.3f}] on {kd} of {nd}"
    more = ("; the directions come from the data: more train pairs with chosen and rejected that differ give "
            "more of them" if d.outcome == "inconclusive" else "")
    return decided(RATE.id(), d, f"CI low > {s.min_agreement}", ci, value=k / n if n else None,
                   message=f"{k} of {n} independent signal directions of the data (principal components of {n_features} "
                   f"data-signal features) move the preference's way once the pull toward the data's texts is "
                   f"taken out (rate {fmt(k / n if n else float('nan'))}; {ci}, one direction spent on the projection; "
                   f"need CI low > {s.min_agreement}){more}",
                   units="signal directions")


def alignment(stats: Sequence[FeatureStat], s: Settings, gate: Any, rate: tuple[Votes, int] | None = None,
              empty_roles: Sequence[str] = ()) -> list[Claim]:
    """tuned vs base per feature and sign agreement per signal feature (the method's per-feature view), and the
    agreement rate over the data's independent signal directions (`rate`: their votes and the number of
    features they come from). `empty_roles` names answer sets (tuned, base) in which every answer is empty:
    nothing can pass then."""
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
    if rate is None or rate[0].k == 0:
        return claims + [Claim(RATE.id(), False, None, f"CI low > {s.min_agreement}", "", 0,
                               "no direction of the data has data signal, so agreement cannot be measured")]
    return claims + [agreement_rate(*rate, s, gate)]


def changed_answers(run: GateRun) -> Claim:
    """Share of valid-split prompts whose tuned answer differs from the base answer (greedy: a zero adapter
    gives 0; a weak one leaves many answers as they were), on its exact interval."""
    tuned, base = run.answers["tuned"], run.answers["base"]
    changed = [t.text != b.text for i in run.valid_index if (t := tuned[i]) and (b := base[i])]
    if not any(changed):
        return Claim(CHANGES.id(), False, 0.0 if changed else None, "CI low > 0", "", len(changed),
                     f"none of the {len(changed)} valid-split answers differs from the base model's")
    return rate_above(CHANGES.id(), sum(changed), len(changed), 0.0, run.gate,
                      "valid-split answers that differ from the base model's: share", units="answers")


def claims(run: GateRun, _: str | None) -> list[Claim]:
    empty = [role for role, gens in run.answers.items()
             if (given := [g for g in gens if g is not None]) and all(not g.text.strip() for g in given)]
    comps = agreement_components(run)
    rate = (agreement_votes(run), comps.n_features) if comps.k else None
    return alignment(feature_stats(run), run.settings(FAMILY), run.gate, rate, empty) + [changed_answers(run)]


def compare(run: GateRun, other: GateRun, what: str, cid: str) -> tuple[Claim, Any]:
    """Each adapter's vote per independent signal direction (its answers minus the base's, the preference's
    way beyond the general pull), paired by direction; the per-feature shifts between the two beside it."""
    g, s = run.gate, run.settings(FAMILY)
    valid = np.array([p.split == "valid" for p in run.pairs.pairs])
    signal = {f.feature: f for f in signal_features(data_stats(run), g.alpha)}
    scale = {f.feature: f.scale for f in data_stats(run)}
    shifts = CMP.feature_shifts(
        run.answer_features["tuned"][valid], other.answer_features["tuned"][valid], FEATURE_NAMES,
        [scale[f] for f in FEATURE_NAMES], [sign(signal[f].cr_train) if f in signal else 0 for f in FEATURE_NAMES],
        g.correction)
    mine = agreement_votes(run)
    theirs = agreement_votes(run, {"tuned": other.answer_features["tuned"], "base": run.answer_features["base"]})
    c = CMP.compare_correct(what, np.array(mine.agrees), np.array(theirs.agrees))
    if c.n == 0:
        return Claim(cid, False, None, "", "", 0, "the data has no signal direction (train split), so there is no "
                     f"direction to compare the answers in: nothing to compare with {other.label}",
                     applicable=False), {"items": {what: c}, "features": shifts}
    return not_worse(cid, c, s.max_agreement_drop, f"max_agreement_drop {s.max_agreement_drop}", g, "this adapter",
                     other.label, units="signal directions",
                     unit="signal directions"), {"items": {what: c}, "features": shifts}


def regressed(now: Votes, baseline: Mapping[str, Any], s: Settings, gate: Any, cid: str) -> Claim:
    """The agreement rate against the baseline's, paired by signal direction (the directions come from the
    data, so the same data gives the same ones; they are matched by name)."""
    old = {d["name"]: d["agrees"] for d in (baseline.get("agreement") or {}).get("directions", [])}
    if not old:
        return Claim(cid, False, None, "", "", 0, "the baseline records no votes per signal direction (made by an "
                     "older dpo-eval, whose per-feature count was not independent evidence): re-run the baseline",
                     applicable=False)
    names = [n for n in now.names if n in old]
    if not names:
        return Claim(cid, False, None, "", "", 0, "no signal direction of this run's data is in the baseline "
                     "(another data set, or other data-signal features)", applicable=False)
    agrees = dict(zip(now.names, now.agrees))
    c = CMP.compare_correct(RATE.name, np.array([agrees[n] for n in names]), np.array([old[n] for n in names]))
    return not_worse(cid, c, s.max_agreement_drop, f"max_agreement_drop {s.max_agreement_drop}", gate,
                     f"{RATE.name} now", "the baseline's", worse="REGRESSED", units="signal directions",
                     unit="signal directions")


def not_lower(run: GateRun, baseline: Mapping[str, Any], kind: Kind, cid: str) -> Claim:
    return regressed(agreement_votes(run), baseline, run.settings(FAMILY), run.gate, cid)


def _section(run: GateRun) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if FEATURE_STATS in run.stages:
        out["features"] = run.stages.computed(FEATURE_STATS)
    comps = run.stages.computed(COMPONENTS)
    if comps is not None and comps.k and "answer_features" in run.__dict__:
        v = agreement_votes(run)
        out["agreement"] = {"n_features": comps.n_features, "directions": [
            {"name": n, "variance_share": w, "p_adj": p, "preference": a, "general": b, "shift": t, "agrees": y}
            for n, w, p, a, b, t, y in zip(v.names, comps.variance_share, comps.p_adj, v.preference, v.general,
                                           v.shift, v.agrees)]}
    return out


def report(results: Mapping[str, Any]) -> str:
    """tuned - base against the data's direction, for the data-signal features, and the votes of the data's
    independent signal directions that the rate counts."""
    signal = {c["id"].partition("[")[2][:-1] for c in results.get("claims", [])
              if c["id"].startswith(AGREES.name + "[") and c["applicable"]}
    features = results.get("features") or []
    out = H.section("Sign agreement per feature", H.sign_agreement_plot(features, signal) if features else None)
    found = results.get("agreement")
    if found:
        rows = "".join(H.cells((d["name"], f"{d['variance_share']:.3f}", f"{d['preference']:+.3f}",
                                f"{d['general']:+.3f}", f"{d['shift']:+.3f}", "yes" if d["agrees"] else "no"))
                       for d in found["directions"])
        out += ("<h3>Independent signal directions (what sign-agreement-rate counts)</h3><p>Principal components "
                f"of the {found['n_features']} data-signal features' chosen - rejected differences; a direction "
                "agrees when the tuned - base shift follows the preference once the pull toward the data's texts "
                "(general) is projected out.</p><table class='dpo-eval-directions'>"
                + H.cells(("direction", "variance share", "preference", "general pull", "tuned - base", "agrees"),
                          "th") + rows + "</table>")
    return out


def plan(run: GateRun) -> list[Any]:
    """sign-agreement-rate over the data's directions; with --baseline, not-lower[sign-agreement-rate] too, whose
    directions vote independently (each changes with probability 2 p (1 - p) at the baseline's rate p)."""
    from ..plan import Assumptions, agreement_chance, not_lower_chance
    from .regression import LOWER, active_baseline

    s, k = run.settings(FAMILY), agreement_components(run).k
    rows = [agreement_chance(RATE.id(), k, s.min_agreement, run.look.tail, Assumptions())]
    old = [d["agrees"] for d in ((active_baseline(run) or {}).get("agreement") or {}).get("directions", [])]
    if old:
        p = float(np.mean(old))
        rows.append(not_lower_chance(LOWER.id(RATE.id()), k, "signal directions", p, 2 * p * (1 - p),
                                     s.max_agreement_drop, run.look.tail))
    return rows


FAMILY = Family(
    "alignment", (DIFFERS, AGREES, RATE, CHANGES), claims, needs=frozenset({"answers"}), settings=Settings, rank=50,
    arguments=lambda run, kind: FEATURE_NAMES, accepts=lambda kind, arg: arg in FEATURE_NAMES,
    section=_section, plan=plan,
    report=report, compared=lambda run: (DIRECTION,), compare=compare, not_lower=not_lower,
    doc="Tuned answers differ from base answers, in the direction the preference data points.")
