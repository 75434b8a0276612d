"""Gate validity: the default gate on a real DPO adapter and on three controls it must reject.

    python -m dpo_eval_core.demo.validity --out validity.md                  # the demo
    python -m dpo_eval_core.demo.validity --data pairs.jsonl --adapter uf/dpo --swapped uf/swapped

Controls, built from the real adapter: zero (every LoRA B = 0: the identity), noise (every LoRA
matrix replaced by noise of the same norm) and swapped (the same DPO recipe trained with chosen
and rejected exchanged: `dpo_eval_core.demo.train --swap`; the demo's is bundled). Every adapter
is gated with the same configuration and cache (base answers and reference log-probs are shared),
and a markdown table of the gating claims is printed and written. Each adapter is judged as a first look
(a ledger of its own, looks.py): the table measures the rules, it does not release an adapter.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import tempfile
from pathlib import Path
from typing import Any

from ..config import EvalConfig, default_cache_dir, installed
from ..run import GateRun
from . import DEMO_ADAPTER_DIR, DEMO_DATA, DEMO_SWAPPED_DIR, local_bases, with_demo_defaults
from .controls import noise_adapter, zero_adapter

CLAIMS = tuple(k.id() for f in installed() for k in f.kinds if k.validity)
"""The claims the controls are meant to fail (Kind.validity); quantization claims test the base's numerics,
not what the adapter learned."""


def gate_adapters(cfg: EvalConfig, adapters: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """name -> {claim id: claim} for each adapter, every gating claim but quantization."""
    out = {}
    for name, adapter in adapters.items():
        run = GateRun(with_demo_defaults(dataclasses.replace(cfg, adapter=adapter)),
                      local_bases=local_bases(cfg.cache_dir))
        out[name] = {c.id: c for c in run.all_claims() if cfg.gate.gates(c.id)}
        run.free()
    return out


def _cell(c: Any) -> str:
    value = "-" if c.value is None or (isinstance(c.value, float) and math.isnan(c.value)) else f"{c.value:.3g}"
    word = {"pass": "pass", "fail": "**FAIL**", "inconclusive": "**INCONCLUSIVE**"}.get(c.outcome, c.outcome)
    return f"{word} {value}"


def table(results: dict[str, dict[str, Any]]) -> str:
    """Markdown: one row per adapter, the verdict and value of each claim, and the gate's verdict."""
    lines = ["| adapter | " + " | ".join(CLAIMS) + " | gate |", "|---" * (len(CLAIMS) + 2) + "|"]
    for name, claims in results.items():
        failed = [cid for cid, c in claims.items() if c.applicable and not c.passed]
        lines.append(f"| {name} | " + " | ".join(_cell(claims[cid]) for cid in CLAIMS)
                     + f" | {'FAILS' if failed else 'passes'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", type=Path, default=DEMO_ADAPTER_DIR, help="the real DPO adapter")
    parser.add_argument("--swapped", type=Path, default=None,
                        help="the swapped-preference control (default: the bundled demo one; required with --data)")
    parser.add_argument("--data", default=None, help="preference data (default: the demo pairs)")
    parser.add_argument("--max-samples", type=int, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--eval-cache-dir", type=Path, default=default_cache_dir())
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    ns = parser.parse_args(argv)
    if ns.swapped is None and ns.data is not None:
        parser.error("--data needs --swapped: train one with python -m dpo_eval_core.demo.train --swap --data ...")
    cfg = EvalConfig(data=ns.data or DEMO_DATA, max_samples=ns.max_samples, max_new_tokens=ns.max_new_tokens,
                     cache_dir=ns.eval_cache_dir)
    with tempfile.TemporaryDirectory(prefix="dpo-eval-controls-") as tmp:
        cfg = dataclasses.replace(cfg, looks=Path(tmp) / "looks.json")
        adapters = {"DPO adapter": ns.adapter, "zero (B = 0)": zero_adapter(ns.adapter, Path(tmp) / "zero"),
                    "noise (same norms)": noise_adapter(ns.adapter, Path(tmp) / "noise"),
                    "swapped preferences": ns.swapped or DEMO_SWAPPED_DIR}
        results = gate_adapters(cfg, adapters)
    text = table(results)
    print(text)
    if ns.out:
        ns.out.write_text(text)
    return results


if __name__ == "__main__":
    main()
