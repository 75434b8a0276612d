"""Benchmark of the gate on the demo, measured side by side in one run.

    python -m dpo_eval_core.bench [--out bench.json] [--prompts 64] [--texts 500] [--max-samples 32]

Prints one table of ratios (batched vs one-by-one generation, feature pipeline vs
TextDescriptives text by text, warm vs cold gate, new adapter vs cold gate, peak memory of
the gate vs one loaded model) with throughput and the share of this machine's measured
matmul throughput that generation and scoring reach, and writes it as JSON. Generation runs
as the gate runs it: every prompt the demo gate answers, its settings (batch size, max new
tokens, prefill budget), decode batches refilled from the queue. Scoring runs as the gate
scores real data: one prompt pass per pair, batches within the token budget.

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
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .backend import GenerationSettings
from .cache import Cache
from .config import EvalConfig, default_cache_dir
from .data import load_pairs
from .demo import DEMO_ADAPTER_DIR, DEMO_DATA, DEMO_MCQ, demo_base_dir, local_bases, with_demo_defaults
from .demo.controls import noise_adapter
from .families.checkpoint import probe_inputs
from .features import FeatureSettings, build_pipeline, doc_features, extract
from .report import precision_lines
from .results import jsonable, sections
from .run import GateRun


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


DTYPES = ("float32", "bfloat16")


def matmul_gflops(dtype: str = "float32", sizes: tuple[int, ...] = (1024, 2048), seconds: float = 1.0) -> float:
    """Peak GEMM throughput of this machine now in `dtype` (best of square sizes): the roofline of work
    that runs in that dtype."""
    import torch

    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, dtype=getattr(torch, dtype)), torch.randn(n, n, dtype=getattr(torch, dtype))
        torch.mm(a, b)
        start, repeats = time.perf_counter(), 0
        while (elapsed := time.perf_counter() - start) < seconds:
            torch.mm(a, b)
            repeats += 1
        best = max(best, 2 * n**3 * repeats / elapsed / 1e9)
    return best


def bench_generation(run: GateRun, n_single: int, settings: GenerationSettings, peaks: dict[str, float]
                     ) -> dict[str, Any]:
    """The gate's own generation (every prompt it answers, refilled decode batches) against a loop that
    answers one prompt at a time, on the first n_single of those prompts.

    The roofline share counts the tokens the model must process, prompt and answer (2 FLOPs per
    parameter each), against peak GEMM throughput; the share of answer tokens alone is reported
    beside it, since prefill is work a user never sees as output.
    """
    backend = run.model.backend
    prompts = [run.pairs.pairs[i].messages for i in run.pairs.answered(run.cfg.train_answers, run.cfg.seed)]
    lengths = [len(backend.prompt_ids(m)) for m in prompts]
    start = time.perf_counter()
    answers = backend.generate(prompts, adapter=True, settings=settings)  # as the gate answers them
    t_batched = time.perf_counter() - start
    start = time.perf_counter()
    single = [backend.generate([p], adapter=True, settings=settings)[0] for p in prompts[:n_single]]
    t_single = time.perf_counter() - start
    tokens_b, tokens_s = sum(g.n_tokens for g in answers), sum(g.n_tokens for g in single)
    gflop_per_token = 2 * sum(p.numel() for p in backend.model.parameters()) / 1e9
    gflops = peaks[run.cfg.resolved_dtype]
    tok_s = tokens_b / t_batched
    processed_s = (tokens_b + sum(lengths)) / t_batched
    return {"prompts": len(prompts), "prompts_single": len(single), "max_new_tokens": settings.max_new_tokens,
            "batch_size": settings.batch_size, "batch_tokens": settings.batch_tokens, "prompt_tokens": sum(lengths),
            "tokens_batched": tokens_b, "tokens_single": tokens_s,
            "seconds_batched": t_batched, "seconds_single": t_single,
            "tokens_per_s_batched": tok_s, "tokens_per_s_single": tokens_s / t_single,
            "ratio": tok_s / (tokens_s / t_single),
            "same_answers": answers[:len(single)] == single, "dtype": run.cfg.resolved_dtype,
            "matmul_gflops": gflops, "model_gflop_per_token": gflop_per_token,
            "roofline_share": processed_s * gflop_per_token / gflops,
            "roofline_share_answer_tokens": tok_s * gflop_per_token / gflops}


def bench_scoring(run: GateRun, data: Path, n_pairs: int, peaks: dict[str, float], max_tokens: int | None = None
                  ) -> dict[str, Any]:
    """Reward scoring as the gate does it (one prompt pass per pair, batches by rows and token budget)
    against one full sequence at a time, on the first n_pairs of a real preference file's valid split
    (chosen and rejected, adapter on), in the run's dtype.

    Rows are tokenized once for both; the seconds are model time only. The one-by-one loop has no
    padding at all, so it is the baseline a batching scheme must beat. Throughput counts the tokens
    of the scored sequences (the same for both); the peak share counts the tokens each one feeds."""
    backend = run.model.backend
    pairs = [p for p in load_pairs(str(data)).pairs if p.split == "valid"][:n_pairs]
    rows = backend.scored_rows([p.messages for p in pairs for _ in (0, 1)],
                               [t for p in pairs for t in (p.chosen, p.rejected)], run.cfg.max_length)
    budget = run.cfg.resolved_batch_tokens if max_tokens is None else max_tokens
    groups = [rows[i:i + 2] for i in range(0, len(rows), 2)]
    start = time.perf_counter()
    grouped = dict(backend.group_logprobs(groups, adapter=True, batch_size=run.cfg.batch_size, max_tokens=budget,
                                          max_length=run.cfg.max_length))
    t_batched = time.perf_counter() - start
    start = time.perf_counter()
    single = [backend.row_logprobs([r], adapter=True, max_length=run.cfg.max_length)[0] for r in rows]
    t_single = time.perf_counter() - start
    batched = [v for g in range(len(groups)) for v in grouped[g]]
    gflop_per_token = 2 * sum(p.numel() for p in backend.model.parameters()) / 1e9
    gflops = peaks[run.cfg.resolved_dtype]
    tokens = sum(len(p) + len(c) for p, c in rows)
    fed = tokens - sum(max(0, len(os.path.commonprefix([p for p, _ in g])) - 1) for g in groups)
    worst = max(abs(a - b) / max(1.0, abs(b)) for a, b in zip(batched, single))
    return {"data": str(data), "pairs": len(pairs), "sequences": len(rows), "tokens": tokens, "tokens_fed": fed,
            "prompt_share": sum(len(p) for p, _ in rows) / tokens, "max_tokens": budget,
            "batch_size": run.cfg.batch_size, "seconds_batched": t_batched, "seconds_single": t_single,
            "tokens_per_s_batched": tokens / t_batched, "tokens_per_s_single": tokens / t_single,
            "ratio": t_single / t_batched, "max_relative_difference": worst, "matmul_gflops": gflops,
            "dtype": run.cfg.resolved_dtype, "logps": batched,
            "roofline_share": fed / t_batched * gflop_per_token / gflops,
            "roofline_share_single": tokens / t_single * gflop_per_token / gflops}


def bench_dtypes(cache_dir: Path, data: Path | None, n_prompts: int, n_pairs: int, peaks: dict[str, float]
                 ) -> dict[str, Any]:
    """The same model work in float32 and bfloat16, one loaded model at a time: the demo gate's own
    prompts answered as the gate answers them, the first n_prompts valid prompts of a real preference
    file, and reward scoring of its first n_pairs valid pairs. Answers are compared text for text and
    log-probs value for value; each throughput is a share of its own dtype's matmul peak."""
    real = [p for p in load_pairs(str(data)).pairs if p.split == "valid"] if data else []
    out: dict[str, Any] = {}
    for dtype in DTYPES:
        run = demo_run(EvalConfig(cache_dir=cache_dir, compute_dtype=dtype), Cache(cache_dir, enabled=False))
        backend, settings = run.model.backend, run.cfg.generation
        gflop_per_token = 2 * sum(p.numel() for p in backend.model.parameters()) / 1e9
        sets = {"demo": [run.pairs.pairs[i].messages for i in run.pairs.answered(run.cfg.train_answers, run.cfg.seed)],
                "real": [p.messages for p in real[:n_prompts]]}
        row: dict[str, Any] = {}
        for name, prompts in sets.items():
            if not prompts:
                continue
            start = time.perf_counter()
            answers = backend.generate(prompts, adapter=True, settings=settings)
            seconds = time.perf_counter() - start
            fed = sum(g.n_tokens for g in answers) + sum(len(backend.prompt_ids(m)) for m in prompts)
            row[f"generate_{name}"] = {"prompts": len(prompts), "seconds": seconds, "answers": [g.text for g in answers],
                                       "new_tokens_per_s": sum(g.n_tokens for g in answers) / seconds,
                                       "peak_share": fed / seconds * gflop_per_token / peaks[dtype]}
        if real:
            row["scoring"] = bench_scoring(run, data, n_pairs, peaks)
        out[dtype] = row
        run.free()
    f32, b16 = out["float32"], out["bfloat16"]
    summary: dict[str, Any] = {}
    for key in ("generate_demo", "generate_real"):
        if key in f32:
            same = [a == b for a, b in zip(f32[key]["answers"], b16[key]["answers"])]
            summary[key] = {"ratio": f32[key]["seconds"] / b16[key]["seconds"], "identical_share": sum(same) / len(same),
                            "prompts": len(same), "seconds": {d: out[d][key]["seconds"] for d in DTYPES},
                            "peak_share": {d: out[d][key]["peak_share"] for d in DTYPES}}
    if "scoring" in f32:
        a, b = f32["scoring"].pop("logps"), b16["scoring"].pop("logps")
        summary["scoring"] = {"ratio": f32["scoring"]["seconds_batched"] / b16["scoring"]["seconds_batched"],
                              "max_abs_logp_difference": max(abs(x - y) for x, y in zip(a, b)),
                              "max_relative_logp_difference": max(abs(x - y) / max(1.0, abs(x)) for x, y in zip(a, b)),
                              "sequences": len(a),
                              "tokens_per_s": {d: out[d]["scoring"]["tokens_per_s_batched"] for d in DTYPES},
                              "peak_share": {d: out[d]["scoring"]["roofline_share"] for d in DTYPES}}
    return {"runs": out, "summary": summary}


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
    return {c.id: [c.outcome, c.value, run.cfg.gate.gates(c.id)] for c in claims}


