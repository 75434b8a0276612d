"""A generation run killed half-way resumes: the re-run generates only the missing answers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

SCRIPT = """
import sys, time
from pathlib import Path
from dpo_eval_core.config import EvalConfig
from dpo_eval_core.run import GateRun
import dpo_eval_core.backend as backend

real = backend.HFBackend.generate_stream
def generate_stream(self, prompts, **kw):
    for n, item in enumerate(real(self, prompts, **kw), 1):
        print("ANSWER", flush=True)
        if n == int(sys.argv[4]):
            time.sleep(3600)  # this answer is never handed over: the parent kills us here, before it is written
        yield item
backend.HFBackend.generate_stream = generate_stream
run = GateRun(EvalConfig(adapter=Path(sys.argv[1]), data=sys.argv[2], cache_dir=Path(sys.argv[3]),
                         batch_size=2, max_new_tokens=4, device="cpu"))
run.answers
print("COMPUTED", run.computed["generations_tuned"], run.computed["generations_base"], flush=True)
"""


def test_killed_generation_resumes_with_only_the_missing_answers(tmp_path, tiny_adapter):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Question {i}?", "chosen": f"A{i}.", "rejected": f"B{i}."}) + "\n"
                            for i in range(10)))
    script = tmp_path / "gen.py"
    script.write_text(SCRIPT)
    cache = tmp_path / "cache"
    args = [sys.executable, str(script), str(tiny_adapter), str(data), str(cache)]
    proc = subprocess.Popen(args + ["5"], stdout=subprocess.PIPE, text=True, start_new_session=True)
    answers = 0
    deadline = time.time() + 120
    while answers < 5 and time.time() < deadline:  # the 5th of the 10 tuned answers blocks
        if (proc.stdout.readline() or "").startswith("ANSWER"):
            answers += 1
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert answers == 5
    done = sum(1 for _ in (cache / "generation").rglob("*.json"))
    assert done == 4  # each answer is written as it finishes; the 5th was killed before its write, however slow
    # the machine: it blocks until the kill, so the count does not depend on timing
    out = subprocess.run(args + ["0"], capture_output=True, text=True, timeout=300, check=True).stdout
    tuned, base = map(int, out.split("COMPUTED")[1].split())
    assert (tuned, base) == (10 - done, 10)
