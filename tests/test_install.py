"""Installed as a tool: the wheel carries only this project's names, its pytest11 entry point adds the
gate to pytest without a conftest.py, and `dpo-eval` gates the demo from any directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from dpo_eval_core.config import default_cache_dir

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)], check=True,
                   capture_output=True, text=True, timeout=600)
    return next(out.glob("dpo_eval-*.whl"))


def test_the_wheel_installs_only_names_of_this_project(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"dpo_eval", "dpo_eval_core"}
    assert "dpo_eval/evals/test_rewards.py" in names and "dpo_eval/plugin.py" in names
    meta = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    entry_points = zipfile.ZipFile(wheel).read(meta).decode()
    assert "[pytest11]\ndpo_eval = dpo_eval.plugin" in entry_points and "dpo-eval = dpo_eval.cli:main" in entry_points


def test_installed_dpo_eval_gates_the_demo_from_another_directory(wheel: Path, tmp_path: Path) -> None:
    """A fresh virtual environment with the wheel (its dependencies come from this environment's
    site-packages as a plain path entry, so this checkout's editable finder is not active there)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True, text=True, timeout=300)
    elsewhere = tmp_path / "user-repo"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")} | OFFLINE
    where = subprocess.run([str(python), "-c", "import dpo_eval, dpo_eval_core, importlib.util as u; "
                            "print(dpo_eval.__file__); print(dpo_eval_core.__file__); "
                            "print(u.find_spec('fixtures'), u.find_spec('evals'))"],
                           cwd=elsewhere, env=env, check=True, capture_output=True, text=True).stdout.split("\n")
    assert all(line.startswith(str(site)) for line in where[:2]), where
    assert where[2] == "None None"
    results = tmp_path / "out" / "results.json"
    proc = subprocess.run([str(venv / "bin" / "dpo-eval"), "-k", "checkpoint", "-q", "--results", str(results),
                           "--eval-cache-dir", str(default_cache_dir()), "--looks", str(tmp_path / "looks.json")],
                          cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    claims = {c["id"]: c for c in json.loads(results.read_text())["claims"]}
    assert set(claims) == {"adapter-loads", "adapter-changes-model", "tokenizer-ready"}
    assert all(c["passed"] for c in claims.values())
    assert "3 passed" in proc.stdout
