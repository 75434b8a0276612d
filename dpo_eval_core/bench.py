"""Benchmark of the gate's hot paths on the demo, measured side by side in one run.

    python -m dpo_eval_core.bench [--out bench.json] [--prompts 32] [--texts 500]

Prints one table of ratios (batched vs one-by-one generation, feature pipeline vs
TextDescriptives text by text) with throughput, the share of this machine's measured
matmul throughput that generation reaches, and peak memory, and writes it as JSON.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .backend import GenerationSettings
from .cache import Cache
from .config import EvalConfig, default_cache_dir
from .features import FeatureSettings, build_pipeline, doc_features, extract
from .gate import GateRun


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    ratio: float
    detail: str


def rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_gflops(n: int = 1024, repeats: int = 10) -> float:
    """fp32 GEMM throughput of this machine now, the roofline for generation."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def bench_generation(run: GateRun, n_prompts: int, max_new_tokens: int) -> dict[str, Any]:
    backend = run.loaded.backend
    prompts = [p.messages for p in run.pairs.pairs[:n_prompts]]
    settings = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=16)
    start = time.perf_counter()
    batched = []
    for i in range(0, len(prompts), settings.batch_size):
        batched += backend.generate(prompts[i:i + settings.batch_size], adapter=True, settings=settings)
    t_batched = time.perf_counter() - start
    start = time.perf_counter()
    single = [backend.generate([p], adapter=True, settings=settings)[0] for p in prompts]
    t_single = time.perf_counter() - start
    tokens_b, tokens_s = sum(g.n_tokens for g in batched), sum(g.n_tokens for g in single)
    n_params = sum(p.numel() for p in backend.model.parameters())
    gflops = matmul_gflops()
    tok_s = tokens_b / t_batched
    return {"prompts": len(prompts), "max_new_tokens": max_new_tokens, "tokens_batched": tokens_b,
            "tokens_single": tokens_s, "seconds_batched": t_batched, "seconds_single": t_single,
            "tokens_per_s_batched": tok_s, "tokens_per_s_single": tokens_s / t_single,
            "ratio": tok_s / (tokens_s / t_single), "same_answers": [g.text for g in batched] == [g.text for g in single],
            "matmul_gflops": gflops, "model_gflop_per_token": 2 * n_params / 1e9,
            "roofline_share": tok_s * 2 * n_params / 1e9 / gflops}


def bench_features(texts: list[str], settings: FeatureSettings) -> dict[str, Any]:
    nlp = build_pipeline(settings)
    start = time.perf_counter()
    naive = [doc_features([nlp(t)])[0] for t in texts]  # one pipeline, one text at a time
    t_naive = time.perf_counter() - start
    start = time.perf_counter()
    piped = extract(texts, nlp, settings)
    t_pipe = time.perf_counter() - start
    same = all(a.keys() == b.keys() and all((a[k] == b[k]) or (a[k] != a[k] and b[k] != b[k]) or
                                            abs(a[k] - b[k]) <= 1e-9 for k in a) for a, b in zip(naive, piped))
    return {"texts": len(texts), "seconds_naive": t_naive, "seconds_pipeline": t_pipe,
            "texts_per_s_pipeline": len(texts) / t_pipe, "texts_per_s_naive": len(texts) / t_naive,
            "ratio": t_naive / t_pipe, "batch_size": settings.batch_size, "n_process": settings.n_process,
            "same_values": same}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench.json"))
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--texts", type=int, default=500)
    parser.add_argument("--n-process", type=int, default=2)
    parser.add_argument("--eval-cache-dir", type=Path, default=default_cache_dir())
    ns = parser.parse_args(argv)

    baseline_rss = rss_mb()
    run = GateRun(EvalConfig(cache_dir=ns.eval_cache_dir), cache=Cache(ns.eval_cache_dir, enabled=False))
    gen = bench_generation(run, ns.prompts, ns.max_new_tokens)
    weights_mb = sum(p.numel() * p.element_size() for p in run.loaded.backend.model.parameters()) / 2**20
    peak_after_model = rss_mb()
    pool = [t for p in run.pairs.pairs for t in (p.chosen, p.rejected)]
    texts = (pool * (ns.texts // max(1, len(pool)) + 1))[:ns.texts]
    feats = bench_features(texts, FeatureSettings(n_process=ns.n_process))
    rows = [
        Row("generation: batched / one-by-one", gen["ratio"],
            f"{gen['tokens_per_s_batched']:.0f} vs {gen['tokens_per_s_single']:.0f} tok/s, "
            f"{gen['prompts']} prompts, same answers: {gen['same_answers']}"),
        Row("generation: share of matmul roofline", gen["roofline_share"],
            f"{gen['tokens_per_s_batched']:.0f} tok/s x {gen['model_gflop_per_token']:.2f} GFLOP/tok vs "
            f"{gen['matmul_gflops']:.0f} GFLOP/s measured"),
        Row("features: pipeline / per text", feats["ratio"],
            f"{feats['texts_per_s_pipeline']:.1f} vs {feats['texts_per_s_naive']:.1f} texts/s, "
            f"{feats['texts']} texts, same values: {feats['same_values']}"),
        Row("memory: peak RSS growth / model weights", (peak_after_model - baseline_rss) / weights_mb,
            f"peak {rss_mb():.0f} MiB, weights {weights_mb:.0f} MiB"),
    ]
    width = max(len(r.name) for r in rows)
    print(f"{'measure':<{width}}  {'ratio':>7}  detail")
    for r in rows:
        print(f"{r.name:<{width}}  {r.ratio:>7.2f}  {r.detail}")
    result = {"rows": [asdict(r) for r in rows], "generation": gen, "features": feats,
              "peak_rss_mb": rss_mb(), "weights_mb": weights_mb}
    ns.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {ns.out}")
    return result


if __name__ == "__main__":
    main()
