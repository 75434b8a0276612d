"""Generation and log-prob scoring behind one small protocol of batch methods.

`HFBackend` runs a transformers model wrapped by PEFT; the base model's outputs come
from the same weights with the adapter disabled. Answers stream out as rows finish
(`generate_stream`, decode batches refilled from a queue), and log-probs of rows that
share a prompt come from one prompt pass (`group_logprobs`). A vLLM backend would
implement the same methods.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import functools
import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence

from .chat import Message, completion_ids, context_continuation_ids, prompt_ids, prompt_text

DECODER_VERSION = 4
"""Bumped when decoding changes an output for the same settings (2: own loop, seeded generator;
3: rows refilled from a queue, prefill within batch_tokens; 4: the LM head on a contiguous last hidden
state, a different matmul kernel than transformers' strided slice)."""


@dataclass(frozen=True, slots=True)
class GenerationSettings:
    """Everything that changes a generated answer besides model and prompt."""

    max_new_tokens: int = 96
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 64
    """Rows decoding together; part of the cache key: greedy outputs are not batch-invariant in low precision."""
    batch_tokens: int | None = None
    """Prefill sub-batches hold at most this many padded prompt tokens (rows x longest)."""


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

    def group_logprobs(self, groups: Sequence[Sequence[Row]], *, adapter: bool, batch_size: int,
                       max_tokens: int | None, max_length: int | None = None) -> Iterator[tuple[int, list[float]]]: ...

    def text_rows(self, contexts: Sequence[str | Sequence[Message]], continuations: Sequence[str],
                  max_length: int | None = None) -> list[Row]: ...


def batches(n: int, size: int, lengths: Sequence[int], max_tokens: int | None = None,
            rows: Sequence[int] | None = None) -> Iterator[list[int]]:
    """Index batches grouped by length, so little padding is computed: at most `size` rows, and, with
    max_tokens, at most that many padded tokens (rows x longest); an item over max_tokens is a batch
    of its own. An item may stand for several rows (`rows`: a prompt and its continuations)."""
    order = sorted(range(n), key=lambda i: (lengths[i], i))
    weight = (lambda i: 1) if rows is None else (lambda i: rows[i])
    batch: list[int] = []
    held = 0
    for i in order:
        if batch and (held + weight(i) > size or
                      (max_tokens is not None and (held + weight(i)) * lengths[i] > max_tokens)):
            yield batch
            batch, held = [], 0
        batch.append(i)
        held += weight(i)
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

    def __init__(self, model: Any, tokenizer: Any, *, system_ok: bool, device: str, adapter_name: str = "default",
                 cast: str | None = None) -> None:
        self.model, self.tokenizer, self.system_ok, self.device = model, tokenizer, system_ok, device
        self.adapter_name = adapter_name
        """The PEFT adapter that adapter=True means (a model may carry several: --compare)."""
        self.cast = cast
        """The dtype the weights are cast to for this backend's passes (bfloat16, from float32 weights kept
        aside); None: the weights as loaded."""

    def with_adapter(self, name: str) -> "HFBackend":
        """The same loaded model and tokenizer with another of its adapters as the one adapter=True means."""
        return HFBackend(self.model, self.tokenizer, system_ok=self.system_ok, device=self.device, adapter_name=name,
                         cast=self.cast)

    def exact(self) -> "HFBackend":
        """The same loaded model run in the dtype its weights were loaded in: what float32 verdicts are scored
        with (precision.py)."""
        return HFBackend(self.model, self.tokenizer, system_ok=self.system_ok, device=self.device,
                         adapter_name=self.adapter_name)

    def precision(self) -> contextlib.AbstractContextManager:
        """The weights in this backend's dtype for the passes inside (cast_weights); refused inside another
        backend's cast of the same model, whose passes would silently run in the wrong dtype."""
        if self.cast is None:
            if getattr(self.model, CAST_FLAG, None) is not None:
                raise RuntimeError("HFBackend.exact: the model's weights are cast for another pass")
            return contextlib.nullcontext()
        return cast_weights(self.model, self.cast)

    def adapter_context(self, adapter: bool) -> contextlib.AbstractContextManager:
        """This backend's adapter on, or every adapter off. A plain model (a local judge) has none: adapter=False
        is it as loaded, and adapter=True is refused rather than silently giving the base's outputs."""
        if not hasattr(self.model, "disable_adapter"):
            if adapter:
                raise TypeError("HFBackend: adapter=True on a model without a PEFT adapter")
            return contextlib.nullcontext()
        if not adapter:
            return self.model.disable_adapter()
        return self._active(self.adapter_name)

    @contextlib.contextmanager
    def _active(self, name: str) -> Iterator[None]:
        before = self.model.active_adapter
        if before == name:
            yield
            return
        self.model.set_adapter(name)
        try:
            yield
        finally:
            self.model.set_adapter(before)

    def prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        return prompt_ids(self.tokenizer, messages, self.system_ok)

    def generate(self, prompts: Sequence[Sequence[Message]], *, adapter: bool,
                 settings: GenerationSettings) -> list[Generation]:
        """Answers in prompt order (see `generate_stream`)."""
        out = dict(self.generate_stream(prompts, adapter=adapter, settings=settings))
        return [out[i] for i in range(len(prompts))]

    def generate_stream(self, prompts: Sequence[Sequence[Message]], *, adapter: bool,
                        settings: GenerationSettings) -> Iterator[tuple[int, Generation]]:
        """(prompt index, answer) as each answer finishes; greedy unless settings say otherwise. Prompts
        are taken shortest first, so the rows decoding together need little padding."""
        import torch

        ids = [self.prompt_ids(m) for m in prompts]
        order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))
        eos = self._eos_ids()
        with torch.inference_mode(), self.adapter_context(adapter), self.precision():
            for j, row in decode(self.model, [ids[i] for i in order], pad=self.tokenizer.pad_token_id, eos=eos,
                                 settings=settings, device=self.device):
                stop = next((i for i, t in enumerate(row) if t in eos), None)
                tokens = row if stop is None else row[:stop]
                yield order[j], Generation(text=self.tokenizer.decode(tokens, skip_special_tokens=True).strip(),
                                           n_tokens=len(tokens), truncated=stop is None)

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

    def text_rows(self, contexts: Sequence[str | Sequence[Message]], continuations: Sequence[str],
                  max_length: int | None = None) -> list[Row]:
        """(context ids, continuation ids) per row for multiple-choice scoring, split as
        lm-evaluation-harness splits them; a context given as messages is rendered with the chat
        template first (its generation prompt kept whole: the continuation starts the reply). Over
        max_length, the context loses its start (lm-evaluation-harness's rule: the question and the
        choice, at the end, are what is scored)."""
        rows = []
        for ctx, cont in zip(contexts, continuations):
            raw = isinstance(ctx, str)
            text = ctx if raw else prompt_text(self.tokenizer, ctx, self.system_ok)
            c, k = context_continuation_ids(self.tokenizer, text, cont, move_spaces=raw)
            if max_length is not None and len(c) + len(k) > max_length:
                c = c[max(0, len(c) + len(k) - max_length):]
            rows.append((c, k))
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
        """`logprobs` of rows already tokenized by `scored_rows`, as one right-padded batch, each row
        a full sequence: the one-sequence-at-a-time reference that `group_logprobs` must equal."""
        out = [math.nan] * len(rows)
        keep = [i for i, r in enumerate(rows) if scorable(r, max_length)]
        if not keep:
            return out
        seqs = [rows[i][0] + rows[i][1] for i in keep]
        input_ids, mask = right_pad(seqs, self.tokenizer.pad_token_id, self.device)
        # completion position t is predicted by the hidden state at t-1
        targets = [(len(rows[i][0]), len(seqs[j])) for j, i in enumerate(keep)]
        with self._inference(adapter):
            sums = target_sums(self.model, input_ids, mask, targets)
        for i, v in zip(keep, sums):
            out[i] = v
        return out

    def group_logprobs(self, groups: Sequence[Sequence[Row]], *, adapter: bool, batch_size: int,
                       max_tokens: int | None, max_length: int | None = None) -> Iterator[tuple[int, list[float]]]:
        """`logprobs` of groups of rows that share a prompt (chosen and rejected of a pair, the choices
        of a question), yielded as (group index, one value per row) batch by batch.

        The shared prompt runs once, with a KV cache; each row then runs only its continuation on a
        copy of that cache, so a pair costs prompt + chosen + rejected tokens instead of twice the
        prompt. Batches hold groups while rows x (prompt + longest continuation) stays within
        max_tokens; the continuations run in sub-batches sorted by length, under the same budget, so
        a short chosen answer is not padded to a long rejected one. A group whose rows are one prompt
        and one token each (a question's letter choices) needs no continuation pass: its log-probs are
        read from the prompt's last position, several prompts per batch. Equal to `row_logprobs` up to
        float error (tests: 1e-5 relative in fp32)."""
        with self.precision():  # the weights cast once for the whole call
            yield from self._group_logprobs(groups, adapter=adapter, batch_size=batch_size, max_tokens=max_tokens,
                                            max_length=max_length)

    def _group_logprobs(self, groups: Sequence[Sequence[Row]], *, adapter: bool, batch_size: int,
                        max_tokens: int | None, max_length: int | None) -> Iterator[tuple[int, list[float]]]:
        import torch

        one_token = [i for i, g in enumerate(groups) if next_token_group(g, max_length)]
        yield from self._next_token_logprobs(groups, one_token, adapter=adapter, batch_size=batch_size,
                                             max_tokens=max_tokens)
        skip = set(one_token)
        plan = {i: GroupPlan.of(g, max_length) for i, g in enumerate(groups) if i not in skip}
        shared = [i for i, p in plan.items() if p.prefix]
        for i, p in plan.items():  # nothing to share: score the rows as they are
            if not p.prefix:
                yield i, self.row_logprobs(groups[i], adapter=adapter, max_length=max_length)
        lengths = {i: p.prefix + max(map(len, p.continuations), default=0) for i, p in plan.items()}
        for batch in batches(len(shared), batch_size, [lengths[i] for i in shared], max_tokens,
                             rows=[len(plan[i].continuations) for i in shared]):
            idx = [shared[b] for b in batch]
            sums: dict[tuple[int, int], float] = {}
            with self._inference(adapter):
                prefixes = [groups[i][plan[i].rows[0]][0][:plan[i].prefix] for i in idx]
                ids, mask = right_pad(prefixes, self.tokenizer.pad_token_id, self.device)
                cache = prefill(self.model, ids, mask)
                flat = [(g, r) for g, i in enumerate(idx) for r in range(len(plan[i].continuations))]
                width = ids.shape[1]
                for sub in batches(len(flat), batch_size,
                                   [width + len(plan[idx[g]].continuations[r]) for g, r in flat], max_tokens):
                    rows = [flat[s] for s in sub]
                    own = copy.deepcopy(cache)
                    own.batch_select_indices(torch.tensor([g for g, _ in rows], device=ids.device))
                    conts = [plan[idx[g]].continuations[r] for g, r in rows]
                    c_ids, c_mask = right_pad(conts, self.tokenizer.pad_token_id, self.device)
                    starts = mask.sum(-1)[[g for g, _ in rows]]
                    positions = starts[:, None] + torch.arange(c_ids.shape[1], device=ids.device)
                    targets = [(plan[idx[g]].first_target[r], len(conts[j])) for j, (g, r) in enumerate(rows)]
                    values = target_sums(self.model, c_ids, torch.cat([mask[[g for g, _ in rows]], c_mask], 1),
                                         targets, position_ids=positions, cache=own)
                    sums.update(zip(rows, values))
            for g, i in enumerate(idx):
                out = [math.nan] * len(groups[i])
                for r, row in enumerate(plan[i].rows):
                    out[row] = sums[(g, r)]
                yield i, out

    def _next_token_logprobs(self, groups: Sequence[Sequence[Row]], idx: Sequence[int], *, adapter: bool,
                             batch_size: int, max_tokens: int | None) -> Iterator[tuple[int, list[float]]]:
        """Groups whose rows are one prompt and one completion token each (a question's letters): one
        pass over the prompt, each row's log p read from the distribution at its last position."""
        prompts = [groups[i][0][0] for i in idx]
        for batch in batches(len(idx), batch_size, [len(p) for p in prompts], max_tokens):
            ids, mask = right_pad([prompts[b] for b in batch], self.tokenizer.pad_token_id, self.device)
            with self._inference(adapter):
                logps = last_logprobs(self.model, ids, mask)
            for j, b in enumerate(batch):
                yield idx[b], [float(logps[j, row[1][0]]) for row in groups[idx[b]]]

    @contextlib.contextmanager
    def _inference(self, adapter: bool) -> Iterator[None]:
        import torch

        with torch.inference_mode(), self.adapter_context(adapter), self.precision():
            yield


