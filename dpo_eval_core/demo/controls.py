"""Control adapters a gate must reject, derived from a real adapter's files.

    python -m dpo_eval_core.demo.controls zero  --src dpo_eval_core/demo/assets/adapter --out ctrl/zero
    python -m dpo_eval_core.demo.controls noise --src dpo_eval_core/demo/assets/adapter --out ctrl/noise
    python -m dpo_eval_core.demo.controls scaled --factor 10 --src dpo_eval_core/demo/assets/adapter --out ctrl/x10

zero: every LoRA B matrix set to 0, so the adapter is the identity.
noise: every LoRA matrix replaced by Gaussian noise with the same Frobenius norm, so the
adapter moves the model as much as the real one, in no learned direction.
scaled: every LoRA B matrix multiplied by a factor, so the adapter's change to the base is that many
times larger: destructive at a large factor, the control the forgetting claim must catch.
(The third control, preferences swapped, is trained: dpo_eval_core.demo.train --swap.)
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from ..models import ADAPTER_WEIGHTS


def _rewrite(src: Path, out: Path, kind: str, seed: int, factor: float = 1.0) -> Path:
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(Path(src) / ADAPTER_WEIGHTS))
    gen = torch.Generator().manual_seed(seed)
    for name, t in tensors.items():
        if kind == "zero" and ".lora_B." in name:
            tensors[name] = torch.zeros_like(t)
        elif kind == "noise" and ".lora_" in name:
            noise = torch.randn(t.shape, generator=gen, dtype=torch.float32)
            tensors[name] = (noise * (t.float().norm() / noise.norm())).to(t.dtype)
        elif kind == "scaled" and ".lora_B." in name:
            tensors[name] = (t.float() * factor).to(t.dtype)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(Path(src) / "adapter_config.json", out / "adapter_config.json")
    # one metadata key: safetensors writes several in a per-process random order, and the gate keys
    # its cache by the file's bytes, so the same control would look like a new adapter every time
    save_file(tensors, str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    (out / "control.json").write_text(json.dumps({"kind": kind, "source": str(src), "seed": seed,
                                                      **({"factor": factor} if kind == "scaled" else {})}) + "\n")
    return out


def zero_adapter(src: Path, out: Path) -> Path:
    """A copy of src with every LoRA B = 0."""
    return _rewrite(src, out, "zero", 0)


def noise_adapter(src: Path, out: Path, seed: int = 0) -> Path:
    """A copy of src with every LoRA matrix replaced by noise of the same norm."""
    return _rewrite(src, out, "noise", seed)


def scaled_adapter(src: Path, out: Path, factor: float) -> Path:
    """A copy of src with every LoRA B multiplied by `factor` (its change to the base scales with it)."""
    return _rewrite(src, out, "scaled", 0, factor)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["zero", "noise", "scaled"])
    parser.add_argument("--src", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--factor", type=float, default=10.0,
                        help="scaled: the factor on every LoRA B (10: the demo adapter's answers become word salad)")
    ns = parser.parse_args(argv)
    print(_rewrite(ns.src, ns.out, ns.kind, ns.seed, ns.factor))


if __name__ == "__main__":
    main()
