"""The report's run facts and plots, computed from a results document alone, so any results.json
can be rendered again. Plots are PNGs embedded as data URIs: the report opens with no network.
"""

from __future__ import annotations

import base64
import html
import io
import math
from typing import Any, Mapping, Sequence

from .features import FEATURE_FAMILIES

Results = Mapping[str, Any]

CHOSEN_REJECTED, TUNED_BASE = "#1f77b4", "#ff7f0e"
AGREE, DISAGREE = "#2ca02c", "#d62728"


def num(x: Any) -> float:
    """JSON null (a NaN when written) back to NaN."""
    return math.nan if x is None else float(x)


def _ordered(features: Sequence[Mapping[str, Any]], key: str) -> list[tuple[str, list[Mapping[str, Any]]]]:
    """Features grouped by TextDescriptives family (in FEATURE_FAMILIES order), each group sorted by `key`
    descending, NaN last."""
    families = list(dict.fromkeys(FEATURE_FAMILIES.values()))
    groups: dict[str, list[Mapping[str, Any]]] = {f: [] for f in families}
    for f in features:
        groups.setdefault(FEATURE_FAMILIES.get(f["feature"], "other"), []).append(f)
    return [(fam, sorted(rows, key=lambda r: (math.isnan(num(r[key])), -num(r[key]) if not math.isnan(
        num(r[key])) else 0.0))) for fam, rows in groups.items() if rows]


def _layout(groups: list[tuple[str, list[Mapping[str, Any]]]]) -> tuple[list[float], list[str], list[tuple[float,
                                                                                                          str]]]:
    """y positions (top to bottom) for each feature, its label, and (y, family) for each group header."""
    ys, labels, headers, y = [], [], [], 0.0
    for fam, rows in groups:
        headers.append((y, fam))
        y += 1.2
        for r in rows:
            ys.append(y)
            labels.append(r["feature"])
            y += 1.0
        y += 0.4
    return ys, labels, headers


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(n_rows: float, ncols: int = 1, width: float = 10.0) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=(width, 1.2 + 0.16 * n_rows), sharey=True, squeeze=False,
                        layout="constrained")


def _label_rows(ax: Any, ys: list[float], labels: list[str], headers: list[tuple[float, str]],
                names: bool = True) -> None:
    ax.set_yticks(ys, labels, fontsize=7)
    for y, fam in headers:
        if names:
            ax.text(0.0, y, fam, transform=ax.get_yaxis_transform(), ha="right", va="center", fontsize=8,
                    fontweight="bold")
        ax.axhline(y - 0.6, color="0.85", linewidth=0.6)
    ax.set_ylim(max(ys) + 1, -1)
    ax.axvline(0, color="0.3", linewidth=0.8)


def feature_effects_plot(features: Sequence[Mapping[str, Any]]) -> str:
    """Normalised avg(chosen - rejected) and avg(tuned - base) per feature, train and valid side by side."""
    groups = _ordered(features, "cr_train")
    ys, labels, headers = _layout(groups)
    rows = [r for _, rs in groups for r in rs]
    fig, axes = _figure(ys[-1] + 2, ncols=2, width=11)
    for ax, split in zip(axes[0], ("train", "valid")):
        cr = [num(r[f"cr_{split}"]) for r in rows]
        tb = [num(r[f"tb_{split}"]) for r in rows]
        ax.barh([y - 0.2 for y in ys], cr, height=0.4, color=CHOSEN_REJECTED, label="chosen - rejected")
        ax.barh([y + 0.2 for y in ys], tb, height=0.4, color=TUNED_BASE, label="tuned - base")
        _label_rows(ax, ys, labels, headers, names=split == "train")
        ax.set_title(f"{split} split", fontsize=10)
        ax.set_xlabel("avg(difference) / S (S = std of chosen - rejected on train)", fontsize=8)
        ax.grid(axis="x", color="0.92")
    axes[0][1].legend(loc="lower right", fontsize=8)
    fig.suptitle("Per-feature effects, normalised (NaN where S is 0: the feature never differs)", fontsize=11)
    return _png(fig)