CAST_FLAG = "_dpo_eval_cast"


@contextlib.contextmanager
def cast_weights(model: Any, dtype: str) -> Iterator[None]:
    """`model`'s floating-point parameters in `dtype` inside, as loaded again outside (the loaded tensors are
    kept aside, so nothing is rounded for good), and bitsandbytes' 4-bit layers computing in it (they cast
    their input to their own compute dtype). Re-entering is free. Casting the weights once per scoring call
    runs bfloat16 matrix products at full speed; autocast, which casts activations at every layer, gained
    1.26x over float32 where this gains 1.72x (40 UltraFeedback pairs, demo model, 2 cores with AMX)."""
    import torch

    fast = getattr(torch, dtype)
    if getattr(model, CAST_FLAG, None) == fast:
        yield
        return
    params = [p for p in model.parameters() if p.is_floating_point() and p.dtype != fast]
    kept = [p.data for p in params]
    layers = [m for m in model.modules() if isinstance(getattr(m, "compute_dtype", None), torch.dtype)]
    before = [m.compute_dtype for m in layers]
    try:
        for p in params:
            p.data = p.data.to(fast)
        for m in layers:
            m.compute_dtype = fast
        setattr(model, CAST_FLAG, fast)
        yield
    finally:
        for p, d in zip(params, kept):
            p.data = d
        for m, d in zip(layers, before):
            m.compute_dtype = d
        setattr(model, CAST_FLAG, None)


