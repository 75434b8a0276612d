"""results.json: every claim, the configuration used and the run's facts, for CI and other tools."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from .cache import atomic_write_text
from .claims import Claim
from .errors import ConfigError
from .identity import library_versions
from .plan import PLAN
from .report import precision_lines, sequential_lines
from .scoring import SCORER, SERVE_CHECK
from .sequential import ROUNDS
from .texts import SERVED

GLOSSARY = "docs/glossary.md"
"""The page that says what the console's statistical words mean: the summary and the plan point at it."""
SCHEMA_VERSION = 2
"""2: the configuration holds each claim family's settings under `families` (1 held them as flat fields); the
claims, facts and measurement sections are as in 1."""
READABLE = (1, 2)
"""Versions a baseline may have: what a baseline is compared on (claims, facts, per-item values) is the same."""


def jsonable(obj: Any) -> Any:
    """`obj` as JSON values: dataclasses as dicts of their fields, paths as strings, non-finite floats as null."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def run_facts(run: Any) -> dict[str, Any]:
    """What was gated, on what, how: the header of the report and the identity of a baseline. Only what
    the run computed is reported (a data-only run has no model facts)."""
    sec = shared(run)
    facts: dict[str, Any] = {"libraries": library_versions(), "timings_s": {k: round(v, 2) for k, v in
                                                                             run.timings.items()},
                             "cache": run.cache.stats(), "computed": dict(run.computed)}
    if "spec" in sec:
        spec = sec["spec"]
        facts.update(base_model=spec.base_declared, base_loaded=spec.base, adapter=str(spec.adapter))
        if "tokenizer" in run.__dict__:  # the adapter's own when it saved one (its chat template), else the base's
            facts["tokenizer"] = run.tokenizer.name_or_path
    for name, key in (("base_fingerprint", "base_fingerprint"), ("adapter_fingerprint", "adapter_sha256")):
        if name in sec:
            facts[key] = sec[name]
    facts["gating"] = run.cfg.gate.gating_record()
    if (plan := run.stages.computed(PLAN)) is not None:
        facts["plan"] = plan.record()
    if "gate" in run.__dict__:  # a claim was decided on this look: which one, at what level, what came before
        facts["look"] = run.look.record()
    if "pairs" in sec:
        ps = sec["pairs"]
        facts["data"] = {"source": ps.source, "layout": ps.layout, "rows": ps.n_rows, "dropped": dict(ps.dropped),
                         "split_mode": ps.split_mode, "pairs": ps.counts(), "fingerprint": ps.fingerprint(),
                         "prompts_in_both_splits": ps.prompts_in_both_splits,
                         "truncated_by_max_samples": dict(ps.truncated_by_max_samples)}
    if "identity" in sec:
        facts["model_key"] = sec["identity"].fields()
        choice = run.cfg.dtype_choice
        facts["compute"] = {"dtype": choice.dtype, "weights": choice.loads, "reason": choice.reason,
                            "device": run.cfg.resolved_device}
    if "answers" in sec:
        facts["answers_from"] = ({"server": run.cfg.serve_url, "tuned": run.cfg.serve_model,
                                  "base": run.cfg.serve_base_model,
                                  "chat_template": {"local": "applied by the gate, token ids sent to /completions",
                                                    "server": "the server's, messages sent to /chat/completions"}[
                                      run.cfg.serve_prompt]} if run.cfg.serve_url else "local")
        given = {r: [g for g in gens if g is not None] for r, gens in sec["answers"].items()}
        facts["truncated_share"] = {r: float(np.mean([g.truncated for g in gens])) if gens else 0.0
                                    for r, gens in given.items()}
        split = [p.split for p in sec["pairs"].pairs]
        facts["answered"] = {s: sum(g is not None and sp == s for g, sp in zip(sec["answers"]["tuned"], split))
                             for s in ("train", "valid")}
    if run.cfg.serve_url:
        scorer = run.stages.computed(SCORER)
        facts["model_work"] = {
            "answers": "server" if "answers" in sec else "not asked",
            "log_probs": (f"server ({scorer[0].mode})" if run.cfg.serve_scoring == "server" else "local model")
            if scorer else "not computed",
            "local_model": ("not loaded" if "load" not in run.timings else
                            f"loaded: --serve-check {run.cfg.serve_check} scored pairs locally too"
                            if run.stages.computed(SERVE_CHECK) else
                            "loaded: a claim needed the weights (checkpoint and quantization claims always do)"),
            "replicas": {role: s.endpoint.report() for role, s in (run.stages.computed(SERVED) or {}).items()},
            "check": run.stages.computed(SERVE_CHECK)}
    return facts


def claim_record(claim: Claim, gating: bool) -> dict[str, Any]:
    """One claim as results.json stores it (JSON types only, so it also crosses xdist's wire)."""
    return dict(jsonable(claim), gating=gating, family=claim.family(), outcome=claim.outcome)


def run_sections(run: Any) -> dict[str, Any]:
    """What one process (the session, or one xdist worker) measured: config, facts, and each family's sections
    (features, rewards, forgetting, judge, comparison...)."""
    config = jsonable(run.cfg) | {"families": {name: jsonable(s) for name, s in run.cfg.families}}
    return {"config": config, "facts": run_facts(run), **jsonable(sections(run))}


def shared(run: Any) -> dict[str, Any]:
    """The run's shared stages computed so far, by name (the facts report only what ran)."""
    names = ("spec", "base_fingerprint", "adapter_fingerprint", "pairs", "identity", "answers")
    return {n: run.__dict__[n] for n in names if n in run.__dict__}


def sections(run: Any) -> dict[str, Any]:
    """What results.json records besides the claims and facts: each family's own sections, and how each stage
    took its items."""
    out = {k: v for f in run.families if f.section for k, v in f.section(run).items()}
    rounds = {name: staged.record() for name, staged in run.stages.each(ROUNDS).items()}
    return {**out, "sequential": rounds} if rounds else out


_SUMMED = ("timings_s", "cache", "computed")


def _add(a: Any, b: Any) -> Any:
    """Sum two counters, nested dicts key by key."""
    if isinstance(a, dict) and isinstance(b, dict):
        return {k: _add(a.get(k, 0), b.get(k, 0)) for k in sorted({*a, *b})}
    return round(a + b, 2)


def merge_sections(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Sections of several xdist workers as one: counters and timings add up, each worker's sequential stages
    join the others' (the stages a worker computed are its own), everything else is the same in every worker
    (same options, same inputs) and is taken from the first that has it."""
    out: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if key == "sequential":
                out[key] = {**value, **out.get(key, {})}
                continue
            if key != "facts":
                out.setdefault(key, value)
                continue
            facts = out.setdefault("facts", {})
            for fk, fv in value.items():
                if fk in _SUMMED and fk in facts:
                    facts[fk] = _add(facts[fk], fv)
                else:
                    facts.setdefault(fk, fv)
    out.setdefault("facts", {})["processes"] = len(parts)
    return out


def build_results(sections: Mapping[str, Any], claims: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The results document: schema version, sections and every claim record, sorted by id."""
    return {"schema_version": SCHEMA_VERSION, **sections,
            "claims": sorted((dict(c) for c in claims), key=lambda c: c["id"])}


def load_results(path: Path, option: str = "--baseline") -> dict[str, Any]:
    """Read a results.json of a schema this version reads (READABLE); anything else is refused, naming `option`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(option, str(path), "an existing results.json", "Pass the results.json of an earlier run.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(option, str(path), "a results.json (valid JSON)", f"It does not parse: {e}.") from None
    if not isinstance(data, dict) or data.get("schema_version") not in READABLE:
        found = data.get("schema_version") if isinstance(data, dict) else type(data).__name__
        raise ConfigError(option, str(path), f"results.json schema_version {' or '.join(map(str, READABLE))}",
                        f"Found {found!r}; re-run the baseline with this version of dpo-eval.")
    for key in ("config", "facts", "claims"):
        if key not in data:
            raise ConfigError(option, str(path), f"a results.json with a {key!r} section",
                            "The file is incomplete; re-run the baseline.")
    return data


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomic write, so an interrupted run never leaves half a results file. Sorted keys and fixed
    indentation: loading and writing a results file again gives the same bytes."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")


def outcome_of(record: Mapping[str, Any]) -> str:
    """pass, fail, inconclusive or not applicable, from a claim record (old records have no 'outcome')."""
    if "outcome" in record:
        return str(record["outcome"])
    return "not applicable" if not record["applicable"] else "pass" if record["passed"] else "fail"


def blocks(record: Mapping[str, Any], results: Mapping[str, Any]) -> bool:
    """Whether a gating claim record fails the run: failed, or inconclusive unless the gate says 'warn'."""
    outcome = outcome_of(record)
    warn = results.get("config", {}).get("gate", {}).get("inconclusive") == "warn"
    return bool(record["gating"]) and (outcome == "fail" or (outcome == "inconclusive" and not warn))


def verdict_word(record: Mapping[str, Any]) -> str:
    return {"pass": "pass", "fail": "**FAIL**", "inconclusive": "**INCONCLUSIVE**"}.get(outcome_of(record), "-")


def summary_markdown(results: Mapping[str, Any]) -> str:
    """A short markdown table of the gating claims and the verdict, for a CI job summary."""
    claims = [c for c in results["claims"] if c["gating"] and c["applicable"]]
    failed = [c["id"] for c in claims if blocks(c, results)]
    facts = results.get("facts", {})
    lines = [f"### dpo-eval gate: {'FAILED' if failed else 'PASSED'}", "",
             f"Adapter `{facts.get('adapter', '-')}` on `{facts.get('base_model', '-')}`, data "
             f"`{facts.get('data', {}).get('source', '-')}`" + (f"; failed: {', '.join(failed)}" if failed else ""), "",
             "| claim | verdict | value | interval | n |", "|---|---|---|---|---|"]
    for c in claims:
        value = "-" if c["value"] is None else f"{c['value']:.4g}"
        ci = f"[{c['ci'][0]:.3g}, {c['ci'][1]:.3g}]" if c.get("ci") and None not in c["ci"] else ""
        lines.append(f"| `{c['id']}` | {verdict_word(c)} | {value} | {ci} | {c['n'] or ''} |")
    return "\n".join(lines) + "\n"


ID_WIDTH = 32
"""Claim ids up to this long share the line with their verdict; a longer one gets a line of its own."""


def judged_line(facts: Mapping[str, Any]) -> str:
    """What the run judged: adapter, base, data with its split sizes, dtype and device."""
    data, key = facts.get("data") or {}, facts.get("model_key") or {}
    pairs = data.get("pairs") or {}
    sha = str(facts.get("adapter_sha256") or "")[:12]
    parts = [f"adapter {facts['adapter']}" + (f" (sha256 {sha})" if sha else "") if "adapter" in facts else "",
             f"base {facts['base_model']}" if facts.get("base_model") else "",
             f"data {data['source']} ({pairs.get('train', 0)} train, {pairs.get('valid', 0)} valid pairs)"
             if data else "",
             f"{key['dtype']} on {key['device']}" + (f", quantization {key['quant']}" if key.get("quant") not in
                                                      (None, "none") else "") if key else ""]
    work = facts.get("model_work")
    if work:
        scored = "" if work["log_probs"] == "not computed" else f", log-probs from the {work['log_probs']}"
        parts.append(f"answers from the server{scored}, local model {work['local_model'].split(':')[0]}")
    return "judged: " + ("; ".join(p for p in parts if p) or "nothing: no claim needed the adapter or the data")


def console_summary(results: Mapping[str, Any], path: Path, not_checked: Mapping[str, int], html: Path | None,
                    per_item: Callable[[str], bool] = lambda cid: False) -> list[str]:
    """The gate's console summary: what was judged, each gating claim's outcome, then the verdict with every
    claim that blocks it (value and threshold), what was not checked and why, wall time and where the
    results are. `per_item(id)`: a claim of a per-item kind that does not gate by default (per feature), counted
    rather than listed."""
    facts = results.get("facts", {})
    claims = results["claims"]
    gating = [c for c in claims if c["gating"] and c["applicable"] and not per_item(c["id"])]
    lines = [judged_line(facts)]
    if (selection := facts.get("selection")) and selection["partial"]:
        chosen = " ".join(f"{flag} {selection[key]!r}" for flag, key in (("-k", "keyword"), ("-m", "markexpr"))
                          if selection.get(key))
        lines.append(f"partial run ({chosen or 'a selection'}"
                     + (f", {selection['deselected']} gate tests deselected" if selection["deselected"] else "") + "): "
                     "results.json holds only the selected claims; a --baseline compares only those")
    if (entries := facts.get("gating")) and entries["replaced"]:
        lines.append(f"gating: {entries['entries']} entr{'ies' if entries['entries'] != 1 else 'y'}, replaced the "
                     f"default {entries['default_entries']}" + (f"; left out: {', '.join(entries['left_out'])}"
                                                                if entries["left_out"] else "")
                     + (f"; added: {', '.join(entries['added'])}" if entries["added"] else "")
                     + " (gating+=ID adds to the default instead)")
    if look := facts.get("look"):
        lines.append(f"look {look['number']} on this adapter: decided at one-sided {look['tail']:.4g} of "
                     f"{look['total']:.4g} across its looks (a run on more or other data is look {look['number'] + 1}, "
                     f"at {look['next_tail']:.4g}; docs/decisions.md)")
    lines += [f"sequential: {line}" for line in sequential_lines(results.get("sequential") or {})]
    lines += [f"float32 verdicts: {line}" for line in precision_lines(results)]
    words = {"pass": "PASS", "fail": "FAIL", "inconclusive": "INCONCLUSIVE"}
    for c in sorted(gating, key=lambda c: c["id"]):
        word = f"{words.get(outcome_of(c), '-'):>12}"
        if len(c["id"]) <= ID_WIDTH:
            lines.append(f"{word}  {c['id']:<{ID_WIDTH}}  {c['message']}")
        else:
            lines += [f"{word}  {c['id']}", f"{'':<12}  {'':<{ID_WIDTH}}  {c['message']}"]
    per_feature = [c for c in claims if c["applicable"] and not c["gating"] and per_item(c["id"])]
    if per_feature:
        held = sum(outcome_of(c) == "pass" for c in per_feature)
        lines.append(f"per-feature claims (not gating): {held} of {len(per_feature)} hold")
    if any(c["applicable"] and not c["gating"] and outcome_of(c) != "pass" for c in claims):
        lines.append("pytest's xfailed count is the claims that do not gate and did not hold: reported, never failing "
                     "the run")
    blocking = [c for c in claims if c["applicable"] and blocks(c, results)]
    if blocking:
        lines.append(f"gate: FAILED on {len(blocking)} claim{'s' * (len(blocking) != 1)}:")
        lines += [f"  {c['id']}: {outcome_of(c)}, value {_short(c['value'])}, threshold {c['threshold']}"
                  + (f"; about {c['n_needed']} items would decide it" if c.get("n_needed") else "")
                  for c in sorted(blocking, key=lambda c: c["id"])]
    else:
        lines.append("gate: PASSED: every gating claim holds")
    if not_checked:
        lines.append("not checked: " + "; ".join(f"{why} ({n} test{'s' * (n != 1)})"
                                                 for why, n in sorted(not_checked.items())))
    wall = facts.get("wall_s")
    where = [f"results.json: {path}"] + ([f"report: {html}"] if html else [])
    lines.append((f"wall time {wall:.0f} s; " if isinstance(wall, (int, float)) else "") + "; ".join(where))
    lines.append(f"the words above (look, bounds, margin, inconclusive, ...), one line each: {GLOSSARY}")
    return lines


def _short(x: Any) -> str:
    return "-" if x is None else f"{x:.4g}" if isinstance(x, float) else str(x)
