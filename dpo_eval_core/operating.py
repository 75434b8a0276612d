"""Operating characteristics of the decision rules: how often each passes a bad adapter (false pass at the
line) and how often it passes a good one (power), by exact enumeration where the outcomes can be counted and
seeded Monte Carlo where they cannot. docs/decisions.md's tables are this module's output
(`python -m dpo_eval_core.operating`), and tests/test_decision_errors.py asserts its cells.

Every rule is evaluated as the code decides (decide.py, compare.py): the error table at the gate's one-sided
0.025 (the whole error across an adapter's looks), the power table at the first look's share of it (looks.py),
and the looks table by simulating a team that extends its data after a look that did not pass.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np

from . import decide as D
from .looks import share

TAIL = 0.025
FIRST_TAIL = TAIL * share(1)
"""What the gate's first look on an adapter decides at (the power table's level)."""
SIZES = (6, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
"""n from the rules' floor (6 items at a one-sided 0.025) to 5,000."""


def _trinomial_window(n: int, p_better: float, p_worse: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(better, worse, probability) of n paired items, over every outcome within 9 SD of the means (the rest
    carries less than 1e-18 of the mass)."""
    from scipy.special import gammaln

    def span(p: float) -> np.ndarray:
        sd = math.sqrt(n * p * (1 - p))
        return np.arange(max(0, int(n * p - 9 * sd) - 2), min(n, int(n * p + 9 * sd) + 3) + 1)

    b, c = np.meshgrid(span(p_better), span(p_worse), indexing="ij")
    keep = b + c <= n
    b, c = b[keep].astype(float), c[keep].astype(float)
    rest = n - b - c

    def term(k: np.ndarray, p: float) -> np.ndarray:
        return np.where(k > 0, k * math.log(p), 0.0) if p > 0 else np.where(k > 0, -np.inf, 0.0)

    logp = (gammaln(n + 1) - gammaln(b + 1) - gammaln(c + 1) - gammaln(rest + 1) + term(b, p_better)
            + term(c, p_worse) + term(rest, 1 - p_better - p_worse))
    return b, c, np.exp(logp)


def paired_pass_rate(n: int, p_better: float, p_worse: float, margin: float, tail: float = TAIL) -> float:
    """Exact P(pass) of the paired-proportions non-inferiority rule (Tango, with its small-sample z): its lower
    bound lies above -margin exactly when the score statistic at d0 = -margin exceeds the corrected z."""
    from scipy.stats import norm

    if n < D.min_items(tail):
        return 0.0
    b, c, p = _trinomial_window(n, p_better, p_worse)
    z = float(norm.isf((1 - D.tango_level(1 - 2 * tail, n)) / 2))  # the z that paired_bounds decides at
    return float(p[D.tango_statistic(b, c, n, -margin) > z].sum())


def proportion_pass_rate(n: int, p_true: float, threshold: float, level: float = 1 - 2 * TAIL) -> float:
    """Exact P(pass) of "rate above threshold" on Clopper-Pearson at true rate p_true."""
    from scipy.stats import beta, binom

    if n < D.min_items((1 - level) / 2):
        return 0.0
    k = np.arange(n + 1)
    lo = np.where(k > 0, beta.ppf((1 - level) / 2, np.maximum(k, 1), n - k + 1), 0.0)
    return float(binom.pmf(k, n, p_true)[lo > threshold].sum())


def agreement_pass_rate(k: int, p_agree: float, threshold: float, level: float = 1 - 2 * TAIL) -> float:
    """Exact P(pass) of sign-agreement-rate over k signal directions each agreeing with probability p_agree:
    decided on (agreeing - 1) of (k - 1), one direction spent on projecting out the general pull."""
    from scipy.stats import beta, binom

    if k - 1 < D.min_items((1 - level) / 2):
        return 0.0
    a = np.arange(k + 1)
    kd = np.maximum(a - 1, 0)
    lo = np.where(kd > 0, beta.ppf((1 - level) / 2, np.maximum(kd, 1), (k - 1) - kd + 1), 0.0)
    return float(binom.pmf(a, k, p_agree)[lo > threshold].sum())


SHAPES: dict[str, Callable[[np.random.Generator, tuple[int, int]], np.ndarray]] = {
    "normal": lambda rng, size: rng.standard_normal(size),
    "skew -2": lambda rng, size: 1.0 - rng.exponential(1.0, size),
    "skew +2": lambda rng, size: rng.exponential(1.0, size) - 1.0,
}
"""Per-item values of mean 0 and SD 1: normal, and exponential (skewness 2) mirrored to a long left tail (a
regression concentrated in a few items) and as it is."""


def _skew_lower(x: np.ndarray, level: float) -> np.ndarray:
    """decide.skew_interval's lower bound for each row of x, vectorised (the same formula)."""
    from scipy.stats import t

    n = x.shape[1]
    m, s = x.mean(axis=1), x.std(axis=1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        g = np.where(s > 0, ((x - m[:, None]) ** 3).mean(axis=1) / s ** 3, 0.0) - math.sqrt(6.0 / n)
        a = g / math.sqrt(n)
        y = float(t.ppf(1 - (1 - level) / 2, n - 1))
        q = np.where(np.abs(a) < 1e-12, y, 3.0 / a * (np.cbrt(1.0 + a * (y - a / 6.0)) - 1.0))
        return np.where(s > 0, m - q * s / math.sqrt(n), -np.inf)


def mean_pass_rate(n: int, shape: str, shift: float, runs: int, rng: np.random.Generator,
                   level: float = 1 - 2 * TAIL) -> float:
    """Monte Carlo P(pass) of "mean above 0" (and of non-inferiority on per-item differences, the same rule
    moved by the margin) for items of `shape` with true mean `shift` (in SD)."""
    if n < D.min_items((1 - level) / 2):
        return 0.0
    hits, done = 0, 0
    while done < runs:
        k = min(runs - done, max(1, 4_000_000 // n))
        hits += int((_skew_lower(SHAPES[shape](rng, (k, n)) + shift, level) > 0).sum())
        done += k
    return hits / runs


def relative_margin_pass_rate(n: int, rho: float, r: float, runs: int, rng: np.random.Generator,
                              shape: str = "normal", level: float = 1 - 2 * TAIL) -> float:
    """Monte Carlo P(pass) of not-worse[reward-margin] (relative margin r of the other's mean, decided on
    c_i - k o_i) when the candidate's mean sits exactly on the margin: mean c = (1 - r) mean o, per-item
    correlation rho. The other's margins have mean 1 and SD 1."""
    if n < D.min_items((1 - level) / 2):
        return 0.0
    hits, done = 0, 0
    while done < runs:
        k = min(runs - done, max(1, 4_000_000 // n))
        o = 1.0 + SHAPES[shape](rng, (k, n))
        c = (1 - r) * 1.0 + rho * (o - 1.0) + math.sqrt(max(0.0, 1 - rho * rho)) * SHAPES[shape](rng, (k, n))
        scale = 1.0 - r * np.sign(o.mean(axis=1, keepdims=True))
        hits += int((_skew_lower(c - scale * o, level) > 0).sum())
        done += k
    return hits / runs


@dataclass(frozen=True, slots=True)
class Cell:
    """One cell of the error table: a rule, a setting, n, and its pass rate at the line."""

    rule: str
    setting: str
    n: int
    false_pass: float
    nominal: float
    method: str

    @property
    def within(self) -> bool:
        """At most the nominal level x 1.1 (Monte Carlo cells: plus two standard errors of their runs)."""
        return self.false_pass <= self.nominal * 1.1


def error_cells(sizes: Sequence[int] = SIZES, runs: int = 20_000, seed: int = 20261204) -> list[Cell]:
    """Every rule's false pass at its line, over the settings the gate meets."""
    rng = np.random.default_rng(seed)
    cells: list[Cell] = []
    for margin in (0.02, 0.05, 0.1):
        for disc in sorted({margin + 0.01, 0.15, 0.3, 0.45, 0.6}):
            for n in sizes:  # a true drop of `margin` with `disc` of the items changing
                cells.append(Cell("Tango non-inferiority", f"margin {margin}, {disc:.0%} changing", n,
                                  paired_pass_rate(n, (disc - margin) / 2, (disc + margin) / 2, margin), TAIL, "exact"))
    for n in sizes:
        cells.append(Cell("Clopper-Pearson above 0.5", "rate 0.5", n, proportion_pass_rate(n, 0.5, 0.5), TAIL, "exact"))
    for shape in SHAPES:
        for n in sizes:
            cells.append(Cell("skew-guarded t (mean above a line; non-inferiority on per-item values)",
                              f"{shape}, mean on the line", n, mean_pass_rate(n, shape, 0.0, runs, rng), TAIL,
                              f"Monte Carlo, {runs} runs"))
    for rho in (0.0, 0.9, 0.99, 0.999):
        for n in sizes:
            cells.append(Cell("relative margin (not-worse[reward-margin])", f"per-pair correlation {rho}", n,
                              relative_margin_pass_rate(n, rho, 0.1, runs, rng), TAIL, f"Monte Carlo, {runs} runs"))
    return cells


def _cp_needed(n: int, tail: float, threshold: float) -> int:
    """The fewest successes of n whose Clopper-Pearson lower bound (one-sided `tail`) lies above `threshold`."""
    from scipy.stats import beta

    k = np.arange(1, n + 1)
    ok = np.nonzero(beta.ppf(tail, k, n - k + 1) > threshold)[0]
    return int(k[ok[0]]) if ok.size else n + 1


def looks_cells(first: int, runs: int, rng: np.random.Generator, max_looks: int = 3) -> list[Cell]:
    """A team that runs the gate, and after a look that did not pass adds as much data again and runs once more
    (n, 2n, 4n items, each look's data holding the one before): the chance that any look passes at the line,
    when every look decides at the whole 0.025 (each re-run a fresh chance) and at the looks' shares (looks.py).
    Two rules: Clopper-Pearson above 0.5 at a true rate of 0.5, and Tango non-inferiority at a true drop equal to
    the margin 0.04 with 15% of items changing."""
    from scipy.stats import norm

    sizes = [first * 2 ** j for j in range(max_looks)]
    spending = {"every look at 0.025": [TAIL] * max_looks,
                "looks' shares (0.8, 0.1, 0.05 of 0.025)": [TAIL * share(j + 1) for j in range(max_looks)]}
    cells = []
    # proportions: successes accumulate over the nested looks
    steps = np.diff([0, *sizes])
    k = np.cumsum(np.stack([rng.binomial(m, 0.5, runs) for m in steps], axis=1), axis=1)
    for name, tails in spending.items():
        passed = np.zeros(runs, dtype=bool)
        for j, (n, t) in enumerate(zip(sizes, tails)):
            passed |= k[:, j] >= _cp_needed(n, t, 0.5)
            cells.append(Cell("Clopper-Pearson above 0.5, extended after each look", name, n, float(passed.mean()),
                              TAIL, f"Monte Carlo, {runs} runs; any of {j + 1} looks"))
    # paired proportions: better / worse counts accumulate; the drop equals the margin
    margin, changing = 0.04, 0.15
    probs = [(changing - margin) / 2, (changing + margin) / 2, 1 - changing]
    counts = np.cumsum(np.stack([rng.multinomial(m, probs, runs) for m in steps], axis=1), axis=1)
    for name, tails in spending.items():
        passed = np.zeros(runs, dtype=bool)
        for j, (n, t) in enumerate(zip(sizes, tails)):
            z = float(norm.isf((1 - D.tango_level(1 - 2 * t, n)) / 2))
            passed |= D.tango_statistic(counts[:, j, 0], counts[:, j, 1], n, -margin) > z
            cells.append(Cell(f"Tango non-inferiority, margin {margin}, {changing:.0%} changing, extended after each "
                              "look", name, n, float(passed.mean()), TAIL, f"Monte Carlo, {runs} runs; any of "
                              f"{j + 1} looks"))
    return cells


def power_rows(max_forgetting: float, min_reward_accuracy: float, sizes: Sequence[int] = (200, 500, 1000, 2000, 5000),
               runs: int = 20_000, seed: int = 1) -> list[dict[str, float | int | str]]:
    """The chance a good adapter passes each default gating claim, and the whole gate (the product: the
    claims' data are treated as independent), per n valid pairs (= questions per multiple-choice set).

    The good adapter, as the issue that asked for this table states it: reward accuracy 0.62 (0.58 per
    token), mean reward margin 0.25 SD, 16 signal directions each agreeing with probability 0.8 (the
    directions come from the data, so they do not grow with n here), and two multiple-choice sets with no
    true drop and 15% of answers changing. At the first look's level (FIRST_TAIL): a run that is a later look on
    the same adapter decides at a smaller one, and has less power."""
    rng = np.random.default_rng(seed)
    rows = []
    level = 1 - 2 * FIRST_TAIL
    for n in sizes:
        acc = proportion_pass_rate(n, 0.62, min_reward_accuracy, level)
        per_token = proportion_pass_rate(n, 0.58, min_reward_accuracy, level)
        mean = mean_pass_rate(n, "normal", 0.25, runs, rng, level)
        agree = agreement_pass_rate(16, 0.8, 0.5, level)
        kept = paired_pass_rate(n, 0.075, 0.075, max_forgetting, FIRST_TAIL)
        gate = acc * per_token * mean * agree * kept * kept
        rows.append({"n": n, "reward accuracy": acc, "per-token accuracy": per_token, "mean margin": mean,
                     "sign agreement (16 directions)": agree, f"no forgetting (margin {max_forgetting}, each of 2)": kept,
                     "whole gate": gate})
    return rows


def size_for(power: float, chance: Callable[[int], float], start: int = 6, cap: int = 1_000_000) -> int | None:
    """The fewest items at which `chance(n)` reaches `power` (doubling, then bisection; None past cap)."""
    lo, hi = start, start
    while chance(hi) < power:
        if hi >= cap:
            return None
        lo, hi = hi, min(cap, hi * 2)
    while lo < hi:
        mid = (lo + hi) // 2
        if chance(mid) >= power:
            hi = mid
        else:
            lo = mid + 1
    return hi


def markdown(cells: Sequence[Cell], rows: Sequence[dict], looks: Sequence[Cell] = ()) -> str:
    """The error table (worst cell per rule and setting, and the n where it occurs), the power table, and the
    looks table (every cell: the chance that any of the first looks passes)."""
    out = ["| rule | setting | worst false pass | at n | nominal | method |", "|---|---|---|---|---|---|"]
    groups: dict[tuple[str, str], list[Cell]] = {}
    for c in cells:
        groups.setdefault((c.rule, c.setting), []).append(c)
    for (rule, setting), cs in groups.items():
        w = max(cs, key=lambda c: c.false_pass)
        out.append(f"| {rule} | {setting} | {w.false_pass:.4f} | {w.n} | {w.nominal} | {w.method} |")
    keys = list(rows[0])
    out += ["", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    out += ["| " + " | ".join(f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |"
            for r in rows]
    if looks:
        out += ["", "| rule | each look decided at | looks | n at the last | false pass, any look |", "|---|---|---|---|---|"]
        out += [f"| {c.rule} | {c.setting} | {c.method.rsplit('any of ', 1)[1].split()[0]} | {c.n} | "
                f"{c.false_pass:.4f} |" for c in looks]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m dpo_eval_core.operating", description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20_000, help="Monte Carlo runs per cell (20000)")
    ap.add_argument("--json", help="also write every cell and row here")
    ap.add_argument("--max-forgetting", type=float, default=0.04, help="the forgetting margin (the default gate's)")
    ap.add_argument("--min-reward-accuracy", type=float, default=0.5, help="the accuracy threshold (the default's)")
    ns = ap.parse_args(argv)
    cells, rows = error_cells(runs=ns.runs), power_rows(ns.max_forgetting, ns.min_reward_accuracy, runs=ns.runs)
    looks = looks_cells(200, 10 * ns.runs, np.random.default_rng(7))
    print(markdown(cells, rows, looks))
    if ns.json:
        with open(ns.json, "w", encoding="utf-8") as f:
            json.dump({"error": [asdict(c) for c in cells], "power": rows, "looks": [asdict(c) for c in looks]}, f,
                      indent=1)


if __name__ == "__main__":
    main()
