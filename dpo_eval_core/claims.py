"""Claims as data: an id that reads as the claim, the measured value, the threshold, the
uncertainty and the verdict (pass, fail or inconclusive). Pure functions from measurements to claims;
the decision rules are in decide.py."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from . import decide as D
from .config import GateConfig
from .compare import PairedComparison
from .forgetting import Accuracy, ForgettingSummary
from .judge import JudgeSummary, win_interval
from .models import AdapterReport
from .rewards import RewardSummary
from .stats import FeatureStat, min_attainable_p, pairs_needed


@dataclass(frozen=True, slots=True)
class Claim:
    id: str
    """Names the claim, not its threshold, so baselines still match after a threshold changes."""
    passed: bool
    value: float | None
    threshold: str
    uncertainty: str
    n: int | None
    message: str
    """One line a reviewer reads: estimate, interval, threshold and n; for a failure, why."""
    applicable: bool = True
    """False when the claim's precondition does not hold (reported as skipped, with the reason)."""
    ci: tuple[float, float] | None = None
    """Confidence interval of `value`, where it has one: baselines are compared through it."""
    inconclusive: bool = False
    """The data could not decide it (neither shown to hold nor shown not to): never a pass."""
    n_needed: int | None = None
    """For an inconclusive claim: the items that would decide it at the estimate and spread this run saw."""

    def family(self) -> str:
        return self.id.split("[")[0]

    @property
    def outcome(self) -> str:
        """'pass', 'fail', 'inconclusive', or 'not applicable'."""
        if not self.applicable:
            return "not applicable"
        return "pass" if self.passed else "inconclusive" if self.inconclusive else "fail"


def decided(cid: str, d: D.Decision, threshold: str, uncertainty: str, message: str, *, value: float | None = None,
            ci: tuple[float, float] | None = None, units: str = "items") -> Claim:
    """A claim from a decision: its outcome, n, interval and, when inconclusive, what would decide it."""
    why = D.describe(d, units)
    return Claim(cid, d.passed, d.estimate if value is None else value, threshold, uncertainty, d.n,
                 message + (f"; {why}" if why else ""), ci=(d.low, d.high) if ci is None else ci,
                 inconclusive=d.outcome == "inconclusive", n_needed=d.n_needed)


def _fmt(x: float) -> str:
    return "nan" if x is None or math.isnan(x) else f"{x:.4g}"


def adapter_loads(report: AdapterReport, adapter: str, base: str) -> Claim:
    ok = report.ok
    msg = (f"{report.matched_modules} modules adapted ({', '.join(report.target_modules)}); "
           f"missing keys {len(report.missing_keys)}, unexpected keys {len(report.unexpected_keys)}")
    if report.missing_keys:
        msg += f"; first missing: {report.missing_keys[0]}"
    if report.unexpected_keys:
        msg += f"; first unexpected: {report.unexpected_keys[0]}"
    return Claim("adapter-loads", ok, float(report.matched_modules), "every adapter tensor matches a base module",
                 "", None, f"{adapter} onto {base}: {msg}")


def _underpowered(cid: str, n_nonzero: int, p_adj: float, gate: GateConfig) -> Claim | None:
    """A failing claim that says how many pairs are needed, when n can never reach alpha; else None."""
    if min_attainable_p(n_nonzero) <= gate.alpha:
        return None
    if n_nonzero == 0:
        return Claim(cid, False, p_adj, f"p_adj < {gate.alpha}", "", 0,
                     "no pair differs in this feature (every difference is zero): nothing to test")
    return Claim(cid, False, p_adj, f"p_adj < {gate.alpha}", "", n_nonzero,
                 f"inconclusive: only {n_nonzero} non-zero differences: the smallest attainable p is "
                 f"{min_attainable_p(n_nonzero):.3g} > alpha {gate.alpha}; at least {pairs_needed(gate.alpha)} "
                 f"pairs with a difference are needed", inconclusive=True, n_needed=pairs_needed(gate.alpha))


LOW_N = 20
"""Fewer valid pairs than this after the NaN drop make a per-feature estimate fragile; claims say so."""


def _low_n(n: int) -> str:
    return f"; only {n} pairs after dropping NaN (fewer than {LOW_N}): fragile" if n < LOW_N else ""


