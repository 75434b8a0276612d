"""A judge model prefers the tuned answers to the base answers, in both orders and at equal length (--judge;
skipped without one)."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from .. import decide as D
from .. import judge as J
from .. import report as H
from ..claims import Claim, decided, fmt, one_sided, percent, rate_floor
from ..endpoint import is_url
from ..errors import ConfigError
from ..family import Family, Kind, Option
from ..stages import Stage

if TYPE_CHECKING:
    from ..run import GateRun

JUDGE: Stage[J.Judge] = Stage("judge")
SUMMARY: Stage[J.JudgeSummary] = Stage("judge summary")
COMPARED: Stage[J.JudgeSummary] = Stage("judge (compare)")

WIN = Kind("judge-win-rate", "the judge prefers tuned answers to base answers, judged in both orders: win rate CI "
                             "low above 0.5", gates=False)
CONTROLLED = Kind("judge-length-controlled-win-rate", "the win rate at zero length difference (a logistic regression "
                                                      "on the answers' length difference): CI low above 0.5",
                  gates=False)
CONSISTENT = Kind("judge-consistency", "the judge gives the same verdict in both answer orders on at least "
                                       "min_judge_consistency of the pairs", gates=False)


@dataclass(frozen=True, slots=True)
class Settings:
    source: str | None = None
    """Judges tuned vs base answers: a local model (directory or hub id; 'base' for the gated adapter's base,
    adapter off) or the base URL of an OpenAI-compatible chat-completions server. None: the family is skipped."""
    model: str | None = None
    """The served model name, with a URL judge."""
    template: Path | None = None
    """A pairwise prompt with {question}, {answer_a} and {answer_b}; None: MT-Bench's, verdict first."""
    max_tokens: int = 16
    """Reply budget of the judge (the default template asks for the verdict first)."""
    concurrency: int = 8
    """Requests in flight at once to a judge server."""
    timeout: float = 60.0
    """Seconds a judge server may take per reply before it is retried."""
    key_env: str = "DPO_EVAL_JUDGE_API_KEY"
    """Environment variable holding the judge server's API key (sent only to that server; none sent if unset)."""
    min_judge_consistency: float = 0.5
    """judge-consistency fails when fewer of the judged pairs get the same verdict in both answer orders (MT-Bench
    measured 65% for GPT-4 and 46% for GPT-3.5 on its pairs; a judge below half is mostly reading positions)."""
    max_win_rate_drop: float = 0.05
    """Margin of not-worse[judge-win-rate]: the judge's win rate of this adapter against the other may be shown
    no lower than 0.5 minus this (five points: judges disagree with themselves across orders more than that)."""

    def __post_init__(self) -> None:
        url = self.source is not None and is_url(self.source)
        if url and not self.model:
            raise ConfigError("--judge-model", self.model, "the served model name, with a judge URL",
                              f"List what {self.source} serves with: curl {str(self.source).rstrip('/')}/models")
        if self.model and not url:
            raise ConfigError("--judge-model", self.model, "no value unless --judge is a server URL",
                              "A local judge is named by --judge alone.")
        if self.template is not None and not Path(self.template).is_file():
            raise ConfigError("--judge-template", str(self.template), "an existing text file")
        for option, value in (("--judge-max-tokens", self.max_tokens), ("--judge-concurrency", self.concurrency)):
            if value < 1:
                raise ConfigError(option, value, "a positive integer")
        if not self.timeout > 0:
            raise ConfigError("--judge-timeout", self.timeout, "a number of seconds > 0")
        for name in ("min_judge_consistency", "max_win_rate_drop"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"judge.{name}", getattr(self, name), "a number in [0, 1]")


OPTIONS = (
    Option("--judge", "source", "judge tuned vs base answers: a local model (directory or hub id; 'base' for the "
           "adapter's base, adapter off) or an OpenAI-compatible server's base URL (default: no judge)"),
    Option("--judge-model", "model", "the served model name, with a server URL --judge"),
    Option("--judge-template", "template", "pairwise judge prompt file with {question}, {answer_a}, {answer_b} "
           "(default: MT-Bench's, verdict first)", lambda t: Path(t).expanduser()),
    Option("--judge-max-tokens", "max_tokens", "judge reply budget in tokens (16)", int),
    Option("--judge-concurrency", "concurrency", "requests in flight at once to a judge server (8)", int),
    Option("--judge-timeout", "timeout", "seconds per judge server reply before it is retried (60)", float),
    Option("--judge-key-env", "key_env", "environment variable with the judge server's API key "
           "(DPO_EVAL_JUDGE_API_KEY; no key sent if unset)"),
)


