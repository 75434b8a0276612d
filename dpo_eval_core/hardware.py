"""The compute dtype `--compute-dtype auto` picks on this machine, and why.

bfloat16 on CUDA devices of compute capability 8.0 and up (float32 on older ones: they have no
native bfloat16, and float16 is the NaN trap of 4-bit weights with left padding). float32 on CPUs,
including those whose PyTorch reports AMX or AVX512-BF16: there bfloat16 runs faster (measured on
2 cores with AVX512-BF16: 1.4x the whole UltraFeedback gate) but moves the reward claims. On the
600-pair UltraFeedback gate, bfloat16 changed reward margins by a median 0.097 and up to 0.375
(relative median 2.9%), flipped 3 of 109 valid pairs and moved reward-accuracy from inconclusive to
fail: a margin is a difference of four sums over hundreds of tokens, and bfloat16's residual stream
rounds every layer. `--compute-dtype bfloat16` stays available where that trade is wanted.
Logits become log-probabilities in float32 and are summed in float64 whichever dtype ran.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import ConfigError


@dataclass(frozen=True, slots=True)
class DtypeChoice:
    """The dtype models run in and the one-line reason, for results.json facts and the report header."""

    dtype: str
    reason: str


def choose_dtype(requested: str, device: str) -> DtypeChoice:
    """`requested` itself unless it is "auto"; then bfloat16 on CUDA of compute capability 8+, float32 on older
    GPUs and on every CPU (the reason says what the CPU could run and at what cost)."""
    if requested != "auto":
        return DtypeChoice(requested, f"--compute-dtype {requested}")
    import torch

    if device.startswith("cuda"):
        index = torch.device(device).index or 0
        major, minor = torch.cuda.get_device_capability(index)
        name = torch.cuda.get_device_name(index)
        if major >= 8:
            return DtypeChoice("bfloat16", f"auto: {name} (compute capability {major}.{minor}) has bfloat16 tensor cores")
        return DtypeChoice("float32", f"auto: {name} (compute capability {major}.{minor}) has no native bfloat16; "
                                      "float16 is a NaN trap with 4-bit weights and left padding")
    features = cpu_bf16_features()
    capability = torch.backends.cpu.get_cpu_capability()
    if features:
        return DtypeChoice("float32", f"auto: float32 on CPU; this one multiplies bfloat16 natively "
                                      f"({', '.join(features)}; PyTorch capability {capability}), and "
                                      "--compute-dtype bfloat16 runs faster but moves reward margins (docs/performance.md)")
    return DtypeChoice("float32", f"auto: float32 on CPU; this one has no AMX or AVX512-BF16 (PyTorch capability "
                                  f"{capability}), so bfloat16 would be emulated and slower")


def cpu_bf16_features() -> tuple[str, ...]:
    """The bfloat16 matrix instructions PyTorch reports for this CPU: "AMX", "AVX512-BF16", both or none."""
    import torch

    checks = (("AMX", "_is_amx_tile_supported"), ("AVX512-BF16", "_is_avx512_bf16_supported"))
    return tuple(name for name, fn in checks if hasattr(torch.cpu, fn) and getattr(torch.cpu, fn)())


def threads_per_process(processes: int, cores: int | None = None) -> int:
    """torch threads for each of `processes` sharing this machine's cores (at least one). Two processes each
    running as many OpenMP threads as there are cores spin at every barrier while the other holds the core:
    on 2 cores a [32, 576] x [576, 16] product took 4 ms instead of microseconds."""
    return max(1, (cores or os.cpu_count() or 1) // max(1, processes))


CUDA_TORCH = "pip install torch --index-url https://download.pytorch.org/whl/cu124"


def check_device(device: str, quant: str) -> None:
    """Raise ConfigError, naming the cause and the fix, when this environment cannot run what was asked: CUDA on
    a torch built without it or with no GPU visible, a GPU index that is not there, or --quant with a
    bitsandbytes that cannot quantize on the device. Called before any claim runs, so an environment problem
    never reads as a failed adapter."""
    import torch

    if device.startswith("cuda"):
        if not torch.backends.cuda.is_built():
            raise ConfigError("--device", device, "a device this torch can use",
                              f"This torch ({torch.__version__}) was built without CUDA: install a CUDA build "
                              f"({CUDA_TORCH}, or the index for your CUDA version), or use --device cpu.")
        if not torch.cuda.is_available():
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            raise ConfigError("--device", device, "a device this torch can use",
                              "No GPU is visible" + (f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None
                                                     else "") + ": check `nvidia-smi` and the driver, or use "
                              "--device cpu.")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError("--device", device, f"cuda:0 to cuda:{torch.cuda.device_count() - 1}",
                              "Pick a GPU this process sees (CUDA_VISIBLE_DEVICES renumbers them from 0).")
    if quant == "none":
        return
    try:
        import bitsandbytes.functional as bnbf

        bnbf.quantize_4bit(torch.ones(64, device=device, dtype=torch.float32))  # the backend, not only the import
    except Exception as e:  # an import error, a missing native library, an unsupported device: all mean the same
        raise ConfigError("--quant", quant, "a bitsandbytes that quantizes on " + device,
                          f"bitsandbytes failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
                          "Install a build for this machine (pip install -U bitsandbytes), or use --quant none."
                          ) from None
