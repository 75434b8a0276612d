"""What a run spent and where it stopped: seconds per phase, results computed (not read from the cache), and
out-of-memory errors turned into messages that name the phase and the options that need less memory."""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

from .errors import ResourceError

if TYPE_CHECKING:
    from .config import EvalConfig


@dataclass
class Ledger:
    """Seconds per phase and how many results each stage computed (not read from the cache)."""

    timings: dict[str, float] = field(default_factory=dict)
    computed: dict[str, int] = field(default_factory=dict)
    prefix: str = ""
    """Put before every name: the --compare adapter's run writes into its host's ledger as 'compare: ...'."""

    failed: str | None = None
    """The innermost phase an exception left, for messages that name where a run stopped."""

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        except BaseException:
            self.failed = self.failed or self.prefix + name
            raise
        finally:
            key = self.prefix + name
            self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - start

    def count(self, name: str, n: int) -> None:
        self.computed[self.prefix + name] = self.computed.get(self.prefix + name, 0) + n


@contextlib.contextmanager
def memory_errors(ledger: Ledger, cfg: EvalConfig, doing: str) -> Iterator[None]:
    """Turn an out-of-memory error (torch's, CUDA's or the CPU allocator's) into a ResourceError that names the
    phase it stopped in and the options that need less memory."""
    try:
        yield
    except Exception as e:
        if type(e).__name__ != "OutOfMemoryError":
            raise
        raise out_of_memory(e, ledger.failed or doing, cfg) from None


def out_of_memory(e: BaseException, phase: str, cfg: EvalConfig) -> ResourceError:
    """An out-of-memory error as a message: the phase, what was asked and free (from the allocator's own
    words, and the device where it can say), and the options that need less memory."""
    said = str(e)
    asked = re.search(r"Tried to allocate ([\d.]+ [KMGT]i?B)", said)
    free = re.search(r"of which ([\d.]+ [KMGT]i?B) is free", said)
    where = f"{asked.group(1)} asked" if asked else "an allocation failed"
    if free:
        where += f", {free.group(1)} free"
    elif cfg.on_cuda:
        import torch

        free_b, total_b = torch.cuda.mem_get_info()
        where += f", {free_b / 2**30:.2f} GiB of {total_b / 2**30:.2f} GiB free"
    options = [f"--batch-tokens {max(256, cfg.resolved_batch_tokens // 4)} (scoring and prefill in smaller batches; "
               f"now {cfg.resolved_batch_tokens})",
               f"--batch-size {max(1, cfg.batch_size // 4)} (fewer answers decoding together; now {cfg.batch_size})"]
    if not cfg.quant.startswith("4bit"):
        options.insert(0, "--quant 4bit (the base's weights in a quarter of the bf16 memory)")
    if "quantization" in phase:
        options.append('-k "not quantization" to leave the quantization probes out, or a --gate gating list '
                       "without their variants")
    return ResourceError(f"out of memory while {phase} on {cfg.resolved_device} ({where}). Options that need less "
                         f"memory: {'; '.join(options)}.")
