"""Quantization as an axis: one adapter gated on the base loaded without quantization, 8-bit and 4-bit, each load
on the gate model's claims (answers, rewards, forgetting) and compared pair by pair with the unquantized load,
so "serve it 4-bit" is a decision with evidence, not only "no NaN logits" (the quantization family's probes).

One model is in memory at a time: each load is gated, its stages kept, its model freed before the next loads.
A quantized load may be served when its gating claims pass and no paired comparison shows it worse than the
unquantized load (a not-worse comparison that fails); an inconclusive comparison is reported, not held against
it. Each load decides at the gate's one-sided error divided by the loads gated, as a series' checkpoints do
(training.series_gate): picking whichever load passes is a choice among them.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Sequence

from .cache import Cache
from .claims import Claim
from .config import EvalConfig
from .models import LocalBases
from .run import GateRun
from .series import Checkpoint
from .training import GATED, Gated, compared, decided_on, gated_of, series_gate

LOADS = ("none", "8bit", "4bit")


@dataclass(frozen=True, slots=True)
class Load:
    """One load of the adapter: its gating outcomes, and its paired comparisons with the unquantized load."""

    quant: str
    gated: Gated
    against_none: tuple[Claim, ...] = ()

    @property
    def servable(self) -> bool:
        return self.gated.passed and not any(c.outcome == "fail" for c in self.against_none)

    def reason(self) -> str:
        if not self.gated.passed:
            return "does not pass: " + ", ".join(f"{k} {o}" for k, o in self.gated.outcomes.items() if o != "pass")
        worse = [c.id for c in self.against_none if c.outcome == "fail"]
        if worse:
            return "passes, but is shown worse than the unquantized load: " + ", ".join(worse)
        open_ = [c.id for c in self.against_none if c.outcome == "inconclusive"]
        return "may be served" + (f" (not shown either way: {', '.join(open_)})" if open_ else "")


def gate_loads(cfg: EvalConfig, *, cache: Cache, local_bases: LocalBases | None = None,
               loads: Sequence[str] = LOADS, claims: Sequence[str] | None = None) -> tuple[Load, ...]:
    """Gate `cfg`'s adapter on each load (the unquantized one first: the others are compared with it)."""
    if not loads or loads[0] != "none":
        loads = ("none", *(q for q in loads if q != "none"))
    gate = series_gate(cfg.gate, len(loads))
    out: list[Load] = []
    reference: GateRun | None = None
    for quant in loads:
        started = time.perf_counter()
        run = GateRun(dataclasses.replace(cfg, quant=quant, gate=gate), cache=cache, local_bases=local_bases,
                      label=f"the {quant} load")
        try:
            made = [x for cid in (claims if claims is not None else decided_on(run, gate))
                    if (x := run.claim(cid)) is not None]
            run.stages.put(GATED, [x.id for x in made if gate.gates(x.id)])
        finally:
            run.free()  # one model in memory at a time; its stages stay for the comparisons
        here = Checkpoint(run.spec.adapter, None, f"load {quant}")
        against = tuple(compared(run, reference)) if reference is not None else ()
        out.append(Load(quant, gated_of(here, made, gate, time.perf_counter() - started), against))
        reference = reference or run
    return tuple(out)


def record(loads: Sequence[Load]) -> dict[str, Any]:
    """The axis for results.json: per load its outcomes, values, comparisons with the unquantized load, and reason."""
    return {"loads": [{"quant": x.quant, "outcomes": dict(x.gated.outcomes), "values": dict(x.gated.values),
                       "against_none": [{"id": c.id, "outcome": c.outcome, "value": c.value, "message": c.message}
                                        for c in x.against_none],
                       "servable": x.servable, "reason": x.reason(), "seconds": round(x.gated.seconds, 2)}
                      for x in loads]}


def lines(loads: Sequence[Load]) -> list[str]:
    """The console's account: which loads may be served, and each load's reason."""
    ok = [x.quant for x in loads if x.servable]
    head = f"quantization axis: may be served as {', '.join(ok)}" if ok else "quantization axis: no load may be served"
    return [head, *(f"  {x.quant}: {x.reason()}" for x in loads),
            *(f"    {x.quant}: {c.id} against none: {c.outcome}: {c.message}" for x in loads for c in x.against_none)]
