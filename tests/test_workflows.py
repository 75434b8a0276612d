"""The CI workflows in docs/ci/ work as written: their shell steps run, in order, in a fresh virtual environment,
the way GitHub Actions runs them (each `run:` in its own bash, `$GITHUB_PATH` carried to the next step, the job's
`env:`). Steps named "(GPU)" or "(secret)" are left out: they need a GPU runner or a token; `uses:` steps are
actions (the test lays out the checkout itself). The candidate is the demo adapter and the data the demo's
pairs rewritten in the binarized UltraFeedback layout, as a new user's would be.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from dpo_eval_core.demo import DEMO_ADAPTER_DIR, demo_pairs

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / "docs" / "ci").glob("*.yml"))
LEFT_OUT = ("(GPU)", "(secret)")


def _not_a_checkout(folder: str, names: list[str]) -> set[str]:
    """What a fresh checkout of dpo-eval lacks: environments, build output, caches, this run's results."""
    top = {".git", ".venv", ".ci", ".hypothesis", ".pytest_cache", "build", "dist", "results.json", "results.html",
           "bench.json", ".dpo-eval-cache"} if Path(folder) == ROOT else set()
    return {n for n in names if n in top or n == "__pycache__" or n.endswith(".egg-info")}


def job(path: Path) -> dict:
    (only,) = yaml.safe_load(path.read_text(encoding="utf-8"))["jobs"].values()
    return only


def expand(value: str, workspace: Path) -> str:
    """The `${{ ... }}` expressions these workflows use, as GitHub would fill them."""
    return re.sub(r"\$\{\{\s*github\.workspace\s*\}\}", str(workspace), str(value))


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.stem)
def test_every_workflow_is_a_job_whose_steps_name_what_they_need(workflow):
    steps = job(workflow)["steps"]
    runs = [s for s in steps if "run" in s]
    assert all("name" in s for s in runs)
    assert any("requirements-nodeps.txt" in s["run"] and "--require-hashes" in s["run"] for s in runs)
    assert any("dpo-eval --adapter" in s["run"] for s in runs)
    uploads = [s for s in steps if str(s.get("uses", "")).startswith("actions/upload-artifact")]
    assert uploads and all(name in uploads[0]["with"]["path"] for name in ("results.json", "results.html",
                                                                          "junit.xml"))
    if "gpu" in workflow.stem:
        assert any("download.pytorch.org/whl/cu" in s["run"] for s in runs)
        assert "secrets.HF_TOKEN" in workflow.read_text() and "HF_HOME" in job(workflow)["env"]


@pytest.mark.slow
@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.stem)
def test_the_workflow_steps_run_as_written_in_a_fresh_environment(workflow, tmp_path):
    workspace, runner_temp = tmp_path / "workspace", tmp_path / "runner"
    (workspace / "data").mkdir(parents=True)
    runner_temp.mkdir()
    shutil.copytree(ROOT, workspace / "dpo-eval", ignore=_not_a_checkout)
    shutil.copytree(DEMO_ADAPTER_DIR, workspace / "adapters" / "candidate")
    rows = []
    for pair in demo_pairs():
        turns = [{"role": "system", "content": pair["system"]}] * bool(pair.get("system")) + [
            {"role": "user", "content": pair["prompt"]}]
        rows.append({"prompt": pair["prompt"], "chosen": turns + [{"role": "assistant", "content": pair["chosen"]}],
                     "rejected": turns + [{"role": "assistant", "content": pair["rejected"]}]})
    (workspace / "data" / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    spec = job(workflow)
    github_path = runner_temp / "github_path"
    github_path.touch()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTEST", "DPO_EVAL"))}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if ".venv" not in p)
    env |= {k: expand(v, workspace) for k, v in spec["env"].items()}
    env |= {"RUNNER_TEMP": str(runner_temp), "GITHUB_PATH": str(github_path),
            "GATE_ARGS": "--max-samples 6 -k checkpoint"}  # the loading claims: the workflow, not the demo's verdict
    ran = []
    for step in spec["steps"]:
        if "run" not in step or step["name"].endswith(LEFT_OUT):
            continue
        path = [line for line in github_path.read_text().splitlines() if line][::-1]
        step_env = env | {k: expand(v, workspace) for k, v in step.get("env", {}).items()}
        step_env["PATH"] = os.pathsep.join([*path, env["PATH"]])
        proc = subprocess.run(["bash", "-e", "-c", step["run"]], cwd=workspace, env=step_env, capture_output=True,
                              text=True, timeout=1500)
        assert proc.returncode == 0, f"{step['name']}: exit {proc.returncode}\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        ran.append(step["name"])
    assert "Install dpo-eval" in ran
    if "gpu" not in workflow.stem:
        results = json.loads((workspace / "results.json").read_text())
        assert results["facts"]["data"]["layout"] == "binarized UltraFeedback"
        assert {c["id"] for c in results["claims"]} >= {"adapter-loads", "tokenizer-ready"}
        assert (workspace / "junit.xml").is_file() and (workspace / "results.html").is_file()