def _paired(cid: str, p: float, p_adj: float, r: float, n: int, n_nonzero: int, estimate: str,
            gate: GateConfig) -> Claim:
    """One per-feature paired Wilcoxon claim: holds when the adjusted p is below alpha."""
    if (short := _underpowered(cid, n_nonzero, p_adj, gate)) is not None:
        return short
    return Claim(cid, bool(p_adj < gate.alpha), p_adj, f"p_adj < {gate.alpha}",
                 f"p={_fmt(p)}, p_adj={_fmt(p_adj)} ({gate.correction}), r={_fmt(r)}", n,
                 f"{estimate}, n={n}, p_adj={_fmt(p_adj)}, rank-biserial r={_fmt(r)}" + _low_n(n))


def data_signal(stats: Sequence[FeatureStat], gate: GateConfig) -> list[Claim]:
    """chosen vs rejected per feature (train split), then the aggregate count."""
    claims = []
    for s in stats:
        claims.append(_paired(f"data-signal[{s.feature}]", s.p_cr, s.p_cr_adj, s.r_cr, s.n_train, s.n_cr_nonzero,
                              f"avg(chosen-rejected)/S = {_fmt(s.cr_train)} on train", gate))
    k = sum(c.passed for c in claims)
    short = sum(0 < s.n_cr_nonzero and min_attainable_p(s.n_cr_nonzero) > gate.alpha for s in stats)
    note = (f"; {short} features cannot reach alpha with this few pairs: at least {pairs_needed(gate.alpha)} "
            f"pairs with a difference are needed") if short else ""
    claims.append(Claim("data-signal", k >= gate.min_signal_features, float(k),
                        f">= {gate.min_signal_features} features", "", len(stats),
                        f"{k} of {len(stats)} features differ chosen vs rejected (alpha {gate.alpha}, "
                        f"{gate.correction}); need {gate.min_signal_features}" + note))
    return claims


def signal_features(stats: Sequence[FeatureStat], gate: GateConfig) -> list[FeatureStat]:
    return [s for s in stats if s.p_cr_adj < gate.alpha and min_attainable_p(s.n_cr_nonzero) <= gate.alpha]


def alignment(stats: Sequence[FeatureStat], gate: GateConfig,
              rate_ci: tuple[float, float] = (math.nan, math.nan), empty_roles: Sequence[str] = ()) -> list[Claim]:
    """tuned vs base per feature, sign agreement per signal feature, and the agreement rate.
    `empty_roles` names answer sets (tuned, base) in which every answer is empty: nothing can pass then."""
    if empty_roles:
        why = (f"every {' and every '.join(empty_roles)} answer is empty (the model emitted EOS first), so there is "
               f"no text to compare; check the chat template, EOS ids and --max-new-tokens")
        return [Claim(f"{fam}[{s.feature}]", False, None, "", "", 0, why) for fam in ("tuned-differs",
                "sign-agreement") for s in stats] + [Claim("sign-agreement-rate", False, None, "", "", 0, why)]
    claims = []
    for s in stats:
        claims.append(_paired(f"tuned-differs[{s.feature}]", s.p_tb, s.p_tb_adj, s.r_tb, s.n_valid, s.n_tb_nonzero,
                              f"avg(tuned-base)/S = {_fmt(s.tb_valid)} [{_fmt(s.tb_valid_ci[0])}, "
                              f"{_fmt(s.tb_valid_ci[1])}] on valid", gate))
    signal = {s.feature for s in signal_features(stats, gate)}
    for s in stats:
        cid = f"sign-agreement[{s.feature}]"
        if s.feature not in signal:
            claims.append(Claim(cid, False, None, "data signal first", f"p_cr_adj={_fmt(s.p_cr_adj)}", s.n_valid,
                                f"skipped: no data signal for this feature (p_adj={_fmt(s.p_cr_adj)} >= "
                                f"{gate.alpha})", applicable=False))
            continue
        claims.append(Claim(cid, s.sign_agreement > 0, float(s.sign_agreement), "+1 (same direction)", "",
                            s.n_valid, f"chosen-rejected {_fmt(s.cr_valid)}, tuned-base {_fmt(s.tb_valid)} "
                            f"[{_fmt(s.tb_valid_ci[0])}, {_fmt(s.tb_valid_ci[1])}] (normalised, valid split)"
                            + _low_n(s.n_valid)))
    agree = [s.sign_agreement > 0 for s in stats if s.feature in signal]
    if not agree:
        claims.append(Claim("sign-agreement-rate", False, None, f"CI low > {gate.min_agreement}", "", 0,
                            "no feature has data signal, so agreement cannot be measured"))
        return claims
    claims.append(agreement_rate(sum(agree), len(agree), rate_ci, gate))
    return claims


