"""dpo-eval's library: a release gate for DPO-trained LoRA adapters, usable without pytest.

Start reading here, top down:

    from dpo_eval_core import EvalConfig, GateRun
    run = GateRun(EvalConfig(adapter=Path("ckpt"), data="prefs.jsonl"))
    claim = run.claim("reward-accuracy")        # computes only what this claim needs
    print(claim.outcome, claim.value, claim.ci, claim.message)   # pass, fail or inconclusive

- `run.GateRun`: the stages every family shares (pairs, tokenizer, the loaded model, answers, text
  features), each computed once; a claim id goes to the family that makes it;
- `training.gate_series(cfg, series.find_series("output_dir"), cache=...)`: every checkpoint of a training run
  on one loaded base, and the checkpoint to ship;
- `families/`: one module per claim family (checkpoint, quantization, rewards, data-signal, alignment,
  forgetting, judge, comparison, regression), each declaring its claims, settings, options and how it
  measures (`family.Family`); `registry` finds them, and a user's package adds its own through the
  `dpo_eval.families` entry point;
- below them: `config`, `data`, `mcq`, `models`, `backend`/`generation`, `rewards`, `forgetting`, `judge`
  over `endpoint`, `compare` (paired comparisons), `features`, `stats`, `decide` (pass, fail or
  inconclusive: the intervals and the non-inferiority rule), `claims` (the shared claim constructors),
  `quantization`, `identity` (every cache key), `cache`.
The demo (`dpo_eval_core.demo`) and the scripts sit above this API; the core never imports them.

Imports are lazy: `import dpo_eval_core` (or `dpo_eval_core.stats`) loads neither torch nor transformers;
a name below is imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .claims import Claim
    from .config import EvalConfig, GateConfig
    from .errors import (
        CacheError,
        CheckpointError,
        ConfigError,
        DataError,
        DpoEvalError,
        EndpointError,
        ResourceError,
    )
    from .family import Family, Kind, Option
    from .results import build_results, load_results, write_json
    from .run import GateRun
    from .series import find_series
    from .training import gate_series, series_of

WHERE = {"Claim": "claims", "EvalConfig": "config", "GateConfig": "config", "Family": "family", "Kind": "family",
         "Option": "family", "GateRun": "run", "find_series": "series", "gate_series": "training", "series_of": "training", "build_results": "results", "load_results": "results",
         "write_json": "results", **{e: "errors" for e in ("CacheError", "CheckpointError", "ConfigError", "DataError",
                                                           "DpoEvalError", "EndpointError", "ResourceError")}}
__all__ = ["CacheError", "CheckpointError", "Claim", "ConfigError", "DataError", "DpoEvalError", "EndpointError",
           "EvalConfig", "Family", "GateConfig", "GateRun", "Kind", "Option", "ResourceError", "build_results",
           "load_results", "write_json", "find_series", "gate_series", "series_of"]


def __getattr__(name: str) -> Any:
    """The public names, each imported from its module on first use (PEP 562)."""
    if name not in WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{WHERE[name]}", __name__), name)
