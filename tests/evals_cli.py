"""`pytest evals` as a user runs it: a subprocess from the repository root, offline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_evals(results: Path, *args: str, timeout: int = 3000, env: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "pytest", "evals", "-p", "no:cacheprovider", "-q", "--results",
                           str(results), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)
