"""Load a base model and a LoRA adapter once, safely, with an account of what matched.

Weights come from safetensors only and no remote code runs. Tuned and base outputs
come from the same loaded weights (the adapter is disabled for the base), never from
a second copy in memory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from .backend import HFBackend
from .chat import require_chat_template
from .errors import CheckpointError, ConfigError
from .locate import looks_local

if TYPE_CHECKING:
    from .config import EvalConfig

ADAPTER_WEIGHTS = "adapter_model.safetensors"
PICKLE_WEIGHTS = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth")


@dataclass(frozen=True, slots=True)
class CheckpointSpec:
    """Where the base and adapter come from, resolved from the options."""

    base: str
    """Local directory or hub id actually loaded."""
    base_declared: str
    """The base named in adapter_config.json."""
    adapter: Path


@dataclass(frozen=True, slots=True)
class AdapterReport:
    """How the adapter's weights met the base's modules."""

    target_modules: tuple[str, ...]
    matched_modules: int
    missing_keys: tuple[str, ...]
    """LoRA parameters the base expects that the adapter file lacks."""
    unexpected_keys: tuple[str, ...]
    """Adapter tensors that match no module of the base."""
    nonzero_b: int
    """LoRA B matrices with any non-zero entry (a zero adapter has none)."""
    n_b: int

    @property
    def ok(self) -> bool:
        return self.matched_modules > 0 and not self.missing_keys and not self.unexpected_keys


def read_adapter_config(adapter: Path) -> dict[str, Any]:
    """adapter_config.json, with a fix in the message when it is absent or broken."""
    path = Path(adapter) / "adapter_config.json"
    if not Path(adapter).is_dir():
        raise CheckpointError(f"--adapter {adapter}: directory not found.")
    if not path.is_file():
        raise CheckpointError(f"--adapter {adapter}: no adapter_config.json. Point --adapter at the folder written by "
                              f"PeftModel.save_pretrained().")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}).") from None


LocalBases = Mapping[str, Callable[[], Path]]
"""Base ids that resolve to a local directory made on demand (the demo's converted base): id -> maker."""


def resolve(cfg: EvalConfig, local_bases: LocalBases | None = None) -> CheckpointSpec:
    """Base and adapter locations. A base named in `local_bases` is made (or found) by its maker."""
    if cfg.adapter is None:
        raise ConfigError("adapter", None, "a PEFT adapter directory",
                          "The pytest plugin and the dpo-eval command gate the bundled demo when --adapter is left "
                          "out; from Python, resolve the demo first (dpo_eval_core.demo.with_demo_defaults).")
    adapter = Path(cfg.adapter)
    declared = str(read_adapter_config(adapter).get("base_model_name_or_path") or "")
    base = cfg.base_model or declared
    if not base:
        raise CheckpointError(f"--adapter {adapter}: adapter_config.json names no base model and --base-model is not "
                              f"set. Pass --base-model (a hub id or a local directory).")
    if local_bases and base in local_bases:
        base = str(local_bases[base]())
    elif looks_local(base) and not Path(base).expanduser().is_dir():
        raise CheckpointError(f"--base-model {base}: directory not found.")
    return CheckpointSpec(base=base, base_declared=declared, adapter=adapter)


def adapter_weights(adapter: Path) -> Path:
    """The adapter's safetensors file; pickle-only adapters are refused with the reason."""
    path = Path(adapter) / ADAPTER_WEIGHTS
    if path.is_file():
        return path
    pickles = [p for p in PICKLE_WEIGHTS if (Path(adapter) / p).is_file()]
    if pickles:
        raise CheckpointError(f"--adapter {adapter}: only pickle weights ({', '.join(pickles)}); loading a pickle can "
                              f"run arbitrary code. Re-save with PeftModel.save_pretrained(dir, "
                              f"safe_serialization=True) to get {ADAPTER_WEIGHTS}.")
    raise CheckpointError(f"--adapter {adapter}: no {ADAPTER_WEIGHTS}. Re-save the adapter with "
                          f"PeftModel.save_pretrained(dir).")


def torch_dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def quantization_config(quant: str, compute_dtype: str) -> Any:
    """bitsandbytes settings: 8-bit, or 4-bit (NF4, or FP4 for '4bit-fp4', double-quantized for '-dq', as the
    adapter was trained) with an explicit compute dtype; None for full precision."""
    if quant == "none":
        return None
    from transformers import BitsAndBytesConfig

    if quant == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="fp4" if "fp4" in quant else "nf4",
                              bnb_4bit_compute_dtype=torch_dtype(compute_dtype),
                              bnb_4bit_use_double_quant=quant.endswith("-dq"))