def demo_run(cfg: EvalConfig, cache: Cache) -> GateRun:
    """A GateRun on the demo (what the options leave out filled in, as the pytest plugin does)."""
    return GateRun(with_demo_defaults(cfg), cache=cache, local_bases=local_bases(cfg.cache_dir))


def timed_gate(cfg: EvalConfig, cache_dir: Path) -> dict[str, Any]:
    run = demo_run(cfg, Cache(cache_dir))
    start = time.perf_counter()
    claims = gate_claims(run)
    seconds = time.perf_counter() - start
    run.free()
    return {"seconds": seconds, "computed": dict(run.computed), "timings": dict(run.timings), "claims": claims,
            "dtype": run.cfg.dtype_choice.identity, "float32_verdicts": precision_lines(jsonable(sections(run)))}


def fresh_cache(root: Path, cache_dir: Path) -> Path:
    """An empty cache under `root` holding only the converted demo base (converting a GGUF is not gating)."""
    fresh = root / "cache"
    base = demo_base_dir(cache_dir)
    (fresh / base.parent.name).mkdir(parents=True)
    (fresh / base.parent.name / base.name).symlink_to(base, target_is_directory=True)
    return fresh


def bench_gate(cache_dir: Path, max_samples: int, new_adapter: Path) -> dict[str, Any]:
    """Cold, warm and new-adapter gate runs on the demo in the auto dtype, and a cold one in the other of
    float32 and bfloat16, side by side."""
    with tempfile.TemporaryDirectory(prefix="dpo-eval-bench-") as tmp:
        fresh = fresh_cache(Path(tmp) / "auto", cache_dir)
        cfg = EvalConfig(cache_dir=fresh, max_samples=max_samples, data=DEMO_DATA)
        cold = timed_gate(cfg, fresh)
        warm = timed_gate(cfg, fresh)
        # the same claims as cold: the demo's ARC sample is a default only for the demo adapter itself
        new = timed_gate(dataclasses.replace(cfg, adapter=new_adapter, mcq=(str(DEMO_MCQ),)), fresh)
        peak_gate = _child_peak("gate", fresh, max_samples)
        peak_model = _child_peak("model", fresh, max_samples)
        other_dtype = "bfloat16" if cfg.resolved_dtype == "float32" else "float32"
        fresh_other = fresh_cache(Path(tmp) / other_dtype, cache_dir)
        other = timed_gate(dataclasses.replace(cfg, cache_dir=fresh_other, compute_dtype=other_dtype), fresh_other)
    floor = adapter_floor(cold)
    moved = {k: {other_dtype: other["claims"].get(k, [None])[:2], cfg.resolved_dtype: cold["claims"][k][:2],
                 "gating": cold["claims"][k][2]}
             for k in cold["claims"] if other["claims"].get(k, [None])[0] != cold["claims"][k][0]}
    return {"max_samples": max_samples, "dtype": cfg.resolved_dtype, "dtype_reason": cfg.dtype_choice.reason,
            "cold": cold, "warm": warm, "new_adapter": new, "other_dtype": other_dtype, "cold_other_dtype": other,
            "verdicts_moved": moved,
            "floor_phases": floor, "floor_share": sum(floor.values()) / cold["seconds"],
            "same_verdicts_warm": cold["claims"] == warm["claims"], "peak_gate_mb": peak_gate,
            "peak_one_model_mb": peak_model}


