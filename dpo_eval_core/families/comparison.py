"""This adapter is not worse than another of the same base (--compare: the released one, or a rival), item by
item on the same pairs and questions.

The other adapter is a GateRun of its own on the same pairs, questions and cache, whose model is this run's
loaded model with the second adapter beside the first (PEFT multi-adapter): every answer, log-prob and
feature row comes from one load. Which items are compared, and how, each family says for itself (its
`compared` and `compare` hooks): this family only pairs the two runs and records what was compared.
"""

from __future__ import annotations

import dataclasses
import html
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from .. import report as H
from ..claims import Claim
from ..errors import ConfigError
from ..family import Family, Kind, Option
from ..stages import Stage

if TYPE_CHECKING:
    from ..run import GateRun

OTHER: Stage[GateRun] = Stage("compare run")
RECORDS: Stage[dict[str, Any]] = Stage("comparison records")

NOT_WORSE = Kind("not-worse", "non-inferiority: the adapter is shown not worse than the --compare adapter, within the "
                              "comparison's margin", over="COMPARISON", holds_claim=True)


@dataclass(frozen=True, slots=True)
class Settings:
    compare: Path | None = None
    """Another PEFT adapter of the same base to compare this one with, pair by pair (not-worse claims)."""

    def __post_init__(self) -> None:
        if self.compare is not None and not (Path(self.compare) / "adapter_config.json").is_file():
            raise ConfigError("--compare", str(self.compare), "a PEFT adapter directory containing "
                              "adapter_config.json", "Point --compare at the other adapter's save_pretrained() folder.")


OPTIONS = (Option("--compare", "compare", "another adapter of the same base to compare this one with, pair by pair "
                  "(the released one, or a rival candidate)", lambda t: Path(t).expanduser()),)


def other(run: GateRun) -> GateRun:
    """The --compare adapter as a run of its own on the same pairs and cache, borrowing this run's model;
    refused (ConfigError) unless it was made for the same base weights."""
    def make() -> GateRun:
        path = run.settings(FAMILY).compare
        if run.cfg.serve_url is not None:
            raise ConfigError("--compare", str(path), "no value with --serve-url",
                              "The other adapter has no served name to ask: compare the two with local generation "
                              "(leave out --serve-url), or gate each against the server on its own.")
        cfg = dataclasses.replace(run.cfg, adapter=path).without(FAMILY.name, "regression")
        guest = type(run)(cfg, cache=run.cache, local_bases=run.local_bases, host=run)  # a GateRun sharing its model
        if guest.base_fingerprint != run.base_fingerprint:
            raise ConfigError("--compare", str(path), f"an adapter of this run's base ({run.spec.base})",
                              f"It was made for {guest.spec.base_declared}; compare adapters of the same base.")
        return guest
    return run.stages.once(OTHER, make)


def items(run: GateRun) -> dict[str, Family]:
    """Every item `not-worse[...]` compares, with the family that compares it."""
    return {item: f for f in run.families if f.compare and f.compared and f.absent(run.cfg) is None
            for item in f.compared(run)}


def claims(run: GateRun, item: str | None) -> list[Claim]:
    owner = items(run).get(item or "")
    if owner is None or owner.compare is None:
        raise ConfigError("claim id", NOT_WORSE.id(item or "?"), "one of " + ", ".join(NOT_WORSE.id(i) for i in items(run)))
    claim, record = owner.compare(run, other(run), item or "", NOT_WORSE.id(item))
    records = run.stages.once(RECORDS, dict)
    for key, value in record.items():
        records[key] = {**records.get(key, {}), **value} if isinstance(value, dict) else value
    return [claim]


def section(run: GateRun) -> dict[str, Any]:
    if OTHER not in run.stages:
        return {}
    guest = run.stages.computed(OTHER)
    out: dict[str, Any] = {"other": str(guest.cfg.adapter), "items": {}, "features": (),
                           **(run.stages.computed(RECORDS) or {})}
    if "adapter_fingerprint" in guest.__dict__:
        out["other_sha256"] = guest.adapter_fingerprint
    return {"comparison": out}


def report(results: Mapping[str, Any]) -> str:
    """This adapter beside the --compare adapter: each paired comparison and the shifted features."""
    cmp = results.get("comparison")
    if not cmp:
        return ""
    alpha = results.get("config", {}).get("gate", {}).get("alpha", 0.05)
    verdicts = {c["id"]: c for c in results.get("claims", []) if c["id"].startswith(NOT_WORSE.name + "[")}
    head = ("comparison", "kind", "n", "this adapter", "other", "this - other", "better / worse", "verdict")
    rows = []
    for what, c in sorted(cmp["items"].items()):
        claim = verdicts.get(NOT_WORSE.id(what), {})
        rows.append((what, c["kind"], c["n"], f"{H.num(c['candidate']):.4g}", f"{H.num(c['other']):.4g}",
                     f"{H.num(c['candidate']) - H.num(c['other']):+.4g} {claim.get('uncertainty', '')}",
                     f"{c['better']} / {c['worse']}", claim.get("outcome", "-")))
    moved = sorted((f for f in cmp["features"] if H.num(f["p_adj"]) < alpha), key=lambda f: H.num(f["p_adj"]))
    parts = [f"<h2>Compared with {html.escape(cmp['other'])}</h2><p>Paired on the same valid pairs and questions; "
             f"differences are this adapter minus the other.</p><table class='dpo-eval-comparison'>",
             H.cells(head, "th"), *(H.cells(r) for r in rows), "</table>"]
    if moved:
        parts += [f"<h3>Data-signal features the two adapters' answers differ in ({len(moved)} of "
                  f"{len(cmp['features'])})</h3><table class='dpo-eval-comparison-features'>",
                  H.cells(("feature", "shift / S_j", "adjusted p", "the data's way"), "th"),
                  *(H.cells((f["feature"], f"{H.num(f['shift']):+.3f}", f"{H.num(f['p_adj']):.3g}",
                             "yes" if (H.num(f["shift"]) > 0) == (f["data_sign"] > 0) else "no")) for f in moved),
                  "</table>"]
    return "".join(parts)


FAMILY = Family(
    "comparison", (NOT_WORSE,), claims, settings=Settings, options=OPTIONS, per_item=True, rank=80, reference=True,
    arguments=lambda run, kind: tuple(items(run)),
    absent=lambda cfg: None if cfg.settings_of(FAMILY).compare else (
        "no --compare given: pass another adapter of the same base (the released one, or a rival candidate) to "
        "compare this one with it pair by pair"),
    check=other, section=section, report=report,
    doc="This adapter is not worse than another of the same base, pair by pair on the same items.")