def agreement_rate(k: int, n: int, pairs_ci: tuple[float, float], gate: GateConfig) -> Claim:
    """sign-agreement-rate: k of n data-signal features move the data's way. Two doubts, both kept: the
    features are few (an exact interval over them) and each one's direction is measured on few pairs (a
    bootstrap over the pairs, which keeps the features' correlation). The claim is decided on the union of
    the two intervals."""
    rate, lo_f, hi_f, bounds = D.proportion_bounds(k, n, gate.ci_level)
    lo_p, hi_p = pairs_ci
    lo = lo_f if math.isnan(lo_p) else min(lo_f, lo_p)
    hi = hi_f if math.isnan(hi_p) else max(hi_f, hi_p)
    d = D.above(rate, lo, hi, gate.min_agreement, n, rate_floor(gate), bounds)
    ci = f"{gate.ci_level:.0%} CI [{lo:.3f}, {hi:.3f}]"
    return decided("sign-agreement-rate", d, f"CI low > {gate.min_agreement}", ci,
                   f"{k} of {n} data-signal features move the data's way (rate {_fmt(rate)}, {ci}: the union of "
                   f"the exact interval over features [{lo_f:.3f}, {hi_f:.3f}] and the bootstrap over pairs "
                   f"[{_fmt(lo_p)}, {_fmt(hi_p)}]; need CI low > {gate.min_agreement})", units="features")


def rate_floor(gate: GateConfig) -> int:
    """Fewest items with which a claim decided on a two-sided ci_level interval can pass."""
    return D.min_items((1 - gate.ci_level) / 2)


def rate_above(cid: str, k: int, n: int, threshold: float, gate: GateConfig, what: str, units: str = "pairs"
               ) -> Claim:
    """A proportion k/n whose exact (Clopper-Pearson) interval must lie above `threshold`."""
    p, lo, hi, bounds = D.proportion_bounds(k, n, gate.ci_level)
    d = D.above(p, lo, hi, threshold, n, rate_floor(gate), bounds)
    ci = f"{gate.ci_level:.0%} Clopper-Pearson CI [{lo:.3f}, {hi:.3f}]"
    return decided(cid, d, f"CI low > {threshold:g}", ci, f"{what} {_fmt(p)} ({k} of {n}), {ci}", units=units)


def mean_above(cid: str, x: Sequence[float], threshold: float, gate: GateConfig, what: str) -> Claim:
    """A mean of per-item values whose Student's t interval must lie above `threshold`."""
    m, lo, hi, bounds = D.mean_bounds(np.asarray(x, dtype=float), gate.ci_level)
    d = D.above(m, lo, hi, threshold, len(x), rate_floor(gate), bounds)
    ci = f"{gate.ci_level:.0%} t CI [{lo:.4g}, {hi:.4g}]"
    return decided(cid, d, f"CI low > {threshold:g}", ci, f"{what} {_fmt(m)}, {ci}, n={len(x)}", units="pairs")


def rewards(summary: RewardSummary, gate: GateConfig) -> list[Claim]:
    """reward-accuracy and reward-accuracy-per-token (exact interval above min_reward_accuracy) and
    reward-margin (t interval above 0); inconclusive where the interval straddles the line or the pairs are
    too few for any test (at least 6 at the default 95%)."""
    notes = (["every reward is exactly 0: policy and reference give identical log-probs (zero adapter, or the "
              "adapter is not active)"] if summary.all_zero else [])
    if summary.n_unscorable:
        notes.append(f"{summary.n_unscorable} pairs left out: the prompt alone fills --max-length (TRL drops them "
                     f"too)")
    why = "".join(f"; {n}" for n in notes)
    if summary.n == 0:
        empty = "no valid pairs to score" + why
        return [Claim(cid, False, None, "", "", 0, empty)
                for cid in ("reward-accuracy", "reward-accuracy-per-token", "reward-margin")]
    t = gate.min_reward_accuracy
    acc = rate_above("reward-accuracy", sum(summary.correct), summary.n, t, gate, "accuracy")
    per_token = rate_above("reward-accuracy-per-token", sum(summary.correct_per_token), summary.n, t, gate,
                           "accuracy of rewards per completion token")
    margin = mean_above("reward-margin", summary.margins, 0.0, gate, "mean margin")
    note = f", beta={summary.beta}" + why
    return [dataclasses.replace(acc, message=acc.message + note),
            dataclasses.replace(per_token, message=per_token.message +
                                f" (summed: {summary.accuracy.value:.3f}; length alone cannot move this one)" + why),
            dataclasses.replace(margin, message=margin.message + why)]


