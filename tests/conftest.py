from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from tiny import make_adapter, make_base  # noqa: E402

from dpo_eval_core.hardware import threads_per_process  # noqa: E402

pytest_plugins = ["pytester"]


def pytest_configure(config: pytest.Config) -> None:
    """Under xdist, each worker gets its share of the cores for torch's threads, and so do the gate runs it
    starts (OMP_NUM_THREADS is inherited): see hardware.threads_per_process."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = threads_per_process(workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        import torch

        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def float32_cpu(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test sees a CPU without native bfloat16, so `--compute-dtype auto` is float32 in this process whatever
    CPU runs the suite (CI machines differ: some have AMX, some AVX512-BF16, some neither) and counts and values
    are the same on each. The bfloat16 passes with float32 verdicts are tested where a test asks for them
    (tests/test_precision.py); `real_cpu` tests see the machine as it is. Gate runs in a subprocess see the
    real CPU."""
    if request.node.get_closest_marker("real_cpu"):
        return
    import torch

    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        if hasattr(torch.cpu, name):
            monkeypatch.setattr(torch.cpu, name, lambda: False)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_base(tmp_path_factory.mktemp("llama"), "llama")


@pytest.fixture(scope="session")
def tiny_mistral(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_base(tmp_path_factory.mktemp("mistral"), "mistral")


@pytest.fixture(scope="session")
def tiny_adapter(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_adapter(tiny_llama, tmp_path_factory.mktemp("adapter"))


@pytest.fixture(scope="session")
def zero_adapter(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_adapter(tiny_llama, tmp_path_factory.mktemp("zero"), init="zero")