def adapter_floor(cold: dict[str, Any]) -> dict[str, float]:
    """Seconds of a cold gate that a new adapter must spend again: loading the model, the tuned answers
    and their text features, the policy half of the reward log-probs (the reference half feeds the same
    tokens to the same weights, adapter off), the tuned half of the multiple-choice questions and the
    quantization probes. The rest (base answers, data features, reference log-probs, the base's
    multiple-choice scores) is cached under the base alone."""
    t, n = cold["timings"], cold["computed"]
    tuned = n.get("generations_tuned", 0) / max(1, n.get("generations_tuned", 0) + n.get("generations_base", 0))
    return {"load": t.get("load", 0.0), "generate tuned": t.get("generate tuned", 0.0),
            "features (answers) x tuned share": t.get("features (answers)", 0.0) * tuned,
            "rewards / 2": t.get("rewards", 0.0) / 2, "multiple choice / 2": t.get("multiple choice", 0.0) / 2,
            "quantization": t.get("quantization", 0.0)}


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

        ids, mask = probe_inputs(run)
        with torch.inference_mode():
            run.model.backend.model(input_ids=ids, attention_mask=mask)
    return rss_mb()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench.json"))
    parser.add_argument("--prompts", type=int, default=24, help="prompts answered one at a time in the generation row")
    parser.add_argument("--texts", type=int, default=500)
    parser.add_argument("--n-process", type=int, default=2)
    parser.add_argument("--eval-cache-dir", type=Path, default=default_cache_dir())
    parser.add_argument("--max-samples", type=int, default=32, help="pairs per split in the gate rows")
    parser.add_argument("--real-data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" /
                        "ultrafeedback_pairs.jsonl", help="preference file of the real-data scoring row")
    parser.add_argument("--real-pairs", type=int, default=24, help="valid pairs in the real-data scoring rows")
    parser.add_argument("--real-prompts", type=int, default=64,
                        help="valid prompts of --real-data answered in each dtype in the dtype rows")
    parser.add_argument("--peak-of", choices=["gate", "model"], help=argparse.SUPPRESS)
    ns = parser.parse_args(argv)
    if ns.peak_of:
        print(peak_of(ns.peak_of, ns.eval_cache_dir, ns.max_samples))
        return {}

    peaks = {dtype: matmul_gflops(dtype) for dtype in DTYPES}
    with tempfile.TemporaryDirectory(prefix="dpo-eval-noise-") as tmp:
        gate = bench_gate(ns.eval_cache_dir, ns.max_samples, noise_adapter(DEMO_ADAPTER_DIR, Path(tmp) / "noise"))
    real = ns.real_data if ns.real_data.is_file() else None
    dtypes = bench_dtypes(ns.eval_cache_dir, real, ns.real_prompts, ns.real_pairs, peaks)
    run = demo_run(EvalConfig(cache_dir=ns.eval_cache_dir), Cache(ns.eval_cache_dir, enabled=False))
    gen = bench_generation(run, ns.prompts, run.cfg.generation, peaks)
    scoring = dtypes["runs"][run.cfg.resolved_dtype].get("scoring")
    weights_mb = sum(p.numel() * p.element_size() for p in run.model.backend.model.parameters()) / 2**20
    pool = [t for p in run.pairs.pairs for t in (p.chosen, p.rejected)]
    texts = (pool * (ns.texts // max(1, len(pool)) + 1))[:ns.texts]
    feats = bench_features(texts, FeatureSettings(n_process=ns.n_process))
    rows = [
        Row("generation: gate / one-by-one", gen["ratio"],
            f"{gen['tokens_per_s_batched']:.0f} vs {gen['tokens_per_s_single']:.0f} tok/s: the gate's "
            f"{gen['prompts']} prompts against one at a time on the first {gen['prompts_single']}; same answers: "
            f"{gen['same_answers']}"),
        Row("generation: share of matmul roofline", gen["roofline_share"],
            f"({gen['prompt_tokens']} prompt + {gen['tokens_batched']} answer tokens) x "
            f"{gen['model_gflop_per_token']:.2f} GFLOP in {gen['seconds_batched']:.1f} s vs "
            f"{gen['matmul_gflops']:.0f} GFLOP/s {gen['dtype']} peak GEMM; answer tokens alone "
            f"{gen['roofline_share_answer_tokens']:.2f}; {gen['batch_size']} rows refilled, prefill budget "
            f"{gen['batch_tokens']} tokens, max {gen['max_new_tokens']} new tokens"),
        *([Row("scoring (real data): gate / one-by-one", scoring["ratio"],
               f"{scoring['tokens_per_s_batched']:.0f} vs {scoring['tokens_per_s_single']:.0f} scored tok/s, "
               f"{scoring['sequences']} sequences of {Path(scoring['data']).name} ({scoring['tokens']} tokens, prompts "
               f"{scoring['prompt_share']:.0%}; one prompt pass per pair feeds {scoring['tokens_fed']}), budget "
               f"{scoring['max_tokens']} tokens, {scoring['dtype']}; matmul peak share {scoring['roofline_share']:.2f} vs "
               f"{scoring['roofline_share_single']:.2f}; max relative difference "
               f"{scoring['max_relative_difference']:.1e}")] if scoring else []),
        Row("matmul peak: bfloat16 / float32", peaks["bfloat16"] / peaks["float32"],
            f"{peaks['bfloat16']:.0f} vs {peaks['float32']:.0f} GFLOP/s (square GEMMs, best of 1024 and 2048); "
            f"auto runs {gate['dtype']}: {gate['dtype_reason']}"),
        *dtype_rows(dtypes["summary"], gate),
        Row("features: pipeline / per text", feats["ratio"],
            f"{feats['texts_per_s_pipeline']:.1f} vs {feats['texts_per_s_naive']:.1f} texts/s, "
            f"{feats['texts']} texts, same values: {feats['same_values']}"),
        Row("gate: warm / cold", gate["warm"]["seconds"] / gate["cold"]["seconds"],
            f"{gate['warm']['seconds']:.1f} s vs {gate['cold']['seconds']:.1f} s, {gate['max_samples']} pairs per "
            f"split; warm recomputed {_counts(gate['warm']['computed'])}; same verdicts: {gate['same_verdicts_warm']}"),
        Row("gate: new adapter / cold", gate["new_adapter"]["seconds"] / gate["cold"]["seconds"],
            f"{gate['new_adapter']['seconds']:.1f} s; floor {gate['floor_share']:.2f} (the cold run's adapter-"
            f"dependent seconds: {_phases({'timings': gate['floor_phases']})}); recomputed "
            f"{_counts(gate['new_adapter']['computed'])} (cold: {_counts(gate['cold']['computed'])}); seconds by "
            f"phase {_phases(gate['new_adapter'])} (cold: {_phases(gate['cold'])})"),
        Row("memory: gate peak RSS / one loaded model", gate["peak_gate_mb"] / gate["peak_one_model_mb"],
            f"{gate['peak_gate_mb']:.0f} MiB vs {gate['peak_one_model_mb']:.0f} MiB (model loaded, one forward; "
            f"weights {weights_mb:.0f} MiB)"),
    ]
    width = max(len(r.name) for r in rows)
    print(f"{'measure':<{width}}  {'ratio':>7}  detail")
    for r in rows:
        print(f"{r.name:<{width}}  {r.ratio:>7.2f}  {r.detail}")
    result = {"rows": [asdict(r) for r in rows], "peaks_gflops": peaks, "generation": gen, "scoring": scoring,
              "dtypes": dtypes, "features": feats, "gate": gate, "weights_mb": weights_mb}
    ns.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {ns.out}")
    return result


def dtype_rows(summary: dict[str, Any], gate: dict[str, Any]) -> list[Row]:
    """bfloat16 against float32: the same work's speed, with what changed (answers, log-probs, verdicts)."""
    rows = []
    for key, what in (("generate_demo", "the demo gate's prompts"), ("generate_real", "real-data valid prompts")):
        if key in summary:
            g = summary[key]
            rows.append(Row(f"generation, {'demo' if key == 'generate_demo' else 'real data'}: bf16 / fp32", g["ratio"],
                            f"{g['seconds']['bfloat16']:.1f} s vs {g['seconds']['float32']:.1f} s, {g['prompts']} "
                            f"{what}; peak share {g['peak_share']['bfloat16']:.2f} (of the bf16 peak) vs "
                            f"{g['peak_share']['float32']:.2f}; answers identical to fp32: {g['identical_share']:.0%}"))
    if "scoring" in summary:
        sc = summary["scoring"]
        rows.append(Row("scoring, real data: bf16 / fp32", sc["ratio"],
                        f"{sc['tokens_per_s']['bfloat16']:.0f} vs {sc['tokens_per_s']['float32']:.0f} scored tok/s, "
                        f"{sc['sequences']} sequences; peak share {sc['peak_share']['bfloat16']:.2f} vs "
                        f"{sc['peak_share']['float32']:.2f}; largest |log p difference| "
                        f"{sc['max_abs_logp_difference']:.3f} nats ({sc['max_relative_logp_difference']:.1e} relative)"))
    runs = {gate["dtype"]: gate["cold"], gate["other_dtype"]: gate["cold_other_dtype"]}
    f32, b16 = runs["float32"], runs["bfloat16"]
    moved = gate["verdicts_moved"]
    gating = sorted(k for k, v in moved.items() if v["gating"])
    settled = "; ".join(b16.get("float32_verdicts") or []) or "no float32 verdicts"
    rows.append(Row("gate, cold: bf16 / fp32", f32["seconds"] / b16["seconds"],
                    f"{b16['seconds']:.1f} s ({b16.get('dtype', 'bfloat16')}; {settled}) vs {f32['seconds']:.1f} s; "
                    f"verdicts moved: {len(gating)} gating ({', '.join(gating) or 'none'}), "
                    f"{len(moved) - len(gating)} other of {len(f32['claims'])}; seconds by phase {_phases(b16)} "
                    f"(float32: {_phases(f32)})"))
    return rows


def _phases(run: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.1f}" for k, v in sorted(run["timings"].items()))


def _counts(computed: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(computed.items())) or "nothing"


if __name__ == "__main__":
    main()
