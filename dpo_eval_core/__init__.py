"""dpo-eval's library: a release gate for DPO-trained LoRA adapters, usable without pytest.

Start reading here, top down:

    from dpo_eval_core import EvalConfig, GateRun
    run = GateRun(EvalConfig(adapter=Path("ckpt"), data="prefs.jsonl"))
    claim = run.claim("reward-accuracy")        # computes only what this claim needs
    print(claim.outcome, claim.value, claim.ci, claim.message)   # pass, fail or inconclusive

- `registry`: every claim family (id, what it ranges over, whether it gates, what it needs);
- `gate.GateRun`: the stages of one run, each computed on first use by the module that owns it;
- `builders`: one builder per family, from the run's stages to claims (`claims`, `regression`);
- below them: `config`, `data`, `mcq` (multiple-choice sets and prompts), `models`,
  `backend`/`generation`, `rewards`, `forgetting` (tuned vs base accuracy, paired), `judge`
  (pairwise verdicts in both orders, length-controlled win rate) over `endpoint` (an OpenAI-compatible
  client), `compare` (paired comparisons of two adapters or of a run and its baseline) and `comparison` (the
  --compare stage), `features`, `stats`, `decide` (pass, fail or inconclusive: the intervals and the
  non-inferiority rule), `quantization`, `identity` (every cache key), `cache`.
The demo (`dpo_eval_core.demo`) and the scripts sit above this API; the core never imports them.
"""

from .claims import Claim
from .config import EvalConfig, GateConfig
from .errors import CacheError, CheckpointError, ConfigError, DataError, DpoEvalError, EndpointError, ResourceError
from .gate import GateRun
from .registry import FAMILIES, RATES, Family, family_of
from .results import build_results, load_results, write_json

__all__ = ["FAMILIES", "RATES", "CacheError", "CheckpointError", "Claim", "ConfigError", "DataError", "DpoEvalError",
           "EndpointError", "EvalConfig", "Family", "GateConfig", "GateRun", "ResourceError", "build_results", "family_of",
           "load_results", "write_json"]
