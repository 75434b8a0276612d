"""Model identity and every cache key of the gate, in one place.

A key is the sha256 of exactly the fields that change the output. The model part is the same for
every namespace: base weights digest, adapter weights digest (None for base answers and reference
log-probs, so those are shared between adapters), quantization, dtype, device and chat template.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from .backend import DECODER_VERSION, GenerationSettings
from .cache import Cache, file_digest, make_key
from .chat import Message


def library_versions() -> dict[str, str]:
    """Versions of Python and the libraries whose arithmetic the results depend on."""
    import importlib.metadata as md
    import platform

    names = ("torch", "transformers", "peft", "bitsandbytes", "textdescriptives", "spacy", "scipy", "numpy")
    out = {"python": platform.python_version()}
    for n in names:
        try:
            out[n] = md.version(n)
        except md.PackageNotFoundError:
            out[n] = "not installed"
    return out


def weights_files(base: str) -> list[Path]:
    """The safetensors files of a local base (empty for a hub id)."""
    path = Path(base)
    return sorted(path.glob("*.safetensors")) if path.is_dir() else []


def base_fingerprint(base: str, memo: Cache | None) -> str:
    """sha256 over the base's weight files (each memoised by path, size and mtime), without loading it;
    'hub:<id>' for a hub id, whose weights are not on disk until loaded."""
    files = weights_files(base)
    if not files:
        return f"hub:{base}"
    return hashlib.sha256("".join(file_digest(f, memo) for f in files).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ModelIdentity:
    """What makes two loaded models give the same outputs."""

    base: str
    """base_fingerprint() of the base."""
    adapter: str | None
    """sha256 of the adapter's weights file; None for the base alone (adapter disabled)."""
    quant: str
    dtype: str
    device: str
    """Device type only (cuda, cpu): the index does not change outputs."""
    chat_template: str
    """sha256 of the tokenizer's chat template."""

    @staticmethod
    def of(base: str, adapter: str | None, quant: str, dtype: str, device: str, chat_template: Any) -> "ModelIdentity":
        return ModelIdentity(base, adapter, quant, dtype, device.split(":")[0],
                             hashlib.sha256(str(chat_template).encode()).hexdigest())

    def without_adapter(self) -> "ModelIdentity":
        return dataclasses.replace(self, adapter=None)

    def fields(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def generation_key(model: ModelIdentity, settings: GenerationSettings, messages: Sequence[Message]) -> str:
    """An answer: model (without the adapter for base answers), generation settings, decoder version, prompt."""
    return make_key("generation", {"model": model.fields(), "settings": dataclasses.asdict(settings),
                                   "decoder": DECODER_VERSION, "messages": [list(m) for m in messages]})


def logp_key(model: ModelIdentity, messages: Sequence[Message], completion: str, max_length: int | None) -> str:
    """A summed completion log-prob: policy (with adapter) or reference (without), prompt, completion, cut."""
    return make_key("logp", {"model": model.fields(), "messages": [list(m) for m in messages],
                             "completion": completion, "max_length": max_length})


def feature_key(text: str, extractor: Mapping[str, str]) -> str:
    """A text's feature row: the text and the extractor's versions and settings."""
    return make_key("features", {"text": text, "extractor": dict(extractor)})


def quantization_key(model: ModelIdentity, quant: str, dtype: str, probe_ids: list[list[int]], probe_version: int,
                     libraries: Mapping[str, str]) -> str:
    """One variant's probe measurements: base and adapter digests, the variant, the device, the probe's token
    ids, the probe code's version and the versions of the libraries that do the arithmetic."""
    return make_key("quantization", {"base": model.base, "adapter": model.adapter, "quant": quant, "dtype": dtype,
                                     "device": model.device, "probe": probe_ids, "probe_version": probe_version,
                                     "libraries": dict(libraries)})


def mcq_key(model: ModelIdentity, prompt: str, continuations: Sequence[str], chat: bool,
            max_length: int | None) -> str:
    """One question's choice log-likelihoods: model (without the adapter for the base's side, so a new
    adapter reuses it), the rendered prompt (question, choices, format and shots are all in it), the
    continuations, chat template or raw text, and the cut."""
    return make_key("mcq", {"model": model.fields(), "prompt": prompt, "continuations": list(continuations),
                            "chat": chat, "max_length": max_length})


def judge_key(judge: Mapping[str, Any], prompt: str, max_tokens: int) -> str:
    """One judge reply: the judge's identity (a local model's weights digest, dtype, device, chat template and
    decoding settings, or an endpoint's URL and served model; never its key), the rendered prompt (template,
    question, both answers and their order) and the reply budget."""
    return make_key("judge", {"judge": dict(judge), "prompt": prompt, "max_tokens": max_tokens})


def served_generation_key(server: Mapping[str, Any], settings: GenerationSettings, messages: Sequence[Message]) -> str:
    """An answer from a serving engine: the server's identity (URL, served name, the weights it reports, the
    prompt mode and, when the prompt is rendered here, the chat template), the decoding settings (not the
    local batching ones) and the prompt. Never equal to a local answer's key."""
    decoding = {k: getattr(settings, k) for k in ("max_new_tokens", "do_sample", "temperature", "top_p", "seed")}
    return make_key("generation", {"server": dict(server), "settings": decoding,
                                   "messages": [list(m) for m in messages]})
