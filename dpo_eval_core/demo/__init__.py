"""The bundled demo: base model, preference pairs and a DPO-trained LoRA adapter.

It sits above the core: the pytest plugin (and the scripts) resolve the demo defaults into an
EvalConfig with `with_demo_defaults` and hand the demo base's maker to GateRun through
`local_bases`; the core itself never imports this package.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Callable

from ..config import EvalConfig
from ..errors import ConfigError
from .base import DEMO_BASE_ID, demo_base_dir
from .pairs import demo_pairs, write_demo_pairs

ASSETS = Path(__file__).parent / "assets"
DEMO_ADAPTER_DIR = ASSETS / "adapter"
DEMO_SWAPPED_DIR = ASSETS / "controls" / "swapped"
"""A control: the demo recipe trained on the demo pairs with chosen and rejected exchanged."""
DEMO_SERIES_DIR = ASSETS / "series"
"""The demo recipe's training run: checkpoints at about a quarter, half, three quarters and the end of its one
epoch (Trainer layout, adapter weights in bfloat16), what `--adapter demo-series` gates."""
DEMO_SERIES = "demo-series"
DEMO_MCQ = ASSETS / "mcq" / "arc_easy_sample.jsonl"
"""200 ARC-Easy questions (CC BY-SA 4.0, README beside it): a set the demo base partly knows, asked in cloze
form and gated on acc_norm, so a destroyed adapter has something to forget."""
DEMO_SAFETY = ASSETS / "safety" / "xstest_sample.csv"
"""80 XSTest prompts (CC-BY-4.0, README beside it), 40 unsafe and 40 safe look-alikes: what `--safety-prompts demo`
and `--benign-prompts demo` read (the file's `label` column splits them)."""


def demo_data_path(cache_dir: Path) -> Path:
    """The demo pairs as a JSON Lines file in the cache, written on first use."""
    path = Path(cache_dir) / "demo" / "demo_pairs.jsonl"
    expected = demo_pairs_sha256()
    if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != expected:
        write_demo_pairs(path)
    return path


def demo_pairs_sha256() -> str:
    """sha256 of the demo pairs file as written; the demo adapter records the value it was trained on."""
    import json

    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in demo_pairs())
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


DEMO_DATA = "demo"
"""`--data demo`: the demo pairs, said explicitly (with your own --adapter, --data is required)."""


def require_data(cfg: EvalConfig) -> None:
    """ConfigError when your own --adapter comes without --data: the demo's pairs are for the demo adapter."""
    if cfg.adapter not in (None, DEMO_SERIES_DIR) and cfg.data is None:
        raise ConfigError("--data", None, "your preference data with --adapter: a .jsonl/.json/.csv/.parquet "
                          "file or a hub dataset id",
                          f"The gate judges your adapter on your data and never falls back to the demo's pairs. "
                          f"Example: pytest evals --adapter {cfg.adapter} --data prefs.jsonl (or --data demo to "
                          f"gate it on the demo pairs).")


def with_demo_defaults(cfg: EvalConfig) -> EvalConfig:
    """The config with the demo adapter and the demo pairs when both --adapter and --data are left out (or
    --data demo), the demo's ARC-Easy sample when the demo adapter is gated without --mcq, and its XSTest sample
    for `--safety-prompts demo` / `--benign-prompts demo`. Your own
    --adapter without --data is refused (ConfigError): a gate must never judge your adapter on someone else's
    pairs by default."""
    require_data(cfg)
    data = str(demo_data_path(cfg.cache_dir)) if cfg.data in (None, DEMO_DATA) else cfg.data
    if cfg.adapter in (None, DEMO_SERIES_DIR) and not cfg.settings_of("forgetting").sets:
        cfg = cfg.with_settings("forgetting", sets=(str(DEMO_MCQ),))
    safety = cfg.settings_of("safety")
    for name in ("harmful", "benign"):
        if getattr(safety, name) == DEMO_DATA:
            cfg = cfg.with_settings("safety", **{name: str(DEMO_SAFETY)})
    return dataclasses.replace(cfg, adapter=cfg.adapter or DEMO_ADAPTER_DIR, data=data)


def local_bases(cache_dir: Path) -> dict[str, Callable[[], Path]]:
    """The demo base's id -> its converted copy in the cache (made on first use), for GateRun(local_bases=...)."""
    return {DEMO_BASE_ID: lambda: demo_base_dir(cache_dir)}


__all__ = ["DEMO_ADAPTER_DIR", "DEMO_DATA", "DEMO_MCQ", "DEMO_SAFETY", "DEMO_SERIES", "DEMO_SERIES_DIR", "DEMO_SWAPPED_DIR", "DEMO_BASE_ID", "demo_base_dir", "demo_data_path", "demo_pairs", "demo_pairs_sha256",
           "local_bases", "require_data", "with_demo_defaults"]