def sign_agreement_plot(features: Sequence[Mapping[str, Any]], signal: set[str]) -> str | None:
    """tuned - base (with its bootstrap interval) against the data's direction, for data-signal features."""
    chosen = [f for f in features if f["feature"] in signal]
    if not chosen:
        return None
    groups = _ordered(chosen, "cr_valid")
    ys, labels, headers = _layout(groups)
    rows = [r for _, rs in groups for r in rs]
    fig, axes = _figure(ys[-1] + 2, width=9)
    ax = axes[0][0]
    tb = [num(r["tb_valid"]) for r in rows]
    lo = [num((r.get("tb_valid_ci") or [None, None])[0]) for r in rows]
    hi = [num((r.get("tb_valid_ci") or [None, None])[1]) for r in rows]
    colors = [AGREE if r["sign_agreement"] > 0 else DISAGREE for r in rows]
    ax.barh(ys, tb, height=0.6, color=colors)
    err = [[max(t - a, 0) if not math.isnan(a) else 0 for t, a in zip(tb, lo)],
           [max(b - t, 0) if not math.isnan(b) else 0 for t, b in zip(tb, hi)]]
    ax.errorbar(tb, ys, xerr=err, fmt="none", ecolor="0.2", elinewidth=0.7, capsize=1.5)
    ax.scatter([num(r["cr_valid"]) for r in rows], ys, marker="D", s=14, color="black", zorder=3,
               label="chosen - rejected (the data's direction)")
    _label_rows(ax, ys, labels, headers)
    agree = sum(r["sign_agreement"] > 0 for r in rows)
    ax.set_title(f"Sign agreement on the valid split: {agree} of {len(rows)} data-signal features "
                 f"({agree / len(rows):.0%}); green bars agree, red disagree", fontsize=10)
    ax.set_xlabel("normalised avg(tuned - base), with its bootstrap interval", fontsize=8)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", color="0.92")
    return _png(fig)