def scorable(row: Row, max_length: int | None) -> bool:
    """A row has completion tokens left after the max_length cut (TRL drops the others)."""
    prompt, completion = row
    return bool(completion) and (max_length is None or len(prompt) < max_length)


def next_token_group(group: Sequence[Row], max_length: int | None) -> bool:
    """Every row continues the same prompt by exactly one token (and is scorable)."""
    return bool(group) and all(len(c) == 1 and p == group[0][0] and scorable((p, c), max_length) for p, c in group)


@dataclass(frozen=True, slots=True)
class GroupPlan:
    """How the scorable rows of a group split into one shared prefix and per-row continuations.

    The prefix is the prompt tokens all rows share, less one: every continuation then starts with a
    prompt token, whose hidden state predicts the first completion token."""

    rows: tuple[int, ...]
    """Indices of the scorable rows in the group."""
    prefix: int
    continuations: tuple[list[int], ...]
    first_target: tuple[int, ...]
    """Index in each continuation of its first completion token."""

    @classmethod
    def of(cls, group: Sequence[Row], max_length: int | None) -> "GroupPlan":
        rows = tuple(i for i, r in enumerate(group) if scorable(r, max_length))
        prompts = [group[i][0] for i in rows]
        common = 0
        while prompts and common < min(map(len, prompts)) and all(p[common] == prompts[0][common] for p in prompts):
            common += 1
        prefix = max(0, common - 1)
        return cls(rows, prefix, tuple((group[i][0] + group[i][1])[prefix:] for i in rows),
                   tuple(len(group[i][0]) - prefix for i in rows))


