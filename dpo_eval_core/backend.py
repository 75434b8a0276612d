"""Generation and log-prob scoring behind one small protocol of batch methods.

`HFBackend` runs a transformers model wrapped by PEFT; the base model's outputs come
from the same weights with the adapter disabled. A vLLM backend would implement the
same two methods.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol, Sequence

from .chat import Message, completion_ids, prompt_ids

DECODER_VERSION = 2
"""Bumped when decoding changes an output for the same settings (2: own loop, seeded generator)."""


@dataclass(frozen=True, slots=True)
class GenerationSettings:
    """Everything that changes a generated answer besides model and prompt."""

    max_new_tokens: int = 96
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 64
    """Part of the cache key: greedy outputs are not batch-invariant in low precision."""


@dataclass(frozen=True, slots=True)
class Generation:
    text: str
    n_tokens: int
    truncated: bool
    """True when generation stopped at max_new_tokens rather than at EOS."""


Row = tuple[list[int], list[int]]
"""(prompt ids, completion ids) of one scored sequence."""


class Backend(Protocol):
    def generate(self, prompts: Sequence[Sequence[Message]], *, adapter: bool,
                 settings: GenerationSettings) -> list[Generation]: ...

    def logprobs(self, prompts: Sequence[Sequence[Message]], completions: Sequence[str], *,
                 adapter: bool, max_length: int | None = None) -> list[float]: ...

    def completion_lengths(self, prompts: Sequence[Sequence[Message]], completions: Sequence[str], *,
                           max_length: int | None = None) -> list[int]: ...

    def scored_rows(self, prompts: Sequence[Sequence[Message]], completions: Sequence[str],
                    max_length: int | None = None) -> list[Row]: ...

    def row_logprobs(self, rows: Sequence[Row], *, adapter: bool, max_length: int | None = None) -> list[float]: ...


def batches(n: int, size: int, lengths: Sequence[int], max_tokens: int | None = None) -> Iterator[list[int]]:
    """Index batches grouped by length, so little padding is computed: at most `size` rows, and, with
    max_tokens, at most that many padded tokens (rows x longest row); a row longer than max_tokens
    is a batch of its own."""
    order = sorted(range(n), key=lambda i: (lengths[i], i))
    batch: list[int] = []
    for i in order:
        if batch and (len(batch) == size or (max_tokens is not None and (len(batch) + 1) * lengths[i] > max_tokens)):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def left_pad(ids: Sequence[Sequence[int]], pad: int, device: str) -> tuple[Any, Any]:
    """(input_ids, attention_mask) for a batch of prompts, padded on the left as decoding needs."""
    import torch

    width = max(map(len, ids))
    input_ids = torch.tensor([[pad] * (width - len(x)) + list(x) for x in ids], device=device)
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=device)
    return input_ids, mask


class HFBackend:
    """A loaded PEFT model and its tokenizer."""

    def __init__(self, model: Any, tokenizer: Any, *, system_ok: bool, device: str) -> None:
        self.model, self.tokenizer, self.system_ok, self.device = model, tokenizer, system_ok, device

    def adapter_context(self, adapter: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if adapter else self.model.disable_adapter()

    def prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        return prompt_ids(self.tokenizer, messages, self.system_ok)

    def generate(self, prompts: Sequence[Sequence[Message]], *, adapter: bool,
                 settings: GenerationSettings) -> list[Generation]:
        """One batch, left-padded; greedy unless settings say otherwise."""
        import torch

        input_ids, mask = left_pad([self.prompt_ids(m) for m in prompts], self.tokenizer.pad_token_id, self.device)
        eos = self._eos_ids()
        with torch.inference_mode(), self.adapter_context(adapter):
            rows = decode(self.model, input_ids, mask, eos, settings)
        results = []
        for row in rows:
            stop = next((i for i, t in enumerate(row) if t in eos), None)
            tokens = row if stop is None else row[:stop]
            results.append(Generation(text=self.tokenizer.decode(tokens, skip_special_tokens=True).strip(),
                                      n_tokens=len(tokens), truncated=stop is None))
        return results

    def _eos_ids(self) -> list[int]:
        ids = {self.tokenizer.eos_token_id}
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        return sorted(i for i in ids if i is not None)

    def scored_rows(self, prompts: Sequence[Sequence[Message]], completions: Sequence[str],
                    max_length: int | None = None) -> list[Row]:
        """(prompt ids, completion ids) per row, cut to max_length tokens as TRL's keep_start does. Only
        tokenizes: the lengths it gives let a caller batch by tokens before any model runs."""
        rows = [completion_ids(self.tokenizer, m, c, self.system_ok) for m, c in zip(prompts, completions)]
        if max_length is not None:
            rows = [(p, c[:max(0, max_length - len(p))]) for p, c in rows]
        return rows

    def completion_lengths(self, prompts: Sequence[Sequence[Message]], completions: Sequence[str], *,
                           max_length: int | None = None) -> list[int]:
        """How many completion tokens `logprobs` sums per row (0 where it scores NaN); needs no model."""
        return [len(c) for p, c in self.scored_rows(prompts, completions, max_length)]

    def logprobs(self, prompts: Sequence[Sequence[Message]], completions: Sequence[str], *,
                 adapter: bool, max_length: int | None = None) -> list[float]:
        """Sum of log p(completion token | prefix) per row; prompt and padding masked out (TRL's rule).

        With max_length, prompt+completion is cut to its first max_length tokens (TRL's keep_start);
        a row whose prompt alone fills max_length has no completion left and scores NaN (TRL drops it).
        """
        return self.row_logprobs(self.scored_rows(prompts, completions, max_length), adapter=adapter,
                                 max_length=max_length)

    def row_logprobs(self, rows: Sequence[Row], *, adapter: bool, max_length: int | None = None) -> list[float]:
        """`logprobs` of rows already tokenized by `scored_rows`, as one right-padded batch."""
        import torch

        keep = [i for i, (p, c) in enumerate(rows) if c and (max_length is None or len(p) < max_length)]
        if len(keep) < len(rows):
            out = [float("nan")] * len(rows)
            if keep:
                for i, v in zip(keep, self.row_logprobs([rows[i] for i in keep], adapter=adapter)):
                    out[i] = v
            return out
        seqs = [p + c for p, c in rows]
        width = max(map(len, seqs))
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=self.device)
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=self.device)
        # completion position t is predicted by the hidden state at t-1
        targets = torch.zeros_like(mask, dtype=torch.bool)
        for i, (p, c) in enumerate(rows):
            targets[i, len(p):len(p) + len(c)] = True
        with torch.inference_mode(), self.adapter_context(adapter):
            token_logps = completion_token_logps(self.model, input_ids, mask, targets)
        sums = torch.zeros(len(rows), dtype=torch.float64, device=token_logps.device)
        sums.index_add_(0, targets.nonzero()[:, 0].to(token_logps.device), token_logps.double())
        return sums.tolist()


def decode(model: Any, input_ids: Any, mask: Any, eos: Sequence[int], settings: GenerationSettings) -> list[list[int]]:
    """New tokens per row (up to and including EOS), greedy or seeded sampling, KV-cached.

    Rows leave the batch, and their KV cache is dropped, as soon as they emit EOS.
    transformers' generate keeps computing finished rows until the longest answer ends,
    which with answers of uneven length is a large share of the work (the benchmark's
    roofline row measures it). Left padding: positions count real tokens only.
    """
    import torch
    from transformers import DynamicCache

    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    cache = DynamicCache(config=causal_lm.config)
    # transformers 5.x renames past_key_values to cache (the old name goes in 5.40)
    cache_kwarg = "cache" if "cache" in inspect.signature(causal_lm.forward).parameters else "past_key_values"
    generator = None
    if settings.do_sample:
        generator = torch.Generator(device=input_ids.device).manual_seed(settings.seed)
    eos_t = torch.tensor(list(eos), device=input_ids.device)
    alive = list(range(input_ids.shape[0]))
    out: list[list[int]] = [[] for _ in alive]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    step_ids = input_ids
    for step in range(settings.max_new_tokens):
        logits = model(input_ids=step_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                       logits_to_keep=1, **{cache_kwarg: cache}).logits[:, -1].float()
        nxt = next_tokens(logits, settings, generator)
        for row, token in zip(alive, nxt.tolist()):
            out[row].append(token)
        done = torch.isin(nxt, eos_t)
        if step == settings.max_new_tokens - 1 or bool(done.all()):
            break
        if bool(done.any()):
            keep = (~done).nonzero()[:, 0]
            cache.batch_select_indices(keep)
            alive = [alive[i] for i in keep.tolist()]
            nxt, mask, positions = nxt[keep], mask[keep], positions[keep]
        mask = torch.cat([mask, mask.new_ones(len(alive), 1)], dim=1)
        positions = positions[:, -1:] + 1
        step_ids = nxt[:, None]
    return out


def next_tokens(logits: Any, settings: GenerationSettings, generator: Any) -> Any:
    """Argmax, or a draw from the temperature-scaled, top-p truncated distribution."""
    import torch

    if not settings.do_sample:
        return logits.argmax(-1)
    probs = torch.softmax(logits / settings.temperature, dim=-1)
    if settings.top_p < 1:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p >= settings.top_p  # mass before this token already enough
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


LOGITS_CHUNK_BYTES = 64 << 20
"""Upper bound of one chunk of fp32 logits: positions per chunk = this / (4 * vocab size)."""


def completion_token_logps(model: Any, input_ids: Any, mask: Any, targets: Any) -> Any:
    """log p of the target tokens, in row-major order of `targets`.

    Applies the LM head only at the positions that predict a target, in chunks, so a
    large vocabulary never materialises a [batch, length, vocab] tensor. Models whose
    head does more than a linear map (soft-capping, scaling) take the full-logits path.
    """
    import torch

    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = causal_lm.config
    plain_head = not getattr(cfg, "final_logit_softcapping", None) and getattr(cfg, "logit_scale", None) is None
    pos = targets.nonzero()
    prev = pos.clone()
    prev[:, 1] -= 1
    tok = input_ids[pos[:, 0], pos[:, 1]]
    if plain_head and hasattr(causal_lm, "get_decoder"):
        # use_cache=False: scoring never decodes further, so no KV cache is built (2 GB for 16k tokens of a 7B)
        hidden = causal_lm.get_decoder()(input_ids=input_ids, attention_mask=mask, use_cache=False).last_hidden_state
        h = hidden[prev[:, 0], prev[:, 1]]
        head = causal_lm.get_output_embeddings()
        chunk = max(16, LOGITS_CHUNK_BYTES // (4 * head.weight.shape[0]))
        out = []
        for s in range(0, h.shape[0], chunk):
            logits = head(h[s:s + chunk]).float()
            out.append(logits.gather(1, tok[s:s + chunk, None])[:, 0] - logits.logsumexp(-1))
        return torch.cat(out) if out else torch.zeros(0)
    logits = model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits
    sel = logits[prev[:, 0], prev[:, 1]].float()
    return sel.gather(1, tok[:, None])[:, 0] - sel.logsumexp(-1)


ProgressFn = Callable[[int], None]