def adapter_changes_model(report: AdapterReport, max_abs_diff: float, top1_changed: float) -> Claim:
    ok = report.nonzero_b > 0 and max_abs_diff > 1e-4
    why = "" if ok else (" All LoRA B matrices are zero: the adapter is the identity (untrained or zeroed)."
                         if report.nonzero_b == 0 else " Tuned and base logits are identical on real prompts.")
    return Claim("adapter-changes-model", ok, max_abs_diff, "max |tuned - base logit| > 1e-4 and some B != 0", "",
                 None, f"{report.nonzero_b} of {report.n_b} LoRA B matrices non-zero; max |logit change| "
                 f"{max_abs_diff:.4g}; top-1 token changed at {top1_changed:.1%} of positions" + why)


def tokenizer_ready(bos_id: int | None, model_bos_id: int | None, pad_id: int | None, padding_side: str,
                    leading_bos: int, template_has_bos: bool) -> Claim:
    problems = []
    if pad_id is None:
        problems.append("no pad token")
    if padding_side != "left":
        problems.append(f"padding side {padding_side!r} (decoder-only generation needs 'left')")
    if model_bos_id is not None and bos_id != model_bos_id:
        problems.append(f"tokenizer bos id {bos_id} != model config bos id {model_bos_id}")
    if leading_bos > 1:
        problems.append(f"{leading_bos} BOS tokens open the templated prompt (double BOS: the template already "
                        f"adds one; tokenize with add_special_tokens=False)")
    if template_has_bos and leading_bos != 1:
        problems.append(f"the chat template writes a BOS but the prompt starts with {leading_bos}")
    return Claim("tokenizer-ready", not problems, float(leading_bos), "pad set, left padding, one BOS", "", None,
                 f"bos={bos_id}, pad={pad_id}, padding={padding_side}, leading BOS after template={leading_bos}"
                 + ("; " + "; ".join(problems) if problems else ""))


def quantization(variant: str, probe_finite: bool, first_bad: str | None, top1: float, kl: float,
                 merged_top1: float, merged_kl: float, gate: GateConfig) -> list[Claim]:
    nan = Claim(f"no-nan-logits[{variant}]", probe_finite, None, "all logits finite", "", None,
                "all logits finite on a left-padded batch of prompts of very different lengths" if probe_finite
                else f"non-finite logits under {variant}; first non-finite output: {first_bad or 'logits only'}")

    def agree(cid: str, t1: float, k: float, against: str) -> Claim:
        ok = probe_finite and t1 >= gate.min_top1_agreement and k <= gate.max_kl
        return Claim(cid, bool(ok), k, f"top-1 >= {gate.min_top1_agreement}, KL <= {gate.max_kl}", "", None,
                     f"vs {against}: top-1 agreement {_fmt(t1)}, mean KL {_fmt(k)} nats")

    return [nan, agree(f"quantized-agrees[{variant}]", top1, kl, "full precision, unmerged"),
            agree(f"merged-agrees[{variant}]", merged_top1, merged_kl,
                  "the unmerged model, with the adapter merged into the dequantized base")]


def _acc(a: Accuracy) -> str:
    return f"{a.value:.3f} [{a.ci_low:.3f}, {a.ci_high:.3f}]"


def _one_sided(gate: GateConfig) -> str:
    return f"one-sided {1 - gate.alpha:.0%}"


