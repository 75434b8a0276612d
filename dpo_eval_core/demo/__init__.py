"""The bundled demo: base model, preference pairs and a DPO-trained LoRA adapter."""

from __future__ import annotations

import hashlib
from pathlib import Path

from .base import DEMO_BASE_ID, demo_base_dir
from .pairs import demo_pairs, write_demo_pairs

ASSETS = Path(__file__).parent / "assets"
DEMO_ADAPTER_DIR = ASSETS / "adapter"
DEMO_SWAPPED_DIR = ASSETS / "controls" / "swapped"
"""A control: the demo recipe trained on the demo pairs with chosen and rejected exchanged."""


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


__all__ = ["DEMO_ADAPTER_DIR", "DEMO_SWAPPED_DIR", "DEMO_BASE_ID", "demo_base_dir", "demo_data_path", "demo_pairs", "demo_pairs_sha256"]