def right_pad(seqs: Sequence[Sequence[int]], pad: int, device: str) -> tuple[Any, Any]:
    """(input_ids, attention_mask) for a batch of sequences padded on the right."""
    import torch

    width = max(map(len, seqs))
    input_ids = torch.tensor([list(s) + [pad] * (width - len(s)) for s in seqs], device=device)
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=device)
    return input_ids, mask


def cache_kwarg(module: Any) -> str:
    """transformers 5.x renames forward's past_key_values to cache (the old name goes in 5.40)."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def causal_lm_of(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def prefill(model: Any, input_ids: Any, mask: Any) -> Any:
    """A KV cache of right-padded prompts (the LoRA layers as the adapter context left them); no logits."""
    from transformers import DynamicCache

    causal_lm = causal_lm_of(model)
    cache = DynamicCache(config=causal_lm.config)
    body = causal_lm.get_decoder() if hasattr(causal_lm, "get_decoder") else model
    body(input_ids=input_ids, attention_mask=mask, use_cache=True, **{cache_kwarg(body): cache})
    return cache


def decode(model: Any, prompts: Sequence[list[int]], *, pad: int, eos: Sequence[int], settings: GenerationSettings,
           device: str) -> Iterator[tuple[int, list[int]]]:
    """(prompt index, new tokens up to and including EOS) as each row finishes; greedy or seeded
    sampling, KV-cached.

    At most settings.batch_size rows decode together. A row leaves as soon as it is done, and its
    KV cache with it (transformers' generate computes finished rows until the longest ends). When an
    eighth of the rows have left, the next prompts in the queue are prefilled, in sub-batches within
    settings.batch_tokens, and their KV cache is merged into the running batch (left-padded to a
    common width), so decode steps run at full width until the queue drains. Models whose cache
    slides (drops columns past a window) and prompts that reach the window decode batch by batch
    instead. A row's tokens do not depend on its neighbours beyond float error. Left padding:
    positions count real tokens only.
    """
    import torch

    causal_lm = causal_lm_of(model)
    generator = torch.Generator(device=device).manual_seed(settings.seed) if settings.do_sample else None
    eos_t = torch.tensor(list(eos), device=device)
    width, refill_at = settings.batch_size, max(1, settings.batch_size // 8)
    window = sliding_window(causal_lm)  # a sliding layer drops old columns: merging caches needs them all
    refill = window is None or max(map(len, prompts), default=0) + settings.max_new_tokens < window
    queue = collections.deque(range(len(prompts)))
    rows: list[int] = []
    out: dict[int, list[int]] = {}
    run: Running | None = None

    def forward(ids: Any, mask: Any, positions: Any, cache: Any) -> Any:
        return next_token_logits(model, ids, mask, positions, cache)

    while queue or rows:
        free = width - len(rows)
        if queue and free and (run is None or (refill and free >= min(refill_at, len(queue)))):
            new = [queue.popleft() for _ in range(min(free, len(queue)))]
            budget = settings.batch_tokens if refill else None
            for sub in batches(len(new), len(new), [len(prompts[i]) for i in new], budget):
                idx = [new[s] for s in sub]
                ids, mask = left_pad([prompts[i] for i in idx], pad, device)
                positions = (mask.cumsum(-1) - 1).clamp(min=0)
                cache = decode_cache(causal_lm.config, settings.max_new_tokens)
                first = next_tokens(forward(ids, mask, positions, cache), settings, generator)
                run = Running.merge(run, Running(cache, mask, positions[:, -1:] + 1, first), causal_lm.config,
                                    settings.max_new_tokens)
                rows += idx
                out.update((i, [t]) for i, t in zip(idx, first.tolist()))
        else:
            step_mask = torch.cat([run.mask, run.mask.new_ones(len(rows), 1)], dim=1)
            nxt = next_tokens(forward(run.pending[:, None], step_mask, run.positions, run.cache), settings, generator)
            run = Running(run.cache, step_mask, run.positions + 1, nxt)
            for i, t in zip(rows, nxt.tolist()):
                out[i].append(t)
        done = torch.isin(run.pending, eos_t) | torch.tensor([len(out[i]) >= settings.max_new_tokens for i in rows],
                                                             device=device)
        if bool(done.any()):
            finished = done.tolist()
            for i, d in zip(rows, finished):
                if d:
                    yield i, out.pop(i)
            order = survivors(finished)
            keep = torch.tensor(order, device=device)
            rows = [rows[k] for k in order]
            run = run.select(keep, causal_lm.config if refill else None, settings.max_new_tokens) if rows else None


def next_token_logits(model: Any, ids: Any, mask: Any, positions: Any, cache: Any) -> Any:
    """[batch, vocab] fp32 logits after each left-padded row's last token, extending `cache`.

    The LM head runs on a contiguous [batch, hidden] copy of the last position. transformers'
    `logits_to_keep=1` hands the head a strided [batch, 1, hidden] slice of the prompt's hidden
    states, which `linear` turns into a batched matmul over a copy of the head's weight per row:
    32 rows x 49152 x 576 cost 1.86 s per prefill in bfloat16 (9 ms contiguous) and 180 ms in
    float32 (29 ms), on 2 cores. Heads that do more than a linear map take the model's forward."""
    causal_lm = causal_lm_of(model)
    head = linear_head(causal_lm)
    if head is None:
        return model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1,
                     **{cache_kwarg(causal_lm): cache}).logits[:, -1].float()
    body = causal_lm.get_decoder()
    hidden = body(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                  **{cache_kwarg(body): cache}).last_hidden_state
    return head(hidden[:, -1].contiguous()).float()