def judge(run: GateRun) -> J.Judge:
    """The --judge, resolved before any model loads (a server is asked whether it serves the model)."""
    return run.stages.once(JUDGE, lambda: J.make_judge(run.settings(FAMILY), run.cfg, run.spec, lambda: run.model.backend,
                                                   run.identity, run.cache, run.local_bases, run.free))


def judged(run: GateRun, tuned: Any, base: Any, phase: str) -> J.JudgeSummary:
    """Every answered valid pair judged in both orders, `tuned` shown against `base`; each reply cached."""
    s, g = run.settings(FAMILY), run.gate
    with run.ledger.phase(phase):
        summary, n = J.measure(judge(run), run.pairs.pairs, {"tuned": tuned, "base": base},
                               J.load_template(s.template), s.max_tokens, run.cache, g.ci_level, g.n_bootstrap,
                               np.random.default_rng(run.cfg.seed))
    run.ledger.count("judge_replies", n)
    return summary


def judge_summary(run: GateRun) -> J.JudgeSummary:
    """The judge on tuned vs base answers (answered before a judge model may take the memory)."""
    return run.stages.once(SUMMARY, lambda: judged(run, run.answers["tuned"], run.answers["base"], "judge"))


def win(cid: str, s: J.JudgeSummary, gate: Any) -> tuple[Claim, D.Decision]:
    """The win rate (ties and order-dependent verdicts as half) above 0.5, on its score interval; a pass also
    needs the exact sign test of wins against losses (the score interval alone is a little liberal below about
    ten decisive pairs)."""
    lo, hi = s.win_ci
    n = s.scored
    power = D.power_level(gate.sized_at)
    at = lambda m: J.win_interval(s.wins * m / n, s.losses * m / n, m, power)  # noqa: E731
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
    ci = f"{percent(gate.ci_level)} score CI [{lo:.3f}, {hi:.3f}], sign test p={fmt(s.sign_p)}"
    return decided(cid, d, "CI low > 0.5", ci, f"win rate {fmt(s.win_rate)}, {ci}: {tally}{parse}",
                   units="judged pairs"), d


def length_controlled(cid: str, s: J.JudgeSummary, gate: Any, raw: D.Decision) -> Claim:
    """The win rate at zero length difference, on its bootstrap interval; it passes only when the raw win rate
    passes too (length control removes evidence, it never adds any), and is inconclusive when too few pairs
    lie on one side of the length difference to fit it."""
    lc, lvl = s.length_control, percent(gate.ci_level)
    lengths = f"mean answer length tuned {s.mean_chars['tuned']:.0f} vs base {s.mean_chars['base']:.0f} characters"
    if lc.value is None or lc.ci is None or lc.slope is None:
        return Claim(cid, False, None, "CI low > 0.5", "", lc.n,
                     f"inconclusive: not estimable: {lc.note}; raw win rate {fmt(s.win_rate)}; {lengths}",
                     inconclusive=True)
    lo, hi = lc.ci
    outcome = "fail" if hi <= 0.5 else "pass" if lo > 0.5 and raw.passed else "inconclusive"
    guard = ("; the raw win rate is not shown above 0.5, and length control only removes evidence, it never "
             "adds any" if outcome == "inconclusive" and lo > 0.5 else "")
    return decided(cid, D.Decision(outcome, lc.value, lo, hi, lc.n), "CI low > 0.5",  # type: ignore[arg-type]
                   f"{lvl} CI [{lo:.3f}, {hi:.3f}]",
                   f"length-controlled win rate {lc.value:.3f}, {lvl} CI [{lo:.3f}, {hi:.3f}] (logistic regression "
                   f"of the {lc.n} scored pairs on the length difference, slope {lc.slope:+.2f}), raw "
                   f"{fmt(s.win_rate)}; {lengths}{guard}")