def forgetting(s: ForgettingSummary, gate: GateConfig) -> list[Claim]:
    """mcq-accuracy[SET] (the tuned model answers above chance) and no-forgetting[SET]: non-inferiority of
    tuned vs base on the gated metric (acc or acc_norm) with margin max_forgetting, on Tango's paired score
    interval: passes when the one-sided upper bound of the drop is below the margin, fails when its lower
    bound is above it, else inconclusive."""
    setting = f"{s.settings.format}, {s.settings.shots}-shot, {s.settings.prompt} prompt"
    notes = "".join(f"; {v} {k.replace('_', ' ')} dropped" for k, v in s.dropped.items() if v)
    if s.n_unscorable:
        notes += f"; {s.n_unscorable} left out (a choice had no token left under --max-length)"
    if s.n == 0:
        why = f"no question of {s.source} could be scored{notes}"
        return [Claim(f"{fam}[{s.name}]", False, None, "", "", 0, why) for fam in ("mcq-accuracy", "no-forgetting")]
    lvl = f"{gate.ci_level:.0%}"
    tuned, base = s.gated
    at_chance = tuned.ci_low <= s.chance and base.ci_low <= s.chance
    chance_note = (f"; both models answer at chance level ({s.chance:.3f}) on this set, so it cannot show "
                   f"forgetting: use a set the base model knows") if at_chance else ""
    above_chance = D.above(tuned.value, tuned.ci_low, tuned.ci_high, s.chance, s.n, rate_floor(gate), lambda m: (
        D.clopper_pearson(tuned.correct * m / s.n, m, gate.ci_level)))
    accuracy = decided(
        f"mcq-accuracy[{s.name}]", above_chance, f"CI low > chance {s.chance:.3f}",
        f"{lvl} Clopper-Pearson CI [{tuned.ci_low:.3f}, {tuned.ci_high:.3f}]",
        f"acc tuned {_acc(s.tuned)}, base {_acc(s.base)}; acc_norm tuned {_acc(s.tuned_norm)}, base "
        f"{_acc(s.base_norm)} ({lvl} Clopper-Pearson); {s.metric} gates; chance {s.chance:.3f}; n={s.n} "
        f"({setting}){notes}", units="questions")
    d = PairedComparison(s.metric, "paired proportions", s.n, tuned.value, base.value, s.gained,
                         s.lost).decide(gate.alpha, gate.max_forgetting)
    verdict = {"pass": f"the drop is shown to be below max_forgetting {gate.max_forgetting}",
               "fail": f"the drop is shown to exceed max_forgetting {gate.max_forgetting}: the adapter forgot",
               "inconclusive": f"the data cannot tell whether the drop is below max_forgetting "
                               f"{gate.max_forgetting}"}[d.outcome]
    bounds = f"{_one_sided(gate)} bounds of tuned - base [{d.low:+.3f}, {d.high:+.3f}] (Tango, paired)"
    claim = decided(
        f"no-forgetting[{s.name}]", d, f"drop upper bound < {gate.max_forgetting}", bounds,
        f"{s.metric} tuned {tuned.value:.3f} vs base {base.value:.3f}: difference {d.estimate:+.3f}, {bounds}; "
        f"{s.lost} questions lost, {s.gained} gained ({s.discordance:.1%} changed); {verdict}{chance_note}",
        units="questions")
    return [accuracy, claim]


def judge_win(cid: str, s: JudgeSummary, gate: GateConfig) -> tuple[Claim, D.Decision]:
    """The win rate (ties and order-dependent verdicts as half) above 0.5, on its score interval; a pass also
    needs the exact sign test of wins against losses (the score interval alone is a little liberal below about
    ten decisive pairs)."""
    lo, hi = s.win_ci
    n = s.scored
    at = lambda m: win_interval(s.wins * m / n, s.losses * m / n, m, gate.ci_level)  # noqa: E731
    d = D.above(s.win_rate, lo, hi, 0.5, n, rate_floor(gate), at)
    if d.passed and not s.sign_p < (1 - gate.ci_level) / 2:
        d = D.Decision("inconclusive", d.estimate, lo, hi, n, D.items_to_decide(
            lambda a, b: a > 0.5 or b <= 0.5, at, n, rate_floor(gate)))
    parse = (f"; {s.unparseable} pairs left out: a reply named no verdict ({s.verdicts['unparseable']} of "
             f"{2 * s.n} replies; {s.unparseable_shown_first.get('tuned', 0)} with the tuned answer shown first, "
             f"{s.unparseable_shown_first.get('base', 0)} with the base answer first){s.hints()}" if s.unparseable
             else "")
    tally = (f"tuned wins {s.wins}, loses {s.losses}, ties {s.ties}, and {s.inconsistent} verdicts change with "
             f"the order (counted as ties) of {s.n} valid pairs judged in both orders by {s.judge}")
    ci = f"{gate.ci_level:.0%} score CI [{lo:.3f}, {hi:.3f}], sign test p={_fmt(s.sign_p)}"
    return decided(cid, d, "CI low > 0.5", ci, f"win rate {_fmt(s.win_rate)}, {ci}: {tally}{parse}",
                   units="judged pairs"), d