def survivors(finished: Sequence[bool]) -> list[int]:
    """Indices of the rows that go on decoding, ordered so that the fewest rows move: each finished row's
    slot below the new batch size takes a surviving row from above it (a KV cache then copies only the
    rows that moved, not the whole batch, each time a row finishes)."""
    n = len(finished) - sum(finished)
    movers = iter(i for i in range(n, len(finished)) if not finished[i])
    return [next(movers) if finished[i] else i for i in range(n)]


@dataclass(frozen=True, slots=True)
class Running:
    """The rows decoding together: their KV cache, its attention mask, and each row's pending token
    (sampled, not yet fed to the model) with its position."""

    cache: Any
    mask: Any
    positions: Any
    pending: Any

    def select(self, keep: Any, config: Any | None, reserve: int) -> "Running":
        """The rows at `keep`; with the model's config, cache columns that only departed rows used (left
        padding of the rest) are cut once they are an eighth of the width, so the width follows the rows in the
        batch, not every row that ever was (cutting copies the whole cache, so not for every column)."""
        self.cache.batch_select_indices(keep)
        mask = self.mask[keep]
        lead = int(mask.any(0).int().argmax())
        cache = self.cache
        if config is not None and lead and lead * 8 >= mask.shape[1]:
            cache = rebuilt(((x.keys[..., lead:, :], x.values[..., lead:, :]) for x in cache.layers), [cache.layers],
                            config, reserve)
            mask = mask[:, lead:]
        return Running(cache, mask, self.positions[keep], self.pending[keep])

    @staticmethod
    def merge(a: "Running | None", b: "Running", config: Any, reserve: int) -> "Running":
        """Rows of a and b in one batch: the narrower cache and mask are padded on the left."""
        import torch
        import torch.nn.functional as F

        if a is None:
            return b
        width = max(a.mask.shape[1], b.mask.shape[1])
        pa, pb = width - a.mask.shape[1], width - b.mask.shape[1]
        kv = ((torch.cat([F.pad(x.keys, (0, 0, pa, 0)), F.pad(y.keys, (0, 0, pb, 0))]),
               torch.cat([F.pad(x.values, (0, 0, pa, 0)), F.pad(y.values, (0, 0, pb, 0))]))
              for x, y in zip(a.cache.layers, b.cache.layers))
        return Running(rebuilt(kv, [a.cache.layers, b.cache.layers], config, reserve),
                       torch.cat([F.pad(a.mask, (pa, 0)), F.pad(b.mask, (pb, 0))]),
                       torch.cat([a.positions, b.positions]), torch.cat([a.pending, b.pending]))


