"""results.json: every claim, the configuration used and the run's facts, for CI and other tools."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import tempfile
from pathlib import Path
from typing import Any, Iterable

from .claims import Claim

SCHEMA_VERSION = 1


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    names = ("torch", "transformers", "peft", "bitsandbytes", "textdescriptives", "spacy", "scipy", "numpy")
    out = {"python": platform.python_version()}
    for n in names:
        try:
            out[n] = md.version(n)
        except md.PackageNotFoundError:
            out[n] = "not installed"
    return out


def run_facts(run: Any) -> dict[str, Any]:
    """What was gated, on what, how: the header of the report and the identity of a baseline."""
    facts: dict[str, Any] = {"libraries": library_versions(), "timings_s": {k: round(v, 2) for k, v in
                                                                             run.timings.items()},
                             "cache": run.cache.stats(), "computed": dict(run.computed)}
    try:
        spec = run.spec
        facts.update(base_model=spec.base_declared, base_loaded=spec.base, adapter=str(spec.adapter),
                     demo=spec.is_demo)
        ps = run.pairs
        facts["data"] = {"source": ps.source, "layout": ps.layout, "rows": ps.n_rows, "dropped": dict(ps.dropped),
                         "split_mode": ps.split_mode, "pairs": ps.counts(),
                         "prompts_in_both_splits": ps.prompts_in_both_splits,
                         "truncated_by_max_samples": dict(ps.truncated_by_max_samples)}
    except Exception as e:  # facts are best effort: the claims already carry the error
        facts["error"] = f"{type(e).__name__}: {e}"
    if run._loaded is not None:
        facts["model_key"] = run._loaded.model_key
    if "answers" in run.__dict__:
        facts["truncated_share"] = run.truncated_share()
    return facts


def build_results(run: Any, claims: Iterable[tuple[Claim, bool]]) -> dict[str, Any]:
    out = {
        "schema_version": SCHEMA_VERSION,
        "config": _jsonable(run.cfg),
        "facts": run_facts(run),
        "claims": [dict(_jsonable(c), gating=g, family=c.family()) for c, g in claims],
    }
    if "feature_stats" in run.__dict__:
        out["features"] = _jsonable(run.feature_stats)
    if "reward_summary" in run.__dict__:
        out["rewards"] = _jsonable(run.reward_summary)
    return out


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomic write, so an interrupted run never leaves half a results file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True, allow_nan=False)
            f.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