def judge(s: JudgeSummary, gate: GateConfig) -> list[Claim]:
    """judge-win-rate and judge-length-controlled-win-rate (interval above 0.5) and judge-consistency (the
    two answer orders agree on at least min_judge_consistency of the pairs)."""
    ids = ("judge-win-rate", "judge-length-controlled-win-rate", "judge-consistency")
    if s.n == 0:
        return [Claim(cid, False, None, "", "", 0, "no valid-split pair has both answers: nothing was judged")
                for cid in ids]
    if s.scored == 0:
        why = f"no pair got a parseable verdict in both orders ({s.unparseable} of {s.n} left out){s.hints()}"
        win = Claim(ids[0], False, None, "CI low > 0.5", "", 0, why, inconclusive=True)
        controlled = Claim(ids[1], False, None, "CI low > 0.5", "", 0, why, inconclusive=True)
    else:
        win, raw = judge_win(ids[0], s, gate)
        controlled = length_controlled_claim(ids[1], s, gate, raw)
    k = s.wins + s.losses + s.ties
    first = ("no reply was parseable" if math.isnan(s.first_position) else
             f"the first position won {s.first_position:.0%} of parseable replies")
    consistent = Claim(ids[2], s.consistency >= gate.min_judge_consistency, s.consistency,
                       f">= {gate.min_judge_consistency}", "", s.n,
                       f"{k} of {s.n} pairs ({s.consistency:.1%}) got the same verdict in both orders; {first} "
                       f"(A {s.verdicts['A']}, B "
                       f"{s.verdicts['B']}, tie {s.verdicts['tie']}, unparseable {s.verdicts['unparseable']})"
                       + ("" if s.consistency >= gate.min_judge_consistency else
                          ": the verdicts follow the order more than the answers; use a stronger judge"))
    return [win, controlled, consistent]


def length_controlled_claim(cid: str, s: JudgeSummary, gate: GateConfig, raw: D.Decision) -> Claim:
    """The win rate at zero length difference, on its bootstrap interval; it passes only when the raw win rate
    passes too (length control removes evidence, it never adds any), and is inconclusive when too few pairs
    lie on one side of the length difference to fit it."""
    lc, lvl = s.length_control, f"{gate.ci_level:.0%}"
    lengths = f"mean answer length tuned {s.mean_chars['tuned']:.0f} vs base {s.mean_chars['base']:.0f} characters"
    if lc.value is None or lc.ci is None or lc.slope is None:
        return Claim(cid, False, None, "CI low > 0.5", "", lc.n,
                     f"inconclusive: not estimable: {lc.note}; raw win rate {_fmt(s.win_rate)}; {lengths}",
                     inconclusive=True)
    lo, hi = lc.ci
    outcome = "fail" if hi <= 0.5 else "pass" if lo > 0.5 and raw.passed else "inconclusive"
    guard = ("; the raw win rate is not shown above 0.5, and length control only removes evidence, it never "
             "adds any" if outcome == "inconclusive" and lo > 0.5 else "")
    return decided(cid, D.Decision(outcome, lc.value, lo, hi, lc.n), "CI low > 0.5",  # type: ignore[arg-type]
                   f"{lvl} CI [{lo:.3f}, {hi:.3f}]",
                   f"length-controlled win rate {lc.value:.3f}, {lvl} CI [{lo:.3f}, {hi:.3f}] (logistic regression "
                   f"of the {lc.n} scored pairs on the length difference, slope {lc.slope:+.2f}), raw "
                   f"{_fmt(s.win_rate)}; {lengths}{guard}")


def margin_for(what: str, other: float, gate: GateConfig) -> tuple[float, str]:
    """(the non-inferiority margin of a compared metric, how the message states it), from the gate config;
    `other` is the reference's mean (the reward margin's margin is relative to it)."""
    if what == "reward-margin":
        m = gate.max_margin_drop * abs(other)
        return m, f"max_margin_drop {gate.max_margin_drop} x |{other:.4g}| = {m:.4g}"
    if what in ("sign-agreement", "sign-agreement-rate"):
        return gate.max_agreement_drop, f"max_agreement_drop {gate.max_agreement_drop}"
    if what.startswith("mcq-accuracy") or what in ("acc", "acc_norm"):
        return gate.max_forgetting, f"max_forgetting {gate.max_forgetting}"
    return gate.max_reward_accuracy_drop, f"max_reward_accuracy_drop {gate.max_reward_accuracy_drop}"