def sliding_window(causal_lm: Any) -> int | None:
    """The smallest sliding window of the model's KV cache layers (Mistral v0.1, Gemma), None if none slides."""
    from transformers import DynamicCache

    windows = [getattr(layer, "sliding_window", None) for layer in DynamicCache(config=causal_lm.config).layers]
    return min((w for w in windows if w), default=None)


def rebuilt(kv: Iterable[tuple[Any, Any]], sources: Sequence[Sequence[Any]], config: Any, reserve: int) -> Any:
    """A decode cache (`decode_cache`) of the (keys, values) that `kv` makes layer by layer from the layers in
    `sources`, each source layer released once its replacement is stored: a merge or cut holds one cache and a
    layer more, never two caches (a 7B model's cache of 64 long rows is gigabytes)."""
    cache = decode_cache(config, reserve)
    for i, (keys, values) in enumerate(kv):
        cache.update(keys, values, i)
        for layers in sources:
            layers[i] = None
    return cache


def decode_cache(config: Any, reserve: int) -> Any:
    """A DynamicCache whose full-attention layers keep room for `reserve` more columns (`GrowingLayer`);
    sliding-window layers stay as transformers makes them."""
    from transformers import DynamicCache

    cache = DynamicCache(config=config)
    growing = growing_layer_class()
    cache.layers = [layer if getattr(layer, "is_sliding", False) else growing(reserve) for layer in cache.layers]
    return cache


