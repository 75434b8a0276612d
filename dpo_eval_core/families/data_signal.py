"""Chosen and rejected answers differ in text features: the data gives DPO something to learn. Computed from
the data alone: `pytest evals -k data_signal --data prefs.jsonl` loads no model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from .. import report as H
from ..claims import Claim, fmt, paired_test
from ..errors import ConfigError
from ..family import Family, Kind
from ..features import FEATURE_NAMES
from ..stats import FeatureStat, feature_stats, min_attainable_p, pairs_needed
from ..stages import Stage

if TYPE_CHECKING:
    from ..run import GateRun

DATA_STATS: Stage[list[FeatureStat]] = Stage("data stats")

PER_FEATURE = Kind("data-signal", "chosen and rejected differ in this feature (train split)", over="FEATURE",
                   gates=False, detail=True)
SIGNAL = Kind("data-signal", "at least K features differ chosen vs rejected", validity=True)


@dataclass(frozen=True, slots=True)
class Settings:
    min_signal_features: int = 5
    """K: the data carries signal when at least K features differ chosen vs rejected."""

    def __post_init__(self) -> None:
        if not isinstance(self.min_signal_features, int) or self.min_signal_features < 0:
            raise ConfigError("data-signal.min_signal_features", self.min_signal_features, "an integer >= 0")


def stats(run: GateRun, values: dict[str, np.ndarray]) -> list[FeatureStat]:
    """Per-feature paired Wilcoxon statistics of the given roles (chosen, rejected, and tuned and base when
    given), corrected within each family of tests."""
    g = run.cfg.gate
    return feature_stats(values, [p.split for p in run.pairs.pairs], FEATURE_NAMES, g.correction, ci_level=g.ci_level,
                         n_boot=g.n_bootstrap, rng=np.random.default_rng(run.cfg.seed))


def data_stats(run: GateRun) -> list[FeatureStat]:
    """Per-feature chosen-rejected statistics, from the data alone."""
    return run.stages.once(DATA_STATS, lambda: stats(run, run.data_features))


def signal_features(stats: Sequence[FeatureStat], alpha: float) -> list[FeatureStat]:
    """The features in which chosen and rejected differ: the directions the tuned answers should move in."""
    return [s for s in stats if s.p_cr_adj < alpha and min_attainable_p(s.n_cr_nonzero) <= alpha]


def data_signal(stats: Sequence[FeatureStat], s: Settings, gate: Any) -> list[Claim]:
    """chosen vs rejected per feature (train split), then the aggregate count."""
    claims = [paired_test(PER_FEATURE.id(f.feature), f.p_cr, f.p_cr_adj, f.r_cr, f.n_train, f.n_cr_nonzero,
                          f"avg(chosen-rejected)/S = {fmt(f.cr_train)} on train", gate) for f in stats]
    k = sum(c.passed for c in claims)
    short = sum(0 < f.n_cr_nonzero and min_attainable_p(f.n_cr_nonzero) > gate.alpha for f in stats)
    note = (f"; {short} features cannot reach alpha with this few pairs: at least {pairs_needed(gate.alpha)} "
            f"pairs with a difference are needed") if short else ""
    claims.append(Claim(SIGNAL.id(), k >= s.min_signal_features, float(k), f">= {s.min_signal_features} features", "",
                        len(stats), f"{k} of {len(stats)} features differ chosen vs rejected (alpha {gate.alpha}, "
                        f"{gate.correction}); need {s.min_signal_features}" + note))
    return claims


def claims(run: GateRun, _: str | None) -> list[Claim]:
    return data_signal(data_stats(run), run.settings(FAMILY), run.cfg.gate)


def report(results: Mapping[str, Any]) -> str:
    features = results.get("features") or []
    return H.section("Per-feature effects", H.feature_effects_plot(features) if features else None)


FAMILY = Family(
    "data-signal", (PER_FEATURE, SIGNAL), claims, needs=frozenset({"data"}), settings=Settings, rank=40,
    arguments=lambda run, kind: FEATURE_NAMES, accepts=lambda kind, arg: arg in FEATURE_NAMES,
    section=lambda run: {"features": run.stages.computed(DATA_STATS)} if DATA_STATS in run.stages else {},
    report=report, doc="Chosen and rejected answers differ in text features: the data gives DPO something to learn.")