def reward_margin_plot(rewards: Mapping[str, Any]) -> str | None:
    """Histogram of per-pair implicit reward margins on the valid split."""
    margins = [m for m in rewards.get("margins", []) if m is not None]
    if not margins:
        return None
    fig, axes = _figure(20, width=8)
    ax = axes[0][0]
    ax.hist(margins, bins=min(40, max(5, len(margins) // 3)), color=CHOSEN_REJECTED, alpha=0.85)
    ax.axvline(0, color="0.2", linewidth=1, linestyle="--", label="0: no preference")
    mean = sum(margins) / len(margins)
    ax.axvline(mean, color=TUNED_BASE, linewidth=1.5, label=f"mean {mean:.3g}")
    acc = rewards.get("accuracy", {}).get("value")
    ax.set_title(f"Implicit reward margin beta * (log-ratio chosen - log-ratio rejected), valid split, "
                 f"n={len(margins)}" + (f", accuracy {acc:.3f}" if acc is not None else ""), fontsize=10)
    ax.set_xlabel("reward margin", fontsize=8)
    ax.set_ylabel("pairs", fontsize=8)
    ax.legend(fontsize=8)
    return _png(fig)


OUTCOME_COLOURS = {"pass": "#2a9d55", "fail": "#c0392b", "inconclusive": "#e69f00"}


def series_curves_plot(series: Mapping[str, Any]) -> str | None:
    """One panel per gating claim of a training run that is measured with an interval (the rates and means, not
    the checks of the checkpoint or the data): its value against the step, each checkpoint's interval,
    the threshold where its text names one, each point coloured by outcome and the shipped checkpoint ringed."""
    rows = [c for c in series.get("checkpoints", []) if c.get("gated") and c.get("step") is not None]
    ids = sorted({k for c in rows for k, v in (c.get("intervals") or {}).items() if v})  # the measured rates
    if not ids:
        return None
    ncols = min(3, len(ids))
    nrows = -(-len(ids) // ncols)
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 2.8 * nrows), squeeze=False, layout="constrained")
    for ax, cid in zip(axes.flat, ids):
        pts = [(c["step"], c["values"][cid], (c.get("intervals") or {}).get(cid), c["outcomes"].get(cid), c["name"])
               for c in rows if c.get("values", {}).get(cid) is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color="0.6", linewidth=1, zorder=1)
        for step, value, ci, outcome, name in pts:
            colour = OUTCOME_COLOURS.get(outcome or "", "0.4")
            if ci:
                ax.errorbar(step, value, yerr=[[max(value - ci[0], 0.0)], [max(ci[1] - value, 0.0)]], color=colour,
                            capsize=3, linewidth=1, zorder=2)
            ax.scatter([step], [value], color=colour, s=30, zorder=3)
            if name == series.get("chosen"):
                ax.scatter([step], [value], facecolors="none", edgecolors="0.1", s=140, linewidths=1.5, zorder=4)
        if (line := series.get("thresholds", {}).get(cid)) is not None:
            ax.axhline(line, color="0.2", linestyle="--", linewidth=1)
        ax.set_title(cid, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(ids):]:
        ax.set_visible(False)
    return _png(fig)


def series_html(results: Mapping[str, Any]) -> str:
    """The training run's section: the curves, then each checkpoint's step, verdict and reason."""
    series = results.get("series")
    if not isinstance(series, Mapping):
        return ""
    chosen = series.get("chosen")
    head = (f"{chosen} ships" if chosen else "no checkpoint can ship") + f" (rule: {series.get('rule')}; one-sided " \
        f"{num(series.get('tail')):.3g} each)"
    rows = [(f"{c['name']} (step {c['step']})", c["reason"]) for c in series.get("checkpoints", [])]
    rows += [("note", n) for n in series.get("notes", [])]
    rows += [("convergence", series["convergence"])] if series.get("convergence") else []
    rows += [("flag", series["overoptimization"])] if series.get("overoptimization") else []
    return (section("Training run: each gating claim against the step (green pass, red fail, orange inconclusive; "
                    "ringed: the checkpoint that ships)", series_curves_plot(series))
            + f"<h2>Training run: {html.escape(head)}</h2>" + table(rows, "dpo-eval-series"))


def _short(digest: Any) -> str:
    return str(digest)[:12] if digest else "-"


def facts(results: Results) -> list[tuple[str, str]]:
    """The report header: what was gated, on which data, how, with which libraries, how long it took."""
    f, cfg = results.get("facts", {}), results.get("config", {})
    data = f.get("data", {})
    rows = [
        ("base model", f"{f.get('base_model', '-')} (loaded from {f.get('base_loaded', '-')}, weights "
                       f"sha256 {_short(f.get('base_fingerprint'))})"),
        ("adapter", f"{f.get('adapter', '-')} (weights sha256 {_short(f.get('adapter_sha256'))})"),
        ("data", f"{data.get('source', '-')} ({data.get('layout', '-')}, fingerprint {_short(data.get('fingerprint'))})"),
        ("rows and pairs", f"{data.get('rows', '-')} rows; train {data.get('pairs', {}).get('train', '-')}, valid "
                           f"{data.get('pairs', {}).get('valid', '-')} pairs ({data.get('split_mode', '-')} split); "
                           f"dropped {data.get('dropped', {})}"),
        ("answers", f"tuned and base answered {f.get('answered', {}).get('valid', '-')} valid and "
                    f"{f.get('answered', {}).get('train', '-')} train prompts (--train-answers "
                    f"{cfg.get('train_answers') if cfg.get('train_answers') is not None else 'all'}); the train-side "
                    f"tuned - base averages use the answered ones, every claim the valid split"),
        ("compute", f"{f['compute']['dtype']} on {f['compute']['device']} ({f['compute']['reason']}); quantization "
                    f"{cfg.get('quant')}" if f.get("compute") else
         f"quantization {cfg.get('quant')}, --compute-dtype {cfg.get('compute_dtype')}, device {cfg.get('device')}"),
        ("generation", f"max_new_tokens {cfg.get('max_new_tokens')}, do_sample {cfg.get('do_sample')}, temperature "
                       f"{cfg.get('temperature')}, top_p {cfg.get('top_p')}, batch {cfg.get('batch_size')}, seed "
                       f"{cfg.get('seed')}; answers cut at the limit: "
                       + (", ".join(f"{k} {v:.1%}" for k, v in f["truncated_share"].items())
                          if f.get("truncated_share") else "-")),
        ("libraries", ", ".join(f"{k} {v}" for k, v in f.get("libraries", {}).items())),
        ("durations (s)", ", ".join(f"{k} {v}" for k, v in {**f.get("timings_s", {}),
                                                            "wall": f.get("wall_s", "-")}.items())),
        ("float32 verdicts", "; ".join(precision_lines(results)) or "none: no bfloat16 pass settled by float32"),
        ("sequential rounds", "; ".join(sequential_lines(results.get("sequential") or {})) or
         "none: no stage of this run scored items one by one (gate.sequential, docs/decisions.md)"),
        ("cache", f"hits {f.get('cache', {}).get('hits', {})}, misses {f.get('cache', {}).get('misses', {})}; "
                  f"recomputed {f.get('computed', {})}; processes {f.get('processes', 1)}"),
    ]
    return rows


def precision_lines(results: Mapping[str, Any]) -> list[str]:
    """One line per stage a bfloat16 pass scored with float32 verdicts: how many of its items were scored again
    in float32 (precision.py)."""
    stages = [("rewards", results.get("rewards"), "pairs"),
              *((f"forgetting[{k}]", v, "questions") for k, v in (results.get("forgetting") or {}).items())]
    return [f"{name}: {r['rescored']} of {r['items']} {unit} scored again in float32"
            + (f" ({r['for_mean']} of them, widest bands first, for the margin's verdict)" if r.get("for_mean") else "")
            for name, stage, unit in stages if isinstance(stage, Mapping) and (r := stage.get("rescored"))]


def sequential_lines(stages: Mapping[str, Any]) -> list[str]:
    """One line per stage whose items could come in rounds: how many it scored of how many and why it stopped,
    or why it took every item at once."""
    why = {"decided": "every gating claim decided", "futile": "no open gating claim would pass with every item (futility)",
           "all items": "a gating claim stayed open to the last round",
           "cap": "stopped at gate.max_items: a larger cap continues these rounds"}
    return [f"{name} scored {s['n_used']} of {s['n_items']} items in {len(s['rounds'])} of {len(s['planned'])} "
            f"rounds ({why[s['stopped']]})" if s.get("rounds") else f"{name}: {s['why']}"
            for name, s in sorted(stages.items())]


def accuracy(a: Mapping[str, Any]) -> str:
    """An accuracy record as 'value [low, high]'."""
    return f"{num(a['value']):.3f} [{num(a['ci_low']):.3f}, {num(a['ci_high']):.3f}]"


def cells(row: Sequence[Any], tag: str = "td") -> str:
    """One table row, escaped."""
    return "<tr>" + "".join(f"<{tag}>{html.escape(str(v))}</{tag}>" for v in row) + "</tr>"


def table(rows: Sequence[tuple[str, Any]], cls: str) -> str:
    """A two-column table of (name, value) rows, names as row headers."""
    return (f"<table class='{cls}'>" + "".join(f"<tr><th style='text-align:left;padding-right:1em'>{html.escape(k)}"
                                               f"</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
            + "</table>")


def section(title: str, png: str | None) -> str:
    """A titled plot, embedded as a data URI (nothing when there is no plot)."""
    if png is None:
        return ""
    return (f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' style='max-width:100%' "
            f"src='data:image/png;base64,{png}'/>")


def summary_html(results: Results, fragments: Sequence[str] = ()) -> str:
    """The facts table, then each family's fragment (tables, plots with images inline), as one HTML fragment."""
    return "<h2>Run facts</h2>" + table(facts(results), "dpo-eval-facts") + "".join(fragments)
