"""Benchmark of the gate on the demo, measured side by side in one run.

    python -m dpo_eval_core.bench [--out bench.json] [--prompts 64] [--texts 500] [--max-samples 32]

Prints one table of ratios (batched vs one-by-one generation, feature pipeline vs
TextDescriptives text by text, warm vs cold gate, new adapter vs cold gate, peak memory of
the gate vs one loaded model) with throughput and the share of this machine's measured
matmul throughput that generation reaches, and writes it as JSON. Generation runs with the
gate's own settings (batch size, max new tokens) and batching.

The gate rows run the whole gate (every claim, the CPU quantization variants included) in a
fresh process-local GateRun each: cold from an empty cache (the converted demo base is shared,
converting a GGUF is not gating), warm on the cache cold left, and a new adapter (the noise
control: same shapes and norms as the demo adapter) on the same data and cache. Peak memory is
measured in child processes, so each number is that process's own peak.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .backend import GenerationSettings, batches
from .cache import Cache
from .config import EvalConfig, default_cache_dir
from .data import load_pairs
from .demo import DEMO_ADAPTER_DIR, demo_base_dir, local_bases, with_demo_defaults
from .demo.controls import noise_adapter
from .features import FeatureSettings, build_pipeline, doc_features, extract
from .gate import GateRun


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    ratio: float
    detail: str


def rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB. Linux's VmHWM, because ru_maxrss
    survives execve and a child would report its parent's peak."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_gflops(sizes: tuple[int, ...] = (1024, 2048), seconds: float = 1.0) -> float:
    """Peak fp32 GEMM throughput of this machine now (best of square sizes): the roofline."""
    import torch

    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)
        start, repeats = time.perf_counter(), 0
        while (elapsed := time.perf_counter() - start) < seconds:
            torch.mm(a, b)
            repeats += 1
        best = max(best, 2 * n**3 * repeats / elapsed / 1e9)
    return best


def bench_generation(run: GateRun, n_prompts: int, settings: GenerationSettings) -> dict[str, Any]:
    """The gate's own batched generation against the same prompts one at a time.

    The roofline share counts the tokens the model must process, prompt and answer (2 FLOPs
    per parameter each), against peak GEMM throughput; the share of answer tokens alone is
    reported beside it, since prefill is work a user never sees as output.
    """
    backend = run.model.backend
    prompts = [p.messages for p in run.pairs.pairs[:n_prompts]]
    lengths = [len(backend.prompt_ids(m)) for m in prompts]
    start = time.perf_counter()
    batched: dict[int, Any] = {}
    for batch in batches(len(prompts), settings.batch_size, lengths):  # as the gate batches them
        batched.update(zip(batch, backend.generate([prompts[i] for i in batch], adapter=True, settings=settings)))
    t_batched = time.perf_counter() - start
    start = time.perf_counter()
    single = [backend.generate([p], adapter=True, settings=settings)[0] for p in prompts]
    t_single = time.perf_counter() - start
    answers = [batched[i] for i in range(len(prompts))]
    tokens_b, tokens_s = sum(g.n_tokens for g in answers), sum(g.n_tokens for g in single)
    gflop_per_token = 2 * sum(p.numel() for p in backend.model.parameters()) / 1e9
    gflops = matmul_gflops()
    tok_s = tokens_b / t_batched
    processed_s = (tokens_b + sum(lengths)) / t_batched
    return {"prompts": len(prompts), "max_new_tokens": settings.max_new_tokens, "batch_size": settings.batch_size,
            "prompt_tokens": sum(lengths), "tokens_batched": tokens_b, "tokens_single": tokens_s,
            "seconds_batched": t_batched, "seconds_single": t_single,
            "tokens_per_s_batched": tok_s, "tokens_per_s_single": tokens_s / t_single,
            "ratio": tok_s / (tokens_s / t_single),
            "same_answers": [g.text for g in answers] == [g.text for g in single],
            "matmul_gflops": gflops, "model_gflop_per_token": gflop_per_token,
            "roofline_share": processed_s * gflop_per_token / gflops,
            "roofline_share_answer_tokens": tok_s * gflop_per_token / gflops}


def bench_scoring(run: GateRun, data: Path, n_pairs: int, max_tokens: int | None = None) -> dict[str, Any]:
    """Reward scoring as the gate batches it (rows and token budget) against one sequence at a time, on the
    first n_pairs of a real preference file's valid split (chosen and rejected, adapter on), fp32.

    Rows are tokenized once for both; the seconds are model time only. The one-by-one loop has no
    padding at all, so it is the baseline a batching scheme must beat."""
    backend = run.model.backend
    pairs = [p for p in load_pairs(str(data)).pairs if p.split == "valid"][:n_pairs]
    rows = backend.scored_rows([p.messages for p in pairs for _ in (0, 1)],
                               [t for p in pairs for t in (p.chosen, p.rejected)], run.cfg.max_length)
    budget = run.cfg.resolved_batch_tokens if max_tokens is None else max_tokens
    lengths = [len(p) + len(c) for p, c in rows]
    start = time.perf_counter()
    batched: dict[int, float] = {}
    for batch in batches(len(rows), run.cfg.batch_size, lengths, budget):
        batched.update(zip(batch, backend.row_logprobs([rows[i] for i in batch], adapter=True,
                                                       max_length=run.cfg.max_length)))
    t_batched = time.perf_counter() - start
    start = time.perf_counter()
    single = [backend.row_logprobs([r], adapter=True, max_length=run.cfg.max_length)[0] for r in rows]
    t_single = time.perf_counter() - start
    gflop_per_token = 2 * sum(p.numel() for p in backend.model.parameters()) / 1e9
    gflops = matmul_gflops()
    tokens = sum(lengths)
    worst = max(abs(batched[i] - v) / max(1.0, abs(v)) for i, v in enumerate(single))
    return {"data": str(data), "pairs": len(pairs), "sequences": len(rows), "tokens": tokens,
            "prompt_share": sum(len(p) for p, _ in rows) / tokens, "max_tokens": budget,
            "batch_size": run.cfg.batch_size, "seconds_batched": t_batched, "seconds_single": t_single,
            "tokens_per_s_batched": tokens / t_batched, "tokens_per_s_single": tokens / t_single,
            "ratio": t_single / t_batched, "max_relative_difference": worst, "matmul_gflops": gflops,
            "roofline_share": tokens / t_batched * gflop_per_token / gflops,
            "roofline_share_single": tokens / t_single * gflop_per_token / gflops}


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


def gate_claims(run: GateRun) -> dict[str, Any]:
    """Every claim the gate makes on this machine: model-bound ones first, quantization last."""
    claims = run.all_claims(quantization=True)
    return {c.id: [c.passed, c.value] for c in claims}


def demo_run(cfg: EvalConfig, cache: Cache) -> GateRun:
    """A GateRun on the demo (what the options leave out filled in, as the pytest plugin does)."""
    return GateRun(with_demo_defaults(cfg), cache=cache, local_bases=local_bases(cfg.cache_dir))


def timed_gate(cfg: EvalConfig, cache_dir: Path) -> dict[str, Any]:
    run = demo_run(cfg, Cache(cache_dir))
    start = time.perf_counter()
    claims = gate_claims(run)
    seconds = time.perf_counter() - start
    run.free()
    return {"seconds": seconds, "computed": dict(run.computed), "timings": dict(run.timings), "claims": claims}


def bench_gate(cache_dir: Path, max_samples: int, new_adapter: Path) -> dict[str, Any]:
    """Cold, warm and new-adapter gate runs on the demo, side by side."""
    with tempfile.TemporaryDirectory(prefix="dpo-eval-bench-") as tmp:
        fresh = Path(tmp) / "cache"
        base = demo_base_dir(cache_dir)
        (fresh / base.parent.name).mkdir(parents=True)
        (fresh / base.parent.name / base.name).symlink_to(base, target_is_directory=True)
        cfg = EvalConfig(cache_dir=fresh, max_samples=max_samples)
        cold = timed_gate(cfg, fresh)
        warm = timed_gate(cfg, fresh)
        new = timed_gate(dataclasses.replace(cfg, adapter=new_adapter), fresh)
        peak_gate = _child_peak("gate", fresh, max_samples)
        peak_model = _child_peak("model", fresh, max_samples)
    return {"max_samples": max_samples, "cold": cold, "warm": warm, "new_adapter": new,
            "same_verdicts_warm": cold["claims"] == warm["claims"], "peak_gate_mb": peak_gate,
            "peak_one_model_mb": peak_model}


def _child_peak(what: str, cache_dir: Path, max_samples: int) -> float:
    """Peak RSS (MiB) of a child that runs the whole gate, or only loads the model and runs one forward."""
    out = subprocess.run([sys.executable, "-m", "dpo_eval_core.bench", "--peak-of", what, "--eval-cache-dir",
                          str(cache_dir), "--max-samples", str(max_samples)], capture_output=True, text=True,
                         check=True)
    return float(out.stdout.strip().splitlines()[-1])


def peak_of(what: str, cache_dir: Path, max_samples: int) -> float:
    cfg = EvalConfig(cache_dir=cache_dir, max_samples=max_samples)
    run = demo_run(cfg, Cache(cache_dir, enabled=what == "gate"))
    if what == "gate":
        gate_claims(run)
    else:
        import torch

        ids, mask = run.probe_inputs
        with torch.inference_mode():
            run.model.backend.model(input_ids=ids, attention_mask=mask)
    return rss_mb()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench.json"))
    parser.add_argument("--prompts", type=int, default=64, help="prompts in the generation rows")
    parser.add_argument("--texts", type=int, default=500)
    parser.add_argument("--n-process", type=int, default=2)
    parser.add_argument("--eval-cache-dir", type=Path, default=default_cache_dir())
    parser.add_argument("--max-samples", type=int, default=32, help="pairs per split in the gate rows")
    parser.add_argument("--real-data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" /
                        "ultrafeedback_pairs.jsonl", help="preference file of the real-data scoring row")
    parser.add_argument("--real-pairs", type=int, default=24, help="valid pairs in the real-data scoring row")
    parser.add_argument("--peak-of", choices=["gate", "model"], help=argparse.SUPPRESS)
    ns = parser.parse_args(argv)
    if ns.peak_of:
        print(peak_of(ns.peak_of, ns.eval_cache_dir, ns.max_samples))
        return {}

    with tempfile.TemporaryDirectory(prefix="dpo-eval-noise-") as tmp:
        gate = bench_gate(ns.eval_cache_dir, ns.max_samples, noise_adapter(DEMO_ADAPTER_DIR, Path(tmp) / "noise"))
    run = demo_run(EvalConfig(cache_dir=ns.eval_cache_dir), Cache(ns.eval_cache_dir, enabled=False))
    gen = bench_generation(run, ns.prompts, run.cfg.generation)
    scoring = bench_scoring(run, ns.real_data, ns.real_pairs) if ns.real_data.is_file() else None
    weights_mb = sum(p.numel() * p.element_size() for p in run.model.backend.model.parameters()) / 2**20
    pool = [t for p in run.pairs.pairs for t in (p.chosen, p.rejected)]
    texts = (pool * (ns.texts // max(1, len(pool)) + 1))[:ns.texts]
    feats = bench_features(texts, FeatureSettings(n_process=ns.n_process))
    rows = [
        Row("generation: batched / one-by-one", gen["ratio"],
            f"{gen['tokens_per_s_batched']:.0f} vs {gen['tokens_per_s_single']:.0f} tok/s, "
            f"{gen['prompts']} prompts, same answers: {gen['same_answers']}"),
        Row("generation: share of matmul roofline", gen["roofline_share"],
            f"({gen['prompt_tokens']} prompt + {gen['tokens_batched']} answer tokens) x "
            f"{gen['model_gflop_per_token']:.2f} GFLOP in {gen['seconds_batched']:.1f} s vs "
            f"{gen['matmul_gflops']:.0f} GFLOP/s peak GEMM; answer tokens alone "
            f"{gen['roofline_share_answer_tokens']:.2f}; batch {gen['batch_size']}, "
            f"max {gen['max_new_tokens']} new tokens"),
        *([Row("scoring (real data): gate / one-by-one", scoring["ratio"],
               f"{scoring['tokens_per_s_batched']:.0f} vs {scoring['tokens_per_s_single']:.0f} real tok/s, "
               f"{scoring['sequences']} sequences of {Path(scoring['data']).name} ({scoring['tokens']} tokens, prompts "
               f"{scoring['prompt_share']:.0%}), budget {scoring['max_tokens']} tokens; matmul peak share "
               f"{scoring['roofline_share']:.2f} vs {scoring['roofline_share_single']:.2f}; max relative "
               f"difference {scoring['max_relative_difference']:.1e}")] if scoring else []),
        Row("features: pipeline / per text", feats["ratio"],
            f"{feats['texts_per_s_pipeline']:.1f} vs {feats['texts_per_s_naive']:.1f} texts/s, "
            f"{feats['texts']} texts, same values: {feats['same_values']}"),
        Row("gate: warm / cold", gate["warm"]["seconds"] / gate["cold"]["seconds"],
            f"{gate['warm']['seconds']:.1f} s vs {gate['cold']['seconds']:.1f} s, {gate['max_samples']} pairs per "
            f"split; warm recomputed {_counts(gate['warm']['computed'])}; same verdicts: {gate['same_verdicts_warm']}"),
        Row("gate: new adapter / cold", gate["new_adapter"]["seconds"] / gate["cold"]["seconds"],
            f"{gate['new_adapter']['seconds']:.1f} s; recomputed {_counts(gate['new_adapter']['computed'])} "
            f"(cold: {_counts(gate['cold']['computed'])}); seconds by phase {_phases(gate['new_adapter'])} "
            f"(cold: {_phases(gate['cold'])})"),
        Row("memory: gate peak RSS / one loaded model", gate["peak_gate_mb"] / gate["peak_one_model_mb"],
            f"{gate['peak_gate_mb']:.0f} MiB vs {gate['peak_one_model_mb']:.0f} MiB (model loaded, one forward; "
            f"weights {weights_mb:.0f} MiB)"),
    ]
    width = max(len(r.name) for r in rows)
    print(f"{'measure':<{width}}  {'ratio':>7}  detail")
    for r in rows:
        print(f"{r.name:<{width}}  {r.ratio:>7.2f}  {r.detail}")
    result = {"rows": [asdict(r) for r in rows], "generation": gen, "scoring": scoring, "features": feats, "gate": gate,
              "weights_mb": weights_mb}
    ns.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {ns.out}")
    return result


def _phases(run: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.1f}" for k, v in sorted(run["timings"].items()))


def _counts(computed: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(computed.items())) or "nothing"


if __name__ == "__main__":
    main()