@functools.cache
def growing_layer_class() -> type:
    """`GrowingLayer`, defined on first use so that importing this module does not import transformers."""
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        """A KV cache layer that writes each step's keys and values in place, into buffers with room for
        `reserve` more columns, instead of concatenating: transformers' DynamicLayer copies the whole cache at
        every decode step (on 96 UltraFeedback prompts, 16% of generation on 2 CPU cores). `keys` and `values`
        are views of the filled columns; a buffer that fills up grows by `reserve` columns more than it needs."""

        def __init__(self, reserve: int) -> None:
            super().__init__()
            self.reserve = max(1, reserve)
            self.filled = 0
            self.key_buffer = self.value_buffer = None

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            import torch

            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            end = self.filled + key_states.shape[-2]
            if self.key_buffer is None or end > self.key_buffer.shape[-2]:
                shape = (*key_states.shape[:-2], end + self.reserve, key_states.shape[-1])
                keys = torch.empty(shape, dtype=key_states.dtype, device=key_states.device)
                values = torch.empty(shape[:-1] + (value_states.shape[-1],), dtype=value_states.dtype,
                                     device=value_states.device)
                if self.filled:
                    keys[..., :self.filled, :] = self.keys
                    values[..., :self.filled, :] = self.values
                self.key_buffer, self.value_buffer = keys, values
            self.key_buffer[..., self.filled:end, :] = key_states
            self.value_buffer[..., self.filled:end, :] = value_states
            self.filled = end
            self.keys, self.values = self.key_buffer[..., :end, :], self.value_buffer[..., :end, :]
            return self.keys, self.values

        def batch_select_indices(self, indices: Any) -> None:
            """Rows `indices`, in that order: only rows whose slot changes are copied (see `survivors`)."""
            import torch

            if self.key_buffer is None:
                return
            n = len(indices)
            moved = (indices != torch.arange(n, device=indices.device)).nonzero()[:, 0]
            for buffer in (self.key_buffer, self.value_buffer):
                buffer[moved] = buffer[indices[moved]]  # the right side is gathered before any row is written
            self.key_buffer, self.value_buffer = self.key_buffer[:n], self.value_buffer[:n]
            self.keys = self.key_buffer[..., :self.filled, :]
            self.values = self.value_buffer[..., :self.filled, :]

    return GrowingLayer


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