def judge_claims(s: J.JudgeSummary, gate: Any, min_consistency: float) -> list[Claim]:
    """judge-win-rate and judge-length-controlled-win-rate (interval above 0.5) and judge-consistency (the
    two answer orders agree on at least min_judge_consistency of the pairs)."""
    if s.n == 0:
        return [Claim(k.id(), False, None, "", "", 0, "no valid-split pair has both answers: nothing was judged")
                for k in FAMILY.kinds]
    if s.scored == 0:
        why = f"no pair got a parseable verdict in both orders ({s.unparseable} of {s.n} left out){s.hints()}"
        won = Claim(WIN.id(), False, None, "CI low > 0.5", "", 0, why, inconclusive=True)
        controlled = Claim(CONTROLLED.id(), False, None, "CI low > 0.5", "", 0, why, inconclusive=True)
    else:
        won, raw = win(WIN.id(), s, gate)
        controlled = length_controlled(CONTROLLED.id(), s, gate, raw)
    k = s.wins + s.losses + s.ties
    first = ("no reply was parseable" if math.isnan(s.first_position) else
             f"the first position won {s.first_position:.0%} of parseable replies")
    consistent = Claim(CONSISTENT.id(), s.consistency >= min_consistency, s.consistency, f">= {min_consistency}", "",
                       s.n, f"{k} of {s.n} pairs ({s.consistency:.1%}) got the same verdict in both orders; {first} "
                       f"(A {s.verdicts['A']}, B {s.verdicts['B']}, tie {s.verdicts['tie']}, unparseable "
                       f"{s.verdicts['unparseable']})" + ("" if s.consistency >= min_consistency else
                                                         ": the verdicts follow the order more than the answers; use "
                                                         "a stronger judge"))
    return [won, controlled, consistent]


def claims(run: GateRun, _: str | None) -> list[Claim]:
    return judge_claims(judge_summary(run), run.gate, run.settings(FAMILY).min_judge_consistency)


def not_worse_judge(cid: str, s: J.JudgeSummary, gate: Any, max_drop: float, other: str) -> Claim:
    """The judge's win rate of this adapter against `other` is shown to be at least 0.5 - max_win_rate_drop
    (non-inferiority on the same score interval as judge-win-rate, at the gate's one-sided tail)."""
    if s.scored == 0:
        return Claim(cid, False, None, "", "", 0,
                     f"no pair got a parseable verdict in both orders ({s.unparseable} of {s.n} left out)",
                     inconclusive=True)
    level = 1 - 2 * gate.tail
    lo, hi = J.win_interval(s.wins, s.losses, s.scored, level)
    power = D.power_level(gate.sized_at)
    at = lambda m: J.win_interval(s.wins * m / s.scored, s.losses * m / s.scored, m, power)  # noqa: E731
    floor = 0.5 - max_drop
    d = D.above(s.win_rate, lo, hi, floor, s.scored, D.min_items(gate.tail), at)
    verdict = {"pass": "not worse", "fail": f"WORSE: the judge prefers {other}",
               "inconclusive": "the judged pairs cannot tell"}[d.outcome]
    return decided(cid, d, f"lower bound > {floor:g}", f"{one_sided(gate)} [{lo:.3f}, {hi:.3f}]",
                   f"{s.judge} on this adapter's answer against {other}'s: win rate {fmt(s.win_rate)}, "
                   f"{one_sided(gate)} bounds [{lo:.3f}, {hi:.3f}] against {floor:g} (0.5 - max_win_rate_drop "
                   f"{max_drop}); this adapter wins {s.wins}, loses {s.losses}, ties {s.ties}, "
                   f"{s.inconsistent} verdicts change with the order; consistency {s.consistency:.1%}; {verdict}",
                   units="judged pairs")


def compare(run: GateRun, other: GateRun, what: str, cid: str) -> tuple[Claim, dict[str, Any]]:
    """The judge on this adapter's answers (as 'tuned') against the other's (as 'base'), both orders."""
    s = run.stages.once(COMPARED, lambda: judged(run, run.answers["tuned"], other.answers["tuned"],
                                                    "judge (compare)"))
    return (not_worse_judge(cid, s, run.gate, run.settings(FAMILY).max_win_rate_drop,
                            other.label), {FAMILY.name: s})


