"""The compute dtype `--compute-dtype auto` picks on this machine, and why.

bfloat16 where the hardware multiplies it natively: CUDA devices of compute capability 8.0 and up,
and CPUs whose PyTorch reports AMX or AVX512-BF16. A bfloat16 forward pass moves reward margins (on
the 600-pair UltraFeedback gate by a median 0.097 and up to 0.375, flipping 3 of 109 pairs: a
margin is a difference of four sums over hundreds of tokens, and the residual stream rounds at
every layer), so `auto` keeps float32 verdicts: the weights load in float32, each pass runs on a
bfloat16 cast of them (backend.cast_weights), and every pair or question the measured bfloat16 error
band cannot settle is scored again in float32 on the weights as loaded (precision.py). On CUDA with `--quant none` the weights load in bfloat16
(float32 weights would double a 7B model's 14 GB), and the verdicts are bfloat16's; the reason says
so. float32 on older GPUs (float16 is the NaN trap of 4-bit weights with left padding) and on CPUs
without native bfloat16 (it would be emulated and slower). Logits become log-probabilities in
float32 and are summed in float64 whichever dtype ran.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import ConfigError


@dataclass(frozen=True, slots=True)
class DtypeChoice:
    """The dtype models run in and the one-line reason, for results.json facts and the report header."""

    dtype: str
    """The dtype the forward pass runs in."""
    reason: str
    weights: str = ""
    """The dtype the weights load in; "" when it is `dtype`. float32 under a bfloat16 pass: the pass runs on a
    bfloat16 cast of them, and the near ties are scored again in float32 on the weights as loaded."""

    @property
    def loads(self) -> str:
        """The dtype the weights load in."""
        return self.weights or self.dtype

    @property
    def cast(self) -> str | None:
        """The dtype the weights are cast to for a pass, when they load in another; None otherwise."""
        return self.dtype if self.loads != self.dtype else None

    @property
    def identity(self) -> str:
        """The dtype cache keys name: a pass on weights cast from float32 is kept apart from one on weights
        loaded in bfloat16 (a checkpoint stored in another dtype rounds differently)."""
        return self.dtype if self.cast is None else f"{self.dtype} cast from {self.loads} weights"


def choose_dtype(requested: str, device: str, quant: str = "none") -> DtypeChoice:
    """`requested` itself unless it is "auto"; then bfloat16 with float32 verdicts on CPUs with AMX or
    AVX512-BF16 and on CUDA of compute capability 8+ with quantized weights, plain bfloat16 on such GPUs with
    `--quant none`, float32 elsewhere (the reason says which, and why)."""
    if requested != "auto":
        return DtypeChoice(requested, f"--compute-dtype {requested}")
    import torch

    if device.startswith("cuda"):
        index = torch.device(device).index or 0
        major, minor = torch.cuda.get_device_capability(index)
        name = torch.cuda.get_device_name(index)
        if major >= 8 and quant != "none":
            return DtypeChoice("bfloat16", f"auto: {name} (compute capability {major}.{minor}) has bfloat16 tensor "
                                           f"cores; float32 verdicts: pairs and questions within the bfloat16 error "
                                           f"band are scored again in float32", weights="float32")
        if major >= 8:
            return DtypeChoice("bfloat16", f"auto: {name} (compute capability {major}.{minor}) has bfloat16 tensor "
                                           f"cores; bfloat16 verdicts: float32 ones would load float32 weights (4 "
                                           f"bytes a parameter): pass --compute-dtype float32 where memory allows")
        return DtypeChoice("float32", f"auto: {name} (compute capability {major}.{minor}) has no native bfloat16; "
                                      "float16 is a NaN trap with 4-bit weights and left padding")
    features = cpu_bf16_features()
    capability = torch.backends.cpu.get_cpu_capability()
    if features:
        return DtypeChoice("bfloat16", f"auto: bfloat16 passes with float32 verdicts; this CPU multiplies "
                                       f"bfloat16 natively ({', '.join(features)}; PyTorch capability {capability}); "
                                       f"pairs and questions within the bfloat16 error band are scored again in "
                                       f"float32", weights="float32")
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
