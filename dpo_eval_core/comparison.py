"""The --compare stage: this run's adapter (the candidate) against another adapter of the same base.

The other adapter is a GateRun of its own on the same pairs, questions and cache, whose model is the
candidate's loaded model with the second adapter beside the first (PEFT multi-adapter): every answer,
log-prob and feature row comes from one load, and the base's answers and reference log-probs are
shared through the cache. Each `not-worse[...]` item is computed on first use from the two runs'
stages; the pure comparisons and their non-inferiority decisions are in `compare.py`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from . import compare as CMP
from . import judge as J
from .claims import signal_features
from .features import FEATURE_NAMES
from .registry import split_id
from .stats import agreement_difference_ci, agreement_flags, differences, sign

if TYPE_CHECKING:
    from .gate import GateRun


class Comparison:
    """Candidate (`run`) vs other (`run.other`), item by item, memoised."""

    def __init__(self, run: GateRun) -> None:
        self.run, self.other = run, run.other
        self.items: dict[str, CMP.PairedComparison] = {}
        self.features: tuple[CMP.FeatureShift, ...] = ()
        self.judge: J.JudgeSummary | None = None

    def _rng(self) -> np.random.Generator:
        return np.random.default_rng(self.run.cfg.seed)

    def item(self, what: str) -> CMP.PairedComparison:
        """One paired comparison: a reward rate or the margin, the alignment direction, a --mcq set."""
        if what not in self.items:
            a, b = self.run, self.other
            if what == "sign-agreement":
                self.items[what] = self._agreement()
            elif split_id(what)[0] == "mcq-accuracy":
                name = split_id(what)[1] or ""
                fa, fb = a.forgetting(name), b.forgetting(name)
                x, y = CMP.match(fa.question_ids, fa.tuned_right, fb.question_ids, fb.tuned_right)
                self.items[what] = CMP.compare_correct(what, x, y)
            else:
                ra, rb = a.reward_summary, b.reward_summary
                field = {"reward-margin": "margins", "reward-accuracy": "correct",
                         "reward-accuracy-per-token": "correct_per_token"}[what]
                x, y = CMP.match(ra.pair_ids, getattr(ra, field), rb.pair_ids, getattr(rb, field))
                test = CMP.compare_values if what == "reward-margin" else CMP.compare_correct
                self.items[what] = test(what, x, y)
        return self.items[what]

    def _agreement(self) -> CMP.PairedComparison:
        """Each adapter's sign agreement (its answers minus the base's, the data's way) per data-signal feature
        on the valid pairs, paired by feature; with the bootstrap over pairs of the two rates' difference."""
        g, a = self.run.cfg.gate, self.run
        valid = np.array([p.split == "valid" for p in a.pairs.pairs])
        signal = {s.feature: s for s in signal_features(a.data_stats, g)}
        cols = [j for j, f in enumerate(FEATURE_NAMES) if f in signal]
        d_cr, d_a = differences({**a.data_features, **a.answer_features})
        _, d_b = differences({**a.data_features, "tuned": self.other.answer_features["tuned"],
                              "base": a.answer_features["base"]})
        d_cr, d_a, d_b = (x[valid][:, cols] for x in (d_cr, d_a, d_b))
        boot = agreement_difference_ci(d_cr, d_a, d_b, 1 - 2 * g.alpha, g.n_bootstrap, self._rng())
        stats = {s.feature: s for s in a.data_stats}
        self.features = CMP.feature_shifts(
            a.answer_features["tuned"][valid], self.other.answer_features["tuned"][valid], FEATURE_NAMES,
            [stats[f].scale for f in FEATURE_NAMES],
            [sign(signal[f].cr_train) if f in signal else 0 for f in FEATURE_NAMES], g.correction)
        return CMP.compare_correct("sign-agreement", agreement_flags(d_cr, d_a), agreement_flags(d_cr, d_b), boot)

    def judged(self) -> J.JudgeSummary:
        """The judge on the candidate's answers (as 'tuned') against the other's (as 'base'), both orders."""
        if self.judge is None:
            a, g = self.run, self.run.cfg.gate
            answers = {"tuned": a.answers["tuned"], "base": self.other.answers["tuned"]}
            with a.ledger.phase("judge (compare)"):
                self.judge, n = J.measure(a.judge, a.pairs.pairs, answers, J.load_template(a.cfg.judge_template),
                                          a.cfg.judge_max_tokens, a.cache, g.ci_level, g.n_bootstrap, self._rng())
            a.ledger.count("judge_replies", n)
        return self.judge

    def section(self) -> dict[str, Any]:
        """What results.json records: the other adapter, each comparison made, the feature shifts, the judge."""
        out: dict[str, Any] = {"other": str(self.other.cfg.adapter), "items": dict(self.items),
                               "features": self.features}
        if "adapter_fingerprint" in self.other.__dict__:
            out["other_sha256"] = self.other.adapter_fingerprint
        if self.judge is not None:
            out["judge"] = self.judge
        return out