def not_worse_message(c: PairedComparison, d: D.Decision, gate: GateConfig, margin_text: str, this: str,
                      other: str, worse: str = "WORSE") -> str:
    """What a non-inferiority comparison found, in one line; `worse` names a failure (REGRESSED against a
    baseline)."""
    bounds = f"{_one_sided(gate)} bounds [{d.low:+.4g}, {d.high:+.4g}]"
    how = ("Tango's paired score interval" if c.kind == "paired proportions" else
           "t interval of the mean per-item difference")
    if c.extra_ci is not None:
        how += f", joined with the bootstrap over pairs [{_fmt(c.extra_ci[0])}, {_fmt(c.extra_ci[1])}]"
    verdict = {"pass": f"not worse: the drop is shown to be within the margin ({margin_text})",
               "fail": f"{worse}: the drop is shown to exceed the margin ({margin_text})",
               "inconclusive": f"the data cannot tell whether the drop is within the margin ({margin_text})"}[d.outcome]
    unit = "data-signal features" if c.what.startswith("sign-agreement") else "shared items"
    return (f"{this} {_fmt(c.candidate)} vs {other} {_fmt(c.other)} on {c.n} {unit}: difference "
            f"{d.estimate:+.4g}, {bounds} ({how}); better on {c.better}, worse on {c.worse}; {verdict}")


def not_worse(c: PairedComparison, gate: GateConfig, other: str) -> Claim:
    """The candidate (this run's adapter) is not worse than `other` by more than the comparison's margin."""
    cid = f"not-worse[{c.what}]"
    if c.n == 0:
        why = ("the data has no data-signal feature (train split), so there is no direction to compare the answers "
               "in" if c.what == "sign-agreement" else "no item was scored for both adapters")
        return Claim(cid, False, None, "", "", 0, f"{why}: nothing to compare with {other}", applicable=False)
    margin, text = margin_for(c.what, c.other, gate)
    d = c.decide(gate.alpha, margin)
    return decided(cid, d, f"lower bound > -{margin:.4g}", f"{_one_sided(gate)} [{d.low:+.4g}, {d.high:+.4g}]",
                   not_worse_message(c, d, gate, text, "this adapter", other),
                   units="data-signal features" if c.what == "sign-agreement" else "items")


def not_worse_judge(s: JudgeSummary, gate: GateConfig, other: str) -> Claim:
    """The judge's win rate of this adapter against `other` is shown to be at least 0.5 - max_win_rate_drop
    (non-inferiority on the same score interval as judge-win-rate, at the one-sided alpha)."""
    cid = "not-worse[judge-win-rate]"
    if s.scored == 0:
        return Claim(cid, False, None, "", "", 0,
                     f"no pair got a parseable verdict in both orders ({s.unparseable} of {s.n} left out)",
                     inconclusive=True)
    level = 1 - 2 * gate.alpha
    lo, hi = win_interval(s.wins, s.losses, s.scored, level)
    at = lambda m: win_interval(s.wins * m / s.scored, s.losses * m / s.scored, m, level)  # noqa: E731
    floor = 0.5 - gate.max_win_rate_drop
    d = D.above(s.win_rate, lo, hi, floor, s.scored, D.min_items(gate.alpha), at)
    verdict = {"pass": "not worse", "fail": f"WORSE: the judge prefers {other}",
               "inconclusive": "the judged pairs cannot tell"}[d.outcome]
    return decided(cid, d, f"lower bound > {floor:g}", f"{_one_sided(gate)} [{lo:.3f}, {hi:.3f}]",
                   f"{s.judge} on this adapter's answer against {other}'s: win rate {_fmt(s.win_rate)}, "
                   f"{_one_sided(gate)} bounds [{lo:.3f}, {hi:.3f}] against {floor:g} (0.5 - max_win_rate_drop "
                   f"{gate.max_win_rate_drop}); this adapter wins {s.wins}, loses {s.losses}, ties {s.ties}, "
                   f"{s.inconsistent} verdicts change with the order; consistency {s.consistency:.1%}; {verdict}",
                   units="judged pairs")
