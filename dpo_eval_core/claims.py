"""Claims as data: an id that reads as the claim, the measured value, the threshold, the
uncertainty and the verdict. Pure functions from measurements to claims."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from .config import GateConfig
from .compare import PairedComparison
from .forgetting import Accuracy, ForgettingSummary
from .judge import JudgeSummary
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

    def family(self) -> str:
        return self.id.split("[")[0]


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
                 f"only {n_nonzero} non-zero differences: the smallest attainable p is "
                 f"{min_attainable_p(n_nonzero):.3g} > alpha {gate.alpha}; at least {pairs_needed(gate.alpha)} "
                 f"pairs with a difference are needed")


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
    rate = sum(agree) / len(agree) if agree else math.nan
    ci = f"{gate.ci_level:.0%} CI [{_fmt(rate_ci[0])}, {_fmt(rate_ci[1])}]"
    claims.append(Claim("sign-agreement-rate", bool(agree) and rate >= gate.min_agreement, rate,
                        f">= {gate.min_agreement}", ci, len(agree),
                        f"{sum(agree)} of {len(agree)} data-signal features move the data's way "
                        f"(rate {_fmt(rate)}, {ci}, need {gate.min_agreement})" if agree else
                        "no feature has data signal, so agreement cannot be measured",
                        ci=(float(rate_ci[0]), float(rate_ci[1])) if agree else None))
    return claims


def rewards(summary: RewardSummary, gate: GateConfig) -> list[Claim]:
    lvl = f"{gate.ci_level:.0%} CI"
    a, t, m = summary.accuracy, summary.accuracy_per_token, summary.margin
    why = " Every reward is exactly 0: policy and reference give identical log-probs (zero adapter, or the " \
          "adapter is not active)." if summary.all_zero else ""
    if summary.n_unscorable:
        why += (f" {summary.n_unscorable} pairs left out: the prompt alone fills --max-length (TRL drops them "
                f"too).")
    if summary.n == 0:
        empty = "no valid pairs to score" + why
        return [Claim(cid, False, None, "", "", 0, empty)
                for cid in ("reward-accuracy", "reward-accuracy-per-token", "reward-margin")]
    return [
        Claim("reward-accuracy", a.ci_low > gate.min_reward_accuracy, a.value, f"CI low > {gate.min_reward_accuracy}",
              f"{lvl} [{a.ci_low:.3f}, {a.ci_high:.3f}]", summary.n,
              f"accuracy {a.value:.3f}, {lvl} [{a.ci_low:.3f}, {a.ci_high:.3f}], n={summary.n}, beta={summary.beta}"
              + why, ci=(a.ci_low, a.ci_high)),
        Claim("reward-accuracy-per-token", t.ci_low > gate.min_reward_accuracy, t.value,
              f"CI low > {gate.min_reward_accuracy}", f"{lvl} [{t.ci_low:.3f}, {t.ci_high:.3f}]", summary.n,
              f"accuracy of rewards per completion token {t.value:.3f}, {lvl} [{t.ci_low:.3f}, {t.ci_high:.3f}], "
              f"n={summary.n} (summed: {a.value:.3f}; length alone cannot move this one)" + why,
              ci=(t.ci_low, t.ci_high)),
        Claim("reward-margin", m.ci_low > 0, m.value, "CI low > 0", f"{lvl} [{m.ci_low:.4g}, {m.ci_high:.4g}]",
              summary.n, f"mean margin {m.value:.4g}, {lvl} [{m.ci_low:.4g}, {m.ci_high:.4g}], n={summary.n}" + why,
              ci=(m.ci_low, m.ci_high)),
    ]


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


def forgetting(s: ForgettingSummary, gate: GateConfig) -> list[Claim]:
    """mcq-accuracy[SET] (the tuned model answers above chance) and no-forgetting[SET] (tuned is not
    below base by more than max_forgetting with an exact McNemar p below alpha)."""
    setting = f"{s.settings.format}, {s.settings.shots}-shot, {s.settings.prompt} prompt"
    notes = "".join(f"; {v} {k.replace('_', ' ')} dropped" for k, v in s.dropped.items() if v)
    if s.n_unscorable:
        notes += f"; {s.n_unscorable} left out (a choice had no token left under --max-length)"
    if s.n == 0:
        why = f"no question of {s.source} could be scored{notes}"
        return [Claim(f"{fam}[{s.name}]", False, None, "", "", 0, why) for fam in ("mcq-accuracy", "no-forgetting")]
    lvl = f"{gate.ci_level:.0%}"
    at_chance = s.tuned.ci_low <= s.chance and s.base.ci_low <= s.chance
    chance_note = (f"; both models answer at chance level ({s.chance:.3f}) on this set, so it cannot show "
                   f"forgetting: use a set the base model knows") if at_chance else ""
    accuracy = Claim(
        f"mcq-accuracy[{s.name}]", s.tuned.ci_low > s.chance, s.tuned.value, f"CI low > chance {s.chance:.3f}",
        f"{lvl} Wilson CI [{s.tuned.ci_low:.3f}, {s.tuned.ci_high:.3f}]", s.n,
        f"acc tuned {_acc(s.tuned)}, base {_acc(s.base)}; acc_norm tuned {_acc(s.tuned_norm)}, base "
        f"{_acc(s.base_norm)} ({lvl} Wilson); chance {s.chance:.3f}; n={s.n} ({setting}){notes}",
        ci=(s.tuned.ci_low, s.tuned.ci_high))
    d, lo, hi = s.difference
    drop = -d
    forgot = drop > gate.max_forgetting and s.p_value < gate.alpha
    need = s.questions_needed(gate.max_forgetting, gate.alpha)
    power = (f"detecting a drop of {gate.max_forgetting} at this discordance ({s.discordance:.1%} of questions "
             f"changed) takes about {need} questions (80% power), {s.n} were asked" if need is not None else
             f"no drop of {gate.max_forgetting} is possible at this discordance ({s.discordance:.1%} of questions "
             f"changed)")
    verdict = (f"tuned is below base by {drop:.3f} > max_forgetting {gate.max_forgetting} and the drop is real "
               f"(p < {gate.alpha}): the adapter forgot" if forgot else
               "no real drop beyond max_forgetting")
    forgetting_claim = Claim(
        f"no-forgetting[{s.name}]", not forgot, d, f"drop <= {gate.max_forgetting} or McNemar p >= {gate.alpha}",
        f"{lvl} CI [{lo:.3f}, {hi:.3f}], p={_fmt(s.p_value)}", s.n,
        f"acc tuned {s.tuned.value:.3f} vs base {s.base.value:.3f}: difference {d:+.3f}, {lvl} CI [{lo:+.3f}, "
        f"{hi:+.3f}] (paired); {s.lost} questions lost, {s.gained} gained, exact McNemar p={_fmt(s.p_value)}; "
        f"{verdict}; {power}{chance_note}", ci=(lo, hi))
    return [accuracy, forgetting_claim]


def judge(s: JudgeSummary, gate: GateConfig) -> list[Claim]:
    """judge-win-rate and judge-length-controlled-win-rate (interval above 0.5) and judge-consistency (the
    two answer orders agree on at least min_judge_consistency of the pairs)."""
    lvl, ids = f"{gate.ci_level:.0%}", ("judge-win-rate", "judge-length-controlled-win-rate", "judge-consistency")
    if s.n == 0:
        return [Claim(cid, False, None, "", "", 0, "no valid-split pair has both answers: nothing was judged")
                for cid in ids]
    parse = (f"; {s.unparseable} pairs left out: a reply named no verdict ({s.verdicts['unparseable']} of "
             f"{2 * s.n} replies)" if s.unparseable else "")
    lo, hi = s.win_ci
    tally = (f"tuned wins {s.wins}, loses {s.losses}, ties {s.ties}, and {s.inconsistent} verdicts change with "
             f"the order (counted as ties) of {s.n} valid pairs judged in both orders by {s.judge}")
    win = Claim(ids[0], s.scored > 0 and lo > 0.5, s.win_rate, "CI low > 0.5", f"{lvl} CI [{lo:.3f}, {hi:.3f}]",
                s.scored, f"win rate {_fmt(s.win_rate)}, {lvl} CI [{lo:.3f}, {hi:.3f}] (paired bootstrap): {tally}"
                f"{parse}", ci=(lo, hi))
    lc = s.length_control
    lengths = f"mean answer length tuned {s.mean_chars['tuned']:.0f} vs base {s.mean_chars['base']:.0f} characters"
    if lc.value is None or lc.ci is None:
        controlled = Claim(ids[1], False, None, "CI low > 0.5", "", lc.n,
                           f"not estimable: {lc.note}; raw win rate {_fmt(s.win_rate)}; {lengths}", applicable=False)
    else:
        controlled = Claim(ids[1], lc.ci[0] > 0.5, lc.value, "CI low > 0.5",
                           f"{lvl} CI [{lc.ci[0]:.3f}, {lc.ci[1]:.3f}]", lc.n,
                           f"length-controlled win rate {lc.value:.3f}, {lvl} CI [{lc.ci[0]:.3f}, {lc.ci[1]:.3f}] "
                           f"(logistic regression of {lc.n} consistent verdicts on the length difference, slope "
                           f"{lc.slope:+.2f}), raw {_fmt(s.win_rate)}; {lengths}", ci=lc.ci)
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


def not_worse(c: PairedComparison, gate: GateConfig, other: str) -> Claim:
    """The candidate (this run's adapter) is not significantly worse than `other` on one paired comparison."""
    cid, prefers = f"not-worse[{c.what}]", c.prefers(gate.alpha)
    if c.n == 0:
        why = ("the data has no data-signal feature (train split), so there is no direction to compare the answers "
               "in" if c.what == "sign-agreement" else "no item was scored for both adapters")
        return Claim(cid, False, None, "", "", 0, f"{why}: nothing to compare with {other}", applicable=False)
    verdict = {"candidate": "the paired test prefers this adapter", "other": f"the paired test prefers {other}",
               "neither": "no significant difference"}[prefers]
    if c.what == "sign-agreement":
        body = (f"of {c.n} data-signal features, the answers of this adapter minus those of {other} shifted "
                f"{c.better} the data's way (chosen - rejected) and {c.worse} the other way ({gate.correction} "
                f"corrected Wilcoxon per feature), {c.test} p={_fmt(c.p_value)}")
        uncertainty = f"p={_fmt(c.p_value)}"
    else:
        d, lo, hi = c.difference
        lvl = f"{gate.ci_level:.0%}"
        body = (f"this adapter {_fmt(c.candidate)} vs {other} {_fmt(c.other)} on {c.n} shared items: difference "
                f"{d:+.4g}, {lvl} CI [{lo:+.4g}, {hi:+.4g}] (paired); better on {c.better}, worse on {c.worse}; "
                f"{c.test} p={_fmt(c.p_value)}")
        uncertainty = f"{lvl} CI [{lo:.4g}, {hi:.4g}], p={_fmt(c.p_value)}"
    return Claim(cid, prefers != "other", c.difference[0], f"not worse at p < {gate.alpha}", uncertainty, c.n,
                 f"{body}; {verdict}", ci=c.difference[1:] if c.what != "sign-agreement" else None)


def not_worse_judge(s: JudgeSummary, gate: GateConfig, other: str) -> Claim:
    """The judge does not prefer `other`'s answers to this adapter's (win rate CI wholly below 0.5)."""
    lo, hi = s.win_ci
    if s.scored == 0:
        return Claim("not-worse[judge-win-rate]", False, None, "", "", 0,
                     f"no pair got a parseable verdict in both orders ({s.unparseable} of {s.n} left out)",
                     applicable=False)
    worse = hi < 0.5
    return Claim("not-worse[judge-win-rate]", not worse, s.win_rate, "CI high >= 0.5",
                 f"{gate.ci_level:.0%} CI [{lo:.3f}, {hi:.3f}]", s.scored,
                 f"{s.judge} prefers this adapter's answer to {other}'s: win rate {_fmt(s.win_rate)}, CI [{lo:.3f}, "
                 f"{hi:.3f}]; this adapter wins {s.wins}, loses {s.losses}, ties {s.ties}, {s.inconsistent} verdicts "
                 f"change with the order; consistency {s.consistency:.1%}"
                 + (f"; the judge prefers {other}" if worse else ""), ci=(lo, hi))