def last_logprobs(model: Any, input_ids: Any, mask: Any) -> Any:
    """[batch, vocab] log-probabilities of the token after each right-padded row's last real token; the
    LM head runs at those positions only (all of them for heads that do more than a linear map)."""
    import torch

    causal_lm = causal_lm_of(model)
    last = mask.sum(-1) - 1
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    head = linear_head(causal_lm)
    if head is not None:
        hidden = causal_lm.get_decoder()(input_ids=input_ids, attention_mask=mask, use_cache=False).last_hidden_state
        logits = head(hidden[rows, last])
    else:
        logits = model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits[rows, last]
    return logits.float().log_softmax(-1)


def linear_head(causal_lm: Any) -> Any | None:
    """The LM head when logits are exactly head(last hidden state) and the decoder body can be called on
    its own, so the head can run at the positions that need it; None for heads that do more (soft-capping,
    scaling: Gemma 2, Cohere), which take the model's full forward."""
    cfg = causal_lm.config
    if getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None) is not None \
            or not hasattr(causal_lm, "get_decoder"):
        return None
    return causal_lm.get_output_embeddings()


def token_logprobs(logits: Any, tokens: Any) -> Any:
    """log p(token) per row of [n, vocab] logits, in fp32. log_softmax rather than x - logsumexp(x): on CPU
    its fused kernel is 5-10x faster than logsumexp, which took as long as the LM head itself (341 x 49152
    logits: 62 ms vs 333 ms, on 2 cores); values agree within 2e-5 absolute."""
    return logits.float().log_softmax(-1).gather(1, tokens[:, None])[:, 0]


def target_sums(model: Any, input_ids: Any, mask: Any, targets: Sequence[tuple[int, int]], *,
                position_ids: Any = None, cache: Any = None) -> list[float]:
    """Per row, the summed log p of the tokens at positions [start, end) given all before them
    (`targets`, one (start, end) per row; start >= 1), optionally after a KV cache of earlier tokens.

    Applies the LM head only at the positions that predict a target, in chunks, so a large
    vocabulary never materialises a [batch, length, vocab] tensor. Models whose head does more than
    a linear map (soft-capping, scaling) take the full-logits path.
    """
    import torch

    causal_lm = causal_lm_of(model)
    head = linear_head(causal_lm)
    row = torch.tensor([i for i, (s, e) in enumerate(targets) for _ in range(s, e)], device=input_ids.device)
    col = torch.tensor([t for s, e in targets for t in range(s, e)], device=input_ids.device)
    tok = input_ids[row, col]
    extra = {} if position_ids is None else {"position_ids": position_ids}
    if head is not None:
        # scoring never decodes further: no KV cache is built unless one is passed (2 GB for 16k tokens of a 7B)
        body = causal_lm.get_decoder()
        if cache is not None:
            extra[cache_kwarg(body)] = cache
        hidden = body(input_ids=input_ids, attention_mask=mask, use_cache=cache is not None, **extra).last_hidden_state
        h = hidden[row, col - 1]
        chunk = max(16, LOGITS_CHUNK_BYTES // (4 * head.weight.shape[0]))
        parts = []
        for s in range(0, h.shape[0], chunk):
            parts.append(token_logprobs(head(h[s:s + chunk]), tok[s:s + chunk]))
        token_logps = torch.cat(parts) if parts else torch.zeros(0, device=input_ids.device)
    else:
        if cache is not None:
            extra[cache_kwarg(causal_lm)] = cache
        logits = model(input_ids=input_ids, attention_mask=mask, use_cache=cache is not None, **extra).logits
        token_logps = token_logprobs(logits[row, col - 1], tok)
    sums = torch.zeros(len(targets), dtype=torch.float64, device=token_logps.device)
    sums.index_add_(0, row.to(token_logps.device), token_logps.double())
    return sums.tolist()


ProgressFn = Callable[[int], None]
