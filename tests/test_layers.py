"""Layers only import downward: a lower module never imports a higher one, so each can be read alone.

The order, bottom to top (docs/layout.md): foundations (errors, cache, chat, statistics, data) ->
model identity and text features -> models, generation, rewards, quantization, the judge -> the shared
claim constructors and the family API -> the claim families (one module each) -> the registry and the
configuration -> the run (GateRun) -> the public API -> apps above the run (the demo, its scripts, the
bench) -> the pytest plugin (fixtures/) -> the claims (evals/).
A module not listed here fails the test: place it in a layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors",),
    ("locate", "stats", "hardware", "precision", "stages"),
    ("cache", "chat", "data", "decide", "agreement", "looks"),
    ("mcq", "operating"),
    ("endpoint", "plan"),
    ("backend",),
    ("identity",),
    ("features", "ledger"),
    ("models",),
    ("quantization", "generation", "rewards", "judge", "serving", "series"),
    ("forgetting", "compare", "texts", "safety"),
    ("scoring",),
    ("claims", "report"),
    ("sequential",),
    ("results",),
    ("family",),
    ("families.__init__",),
    ("families.regression",),
    ("families.checkpoint", "families.rewards", "families.data_signal", "families.forgetting", "families.judge",
     "families.safety"),
    ("families.quantization", "families.alignment", "families.comparison"),
    ("registry",),
    ("config",),
    ("run",),
    ("training",),
    ("loads", "callback"),
    ("__init__",),
    ("demo.base", "demo.pairs"),
    ("demo.__init__",),
    ("demo.controls",),
    ("demo.train", "demo.validity", "bench"),
)
RANK = {f"dpo_eval_core.{m}": i for i, layer in enumerate(LAYERS) for m in layer}
PLUGIN_RANK = len(LAYERS)


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def imports(path: Path, name: str | None = None) -> set[str]:
    """Project names imported anywhere in the file (functions included), except in `if TYPE_CHECKING:` blocks,
    as dotted paths ('dpo_eval_core.cache.Cache'). `name` is the file's module name (default: from its path)."""
    me = name or module_name(path)
    package = me.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)}
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            out |= {f"{base}.{a.name}" for a in node.names}
    return {m for m in out if m.split(".")[0] in ("dpo_eval_core", "fixtures", "evals")}


def rank(name: str) -> int | None:
    """Layer of an imported project name: that of the module it comes from."""
    if name.startswith(("fixtures", "evals")):
        return PLUGIN_RANK
    while name:
        for candidate in (name, f"{name}.__init__"):
            if candidate in RANK:
                return RANK[candidate]
        name = name.rpartition(".")[0]
    return None


def upward(path: Path, me: str) -> list[str]:
    """Imported names from the module's own layer (another module) or a higher one."""
    return sorted(m for m in imports(path, me) if (r := rank(m)) is not None and r >= RANK[me]
                  and not (m == me or m.startswith(me.removesuffix(".__init__") + ".")))


CORE = sorted((ROOT / "dpo_eval_core").rglob("*.py"))


@pytest.mark.parametrize("path", CORE, ids=[str(p.relative_to(ROOT)) for p in CORE])
def test_core_modules_import_only_lower_layers(path: Path) -> None:
    me = module_name(path)
    assert me in RANK, f"{me} is in no layer: add it to LAYERS in {__file__}"
    assert not upward(path, me), f"{me} (layer {RANK[me]}) imports {upward(path, me)} from its own or a higher layer"


def test_the_core_never_imports_the_demo_or_the_plugin() -> None:
    below_demo = [p for p in CORE if RANK[module_name(p)] < RANK["dpo_eval_core.demo.base"]]
    found = {module_name(p): sorted(m for m in imports(p) if ".demo" in m or m.startswith("fixtures"))
             for p in below_demo}
    assert not {k: v for k, v in found.items() if v}


def test_evals_import_nothing_of_the_project() -> None:
    """The claims are pytest tests and nothing else: their work is in the plugin and the core."""
    assert not {p.name: imports(p, f"evals.{p.stem}") for p in (ROOT / "evals").glob("*.py")
                if imports(p, f"evals.{p.stem}")}


@pytest.mark.parametrize("line", ["from .gate import GateRun", "from . import gate",
                                  "def f():\n    from .registry import discover", "import dpo_eval_core.models"])
def test_the_check_finds_an_upward_import_wherever_it_is(tmp_path: Path, line: str) -> None:
    source = tmp_path / "stats.py"
    source.write_text(f"import math\n{line}\n")
    assert upward(source, "dpo_eval_core.stats")


def test_the_public_api_and_the_statistics_import_without_torch() -> None:
    """`import dpo_eval_core` (names load on first use) and `dpo_eval_core.stats` stay light: a library user
    who reads results or runs the statistics does not pay for torch and transformers."""
    import subprocess
    import sys

    code = ("import sys, dpo_eval_core, dpo_eval_core.stats, dpo_eval_core.decide, dpo_eval_core.results; "
            "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