def _causes(e: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    while e is not None and e not in out:
        out.append(e)
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return out


def load_failure(base: str, what: str, e: BaseException) -> CheckpointError:
    """Why `base` could not be loaded, named by its cause: a gated or private hub repo (accept the licence and
    log in), no such repo or folder, a missing file, remote code that the gate refuses, no connection; else
    the loader's own words."""
    from huggingface_hub import errors as hub

    chain = _causes(e)
    text = " ".join(str(c) for c in chain)
    status = next((getattr(getattr(c, "response", None), "status_code", None) for c in chain
                   if isinstance(c, hub.HfHubHTTPError)), None)
    if any(isinstance(c, hub.GatedRepoError) for c in chain) or "gated repo" in text or status in (401, 403):
        fix = (f"it is a gated or private repository and this machine is not allowed in: accept its licence on "
               f"https://huggingface.co/{base} with your account, then log in here (set HF_TOKEN, or run "
               f"`huggingface-cli login`), or pass --base-model a local directory")
    elif any(isinstance(c, hub.RepositoryNotFoundError) for c in chain) or "not a valid model identifier" in text:
        fix = "no local directory and no hub repository has that name: check --base-model (or the adapter's " \
              "base_model_name_or_path)"
    elif any(isinstance(c, hub.LocalEntryNotFoundError) for c in chain) or "couldn't connect" in text:
        fix = "the hub cannot be reached and the files are not in the local cache: download them where the " \
              "network is, or pass --base-model a local directory"
    elif "does not appear to have a file named" in text:
        missing = text.split("does not appear to have a file named", 1)[1].split(".")[0].strip()
        fix = f"a file is missing: {missing}; the gate needs config.json, the tokenizer files and safetensors weights"
    elif "trust_remote_code" in text:
        fix = "the model needs its own code (trust_remote_code), which the gate never runs: use a model that " \
              "transformers supports natively"
    else:
        fix = f"{e}"
    return CheckpointError(f"base model {base}: cannot load its {what}: {fix}.")


def load_tokenizer(base: str) -> Any:
    """Tokenizer ready for batched generation: left padding and a pad token (EOS when it has none)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(base, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise load_failure(base, "tokenizer", e) from None
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        if tok.eos_token_id is None:
            raise CheckpointError(f"base model {base}: the tokenizer has neither a pad nor an EOS token; batched "
                                  f"generation needs one. Set tokenizer.pad_token and save it.")
        tok.pad_token = tok.eos_token
    return tok


def tokenizer_source(spec: CheckpointSpec) -> str:
    """Where the gate's tokenizer comes from: the adapter's directory when it saved one (its chat template is
    the one it was trained with: TRL's trainers save the tokenizer beside the adapter), else the base."""
    return str(spec.adapter) if (Path(spec.adapter) / "tokenizer_config.json").is_file() else spec.base


def load_gate_tokenizer(spec: CheckpointSpec) -> Any:
    """The tokenizer (tokenizer_source) with a chat template; an adapter's tokenizer that adds tokens the base
    has no embedding for is refused, naming both sizes."""
    source = tokenizer_source(spec)
    tokenizer = load_chat_tokenizer(source)
    if source != spec.base:
        from transformers import AutoConfig

        vocab = AutoConfig.from_pretrained(spec.base, trust_remote_code=False).vocab_size
        if len(tokenizer) > vocab:
            raise CheckpointError(f"--adapter {spec.adapter}: its tokenizer has {len(tokenizer)} tokens, the base "
                                  f"{spec.base} embeds {vocab}: the adapter was trained with added tokens. Save "
                                  f"the resized embeddings with the adapter (modules_to_save) or gate the merged model.")
    return tokenizer


def load_chat_tokenizer(base: str) -> Any:
    """load_tokenizer, refusing a tokenizer without a chat template (prompts could not be formatted)."""
    tokenizer = load_tokenizer(base)
    require_chat_template(tokenizer, base)
    return tokenizer


def load_base(base: str, quant: str, dtype: str, device: str) -> Any:
    """The base causal LM from safetensors, optionally quantized, in eval mode."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": torch_dtype(dtype), "use_safetensors": True, "trust_remote_code": False}
    qc = quantization_config(quant, dtype)
    if qc is not None:
        kwargs["quantization_config"] = qc
        kwargs["device_map"] = {"": device}
    try:
        model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
    except (OSError, ValueError) as e:
        if "safetensors" in str(e) and "no file named" in str(e).lower():
            raise CheckpointError(f"base model {base}: it has no safetensors weights ({e}). The gate loads only "
                                  f"safetensors (pickle files can run code): convert it with save_pretrained("
                                  f"safe_serialization=True).") from None
        raise load_failure(base, "weights", e) from None
    if qc is None:
        model.to(device)
    model.eval()
    return model


def attach_adapter(model: Any, spec: CheckpointSpec) -> tuple[Any, AdapterReport]:
    """Wrap the base with the LoRA adapter and check that every adapter tensor found its module."""
    from peft import PeftModel

    weights = adapter_weights(spec.adapter)
    try:
        peft_model = PeftModel.from_pretrained(model, str(spec.adapter), is_trainable=False)
    except (RuntimeError, ValueError, KeyError) as e:
        raise _misfit(spec, e) from None
    peft_model.eval()
    return peft_model, _report(peft_model, spec, weights, "default")


def add_adapter(peft_model: Any, spec: CheckpointSpec, name: str) -> AdapterReport:
    """Load a second LoRA adapter beside the first on the same base weights (PEFT multi-adapter, selected by
    name), checked as attach_adapter checks the first: two adapters, one copy of the base in memory."""
    weights = adapter_weights(spec.adapter)
    if name not in peft_model.peft_config:
        try:
            peft_model.load_adapter(str(spec.adapter), adapter_name=name, is_trainable=False)
        except (RuntimeError, ValueError, KeyError) as e:
            raise _misfit(spec, e) from None
    peft_model.eval()
    return _report(peft_model, spec, weights, name)


def _misfit(spec: CheckpointSpec, e: Exception) -> CheckpointError:
    return CheckpointError(
        f"--adapter {spec.adapter} does not fit the base: it was made for '{spec.base_declared}', the base "
        f"loaded is '{spec.base}'. {str(e).splitlines()[0][:400]} Pass the adapter's own base with --base-model.")


def _report(peft_model: Any, spec: CheckpointSpec, weights: Path, name: str) -> AdapterReport:
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        file_keys = set(f.keys())
        n_b = nonzero_b = 0
        for key in file_keys:
            if ".lora_B." in key:
                n_b += 1
                nonzero_b += int(bool(f.get_tensor(key).abs().max() > 0))
    expected = _expected_adapter_keys(peft_model, name)
    report = AdapterReport(
        target_modules=tuple(sorted(_target_modules(peft_model, name))),
        matched_modules=len({k.rsplit(".lora_", 1)[0] for k in expected}),
        missing_keys=tuple(sorted(expected - file_keys)),
        unexpected_keys=tuple(sorted(file_keys - expected)),
        nonzero_b=nonzero_b, n_b=n_b)
    if report.unexpected_keys and report.matched_modules == 0:
        raise CheckpointError(f"--adapter {spec.adapter} matches no module of the base: it was made for "
                              f"'{spec.base_declared}', the base loaded is '{spec.base}'.")
    return report


def load_adapted(spec: CheckpointSpec, quant: str, dtype: str, device: str, *, dequantize: bool = False
                 ) -> tuple[Any, AdapterReport]:
    """The base (quantized as asked; dequantized again when `dequantize`) with the adapter attached."""
    base = load_base(spec.base, quant, dtype, device)
    return attach_adapter(base.dequantize() if dequantize else base, spec)


def _expected_adapter_keys(peft_model: Any, name: str = "default") -> set[str]:
    """Keys PEFT would save for this adapter, in the file's naming (no adapter name, base_model.model prefix)."""
    from peft import get_peft_model_state_dict

    return set(get_peft_model_state_dict(peft_model, adapter_name=name).keys())


def _target_modules(peft_model: Any, name: str = "default") -> set[str]:
    cfg = peft_model.peft_config[name]
    tm = cfg.target_modules
    return set(tm) if not isinstance(tm, str) else {tm}


def logit_effect(model: Any, input_ids: Any, mask: Any) -> tuple[float, float]:
    """(max |tuned - base| logit, share of positions whose top-1 token changed) over real positions:
    how much the adapter moves the model, from the one loaded PEFT model with its adapter on and off."""
    import torch

    with torch.inference_mode():
        tuned = model(input_ids=input_ids, attention_mask=mask).logits[mask.bool()].float()
        with model.disable_adapter():
            base = model(input_ids=input_ids, attention_mask=mask).logits[mask.bool()].float()
    return float((tuned - base).abs().max()), float((tuned.argmax(-1) != base.argmax(-1)).float().mean())


COMPARE_ADAPTER = "compare"
"""The PEFT adapter name of --compare on the shared model (the gated adapter is PEFT's 'default')."""


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """The one loaded model of a run: a backend over it, and what attaching the adapter found."""

    backend: HFBackend
    report: AdapterReport


def load_gate_model(spec: CheckpointSpec, cfg: EvalConfig, tokenizer: Any, system_ok: bool) -> LoadedModel:
    """The base with the adapter, quantized and in the dtype and on the device the run asks for (float32 weights
    cast to bfloat16 for each pass where the verdicts are float32's: hardware.choose_dtype)."""
    choice = cfg.dtype_choice
    model, report = load_adapted(spec, cfg.quant, choice.loads, cfg.resolved_device)
    return LoadedModel(HFBackend(model, tokenizer, system_ok=system_ok, device=cfg.resolved_device,
                                 cast=choice.cast), report)


def in_memory(peft_model: Any, spec: CheckpointSpec, cfg: EvalConfig, tokenizer: Any, system_ok: bool) -> LoadedModel:
    """A model already in memory (a Trainer's PeftModel, at a save) as a run's model: no reload and no second copy
    of the base (the reference is the base with the adapter disabled), checked against the adapter just saved
    from it to `spec.adapter`."""
    name = peft_model.active_adapter
    return LoadedModel(HFBackend(peft_model, tokenizer, system_ok=system_ok, device=cfg.resolved_device,
                                 adapter_name=name, cast=cfg.dtype_choice.cast),
                       _report(peft_model, spec, adapter_weights(spec.adapter), name))


def join(host: LoadedModel, spec: CheckpointSpec, name: str = COMPARE_ADAPTER) -> LoadedModel:
    """Another adapter of the same base beside the host's (PEFT multi-adapter), under `name`: one base in memory
    for both."""
    report = add_adapter(host.backend.model, spec, name)
    return LoadedModel(host.backend.with_adapter(name), report)


def leave(joined: LoadedModel, name: str) -> None:
    """Take a joined adapter off the shared model (a series' checkpoint once gated): its LoRA weights are freed,
    the base and the other adapters stay."""
    model = joined.backend.model
    if name in model.peft_config:
        model.delete_adapter(name)