def report(results: Mapping[str, Any]) -> str:
    """Win, tie and loss shares, consistency and position bias, raw vs length-controlled win rate, and a few
    judged pairs with the judge's replies in both orders; and the judge's row of a --compare run."""
    j, parts = results.get(FAMILY.name), []
    if j:
        n, lc, v = j["n"], j["length_control"], j["verdicts"]
        share = (lambda k: f"{k} ({k / n:.0%})") if n else str
        parsed = v["A"] + v["B"] + v["tie"]
        lc_text = (f"{H.num(lc['value']):.3f} [{H.num(lc['ci'][0]):.3f}, {H.num(lc['ci'][1]):.3f}]"
                   if lc["value"] is not None else f"not estimable: {lc['note']}")
        rows = [("judge", j["judge"]), ("template", j["template"]), ("pairs judged in both orders", n),
                ("tuned wins", share(j["wins"])), ("ties (both orders)", share(j["ties"])),
                ("tuned loses", share(j["losses"])), ("order-dependent (counted as ties)", share(j["inconsistent"])),
                ("unparseable (left out)", share(j["unparseable"])),
                ("consistency", f"{(j['wins'] + j['ties'] + j['losses']) / n:.1%}" if n else "-"),
                ("first position chosen", f"{v['A'] / parsed:.1%} of {parsed} parseable replies" if parsed else "-"),
                ("win rate (ties as half)", f"{H.num(j['win_rate']):.3f} [{H.num(j['win_ci'][0]):.3f}, "
                                            f"{H.num(j['win_ci'][1]):.3f}]"),
                ("length-controlled win rate", lc_text),
                ("mean answer length (characters)", f"tuned {H.num(j['mean_chars']['tuned']):.0f}, base "
                                                    f"{H.num(j['mean_chars']['base']):.0f}")]
        parts += ["<h2>Judge: tuned vs base answers</h2>", H.table(rows, "dpo-eval-judge"),
                  "<h3>Examples</h3><table class='dpo-eval-judge-examples' "
                  "style='white-space:pre-wrap;vertical-align:top'>"
                  + H.cells(("outcome", "question", "tuned answer", "base answer", "reply, tuned shown first",
                             "reply, base shown first"), "th"),
                  *(H.cells((e["outcome"], e["question"], e["tuned"], e["base"], e["reply_tuned_first"],
                             e["reply_base_first"])) for e in j["examples"]), "</table>"]
    c = (results.get("comparison") or {}).get(FAMILY.name)
    if c:
        lo, hi = c["win_ci"]
        claim = next((x for x in results.get("claims", []) if x["id"].endswith(f"[{WIN.id()}]")), {})
        parts += [f"<h3>Judge: this adapter against {html.escape(str(results['comparison'].get('other')))}</h3>",
                  H.table([("pairs judged in both orders", c["n"] - c["unparseable"]),
                           ("win rate of this adapter", f"{H.num(c['win_rate']):.3f} [{H.num(lo):.3f}, "
                                                        f"{H.num(hi):.3f}]"),
                           ("wins / losses", f"{c['wins']} / {c['losses']}"),
                           ("verdict", claim.get("outcome", "-"))], "dpo-eval-judge-compare")]
    return "".join(parts)


FAMILY = Family(
    "judge", (WIN, CONTROLLED, CONSISTENT), claims, needs=frozenset({"answers"}), settings=Settings, options=OPTIONS,
    rank=70, reference=True, absent=lambda cfg: None if cfg.settings_of(FAMILY).source else (
        "no --judge given: pass a judge model (a local one, or 'base') or an OpenAI-compatible server URL with "
        "--judge-model to have tuned and base answers judged"),
    check=judge, section=lambda run: {FAMILY.name: run.stages.computed(SUMMARY)} if SUMMARY in run.stages
    else {}, report=report, compared=lambda run: (WIN.id(),), compare=compare,
    doc="A judge model prefers the tuned answers to the base answers, in both orders and at equal length.")
