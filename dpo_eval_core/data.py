"""Preference pairs from files or hub datasets, in any common layout, split without leakage.

Every layout TRL documents (standard and conversational, explicit and implicit prompt) and the common hub
layouts (binarized UltraFeedback, hh-rlhf transcripts, orca, ShareGPT) are detected row by row: see LAYOUTS,
whose examples docs/data.md prints. --columns only renames fields before detection.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .errors import ConfigError, DataError
from .locate import looks_local

Message = tuple[str, str]  # (role, content)
EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet")
VALID_SPLIT_NAMES = ("valid", "validation", "test", "eval", "dev")


@dataclass(frozen=True, slots=True)
class PreferencePair:
    """One prompt (as chat messages) with a preferred and a dispreferred answer."""

    messages: tuple[Message, ...]
    """The prompt as chat turns, system first if any, ending with a user turn."""
    chosen: str
    rejected: str
    split: str
    """'train' or 'valid'."""

    @property
    def prompt(self) -> str:
        """The last user turn."""
        return self.messages[-1][1]

    @property
    def system(self) -> str | None:
        return self.messages[0][1] if self.messages[0][0] == "system" else None

    @property
    def prompt_key(self) -> str:
        """sha256 of the prompt messages: the identity used for splitting and caching."""
        return _hash(json.dumps(self.messages, ensure_ascii=False))

    @property
    def pair_id(self) -> str:
        """sha256 of prompt, chosen and rejected: identifies the pair in caches and reports."""
        return _hash(json.dumps([self.messages, self.chosen, self.rejected], ensure_ascii=False))


@dataclass(frozen=True, slots=True)
class PairSet:
    """Usable pairs plus an account of what was read and dropped."""

    pairs: tuple[PreferencePair, ...]
    source: str
    layout: str
    n_rows: int
    dropped: Mapping[str, int]
    split_mode: str
    """'own' when the dataset's splits were used, else 'hash'."""
    prompts_in_both_splits: int = 0
    """Only possible with the dataset's own splits; reported, never silently fixed."""
    truncated_by_max_samples: Mapping[str, int] = field(default_factory=dict)

    def split(self, name: str) -> tuple[PreferencePair, ...]:
        return tuple(p for p in self.pairs if p.split == name)

    def counts(self) -> dict[str, int]:
        return {"train": len(self.split("train")), "valid": len(self.split("valid"))}

    def answered(self, train: int | None, seed: int) -> list[int]:
        """Indices of the pairs whose prompts the models answer: every valid pair, and `train` train pairs
        (all when None), chosen by seeded hash so the same ones are answered in every run."""
        train_idx = sorted((i for i, p in enumerate(self.pairs) if p.split == "train"),
                           key=lambda i: _hash(f"{seed}:answer:{self.pairs[i].pair_id}"))
        keep = set(train_idx if train is None else train_idx[:train])
        return [i for i, p in enumerate(self.pairs) if p.split == "valid" or i in keep]

    def fingerprint(self) -> str:
        """sha256 of every pair and its split, in order: two runs with equal fingerprints gated the same
        pairs with the same train/valid split, so their per-pair numbers can be compared."""
        return _hash("\n".join(f"{p.pair_id} {p.split}" for p in self.pairs))


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def hash_split(prompt_key: str, valid_fraction: float, seed: int) -> str:
    """'valid' for a seeded, deterministic share of prompts; a function of the prompt alone."""
    u = int(_hash(f"{seed}:{prompt_key}")[:16], 16) / 16**16
    return "valid" if u < valid_fraction else "train"


# --------------------------------------------------------------------------- reading


def read_rows(source: str, option: str = "--data") -> dict[str, list[dict[str, Any]]]:
    """Raw rows per split name ('' when the source has no splits of its own); errors name `option`."""
    path = Path(source).expanduser()
    if not looks_local(source, EXTENSIONS):
        return _read_hub(source, option)
    if not path.is_file():
        raise DataError(f"{option} {source}: file not found. Give a path to a .jsonl, .json, .csv or .parquet "
                        f"file, or a hub dataset id such as 'org/name'.")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = _read_jsonl(path, option)
    elif suffix == ".json":
        return _read_json(path, option)
    elif suffix in (".csv", ".parquet"):
        import pandas as pd

        try:
            frame = pd.read_csv(path, keep_default_na=False) if suffix == ".csv" else pd.read_parquet(path)
        except Exception as e:  # pandas/pyarrow raise many types for unreadable files
            raise DataError(f"{option} {source}: cannot read as {suffix[1:]}: {e}") from None
        rows = frame.to_dict("records")
    else:
        raise DataError(f"{option} {source}: unknown extension '{path.suffix}'. Expected one of "
                        f"{', '.join(EXTENSIONS)}; rename the file or convert it.")
    return _split_column(rows)


def _read_jsonl(path: Path, option: str) -> list[dict[str, Any]]:
    rows = []
    try:
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{option} {path}: line {lineno} is not valid JSON ({e.msg}). "
                                    f"Fix or remove that line.") from None
                if not isinstance(obj, dict):
                    raise DataError(f"{option} {path}: line {lineno} is a {type(obj).__name__}, expected a JSON object.")
                rows.append(obj)
    except UnicodeDecodeError as e:
        raise DataError(f"{option} {path}: not UTF-8 text (byte {e.start}). Is it a binary file?") from None
    return rows


def _read_json(path: Path, option: str) -> dict[str, list[dict[str, Any]]]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(f"{option} {path}: not UTF-8 text (byte {e.start}). Is it a binary file?") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{option} {path}: not valid JSON at line {e.lineno} ({e.msg}).") from None
    if isinstance(obj, list):
        return _split_column(obj)
    if isinstance(obj, dict) and obj and all(isinstance(v, list) for v in obj.values()):
        if all(isinstance(r, dict) for v in obj.values() for r in v):  # {"train": [...], "test": [...]}
            return {str(k): list(v) for k, v in obj.items()}
        lengths = {len(v) for v in obj.values()}  # columnar {"prompt": [...], ...}
        if len(lengths) == 1:
            n = lengths.pop()
            return _split_column([{k: obj[k][i] for k in obj} for i in range(n)])
    raise DataError(f"{option} {path}: expected a list of objects, columns of equal length, or splits of objects.")


def _split_column(rows: list[Any]) -> dict[str, list[dict[str, Any]]]:
    bad = next((i for i, r in enumerate(rows) if not isinstance(r, dict)), None)
    if bad is not None:
        raise DataError(f"row {bad + 1} is a {type(rows[bad]).__name__}, expected an object with named fields.")
    if rows and all("split" in r for r in rows):
        out: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            out.setdefault(str(r["split"]), []).append({k: v for k, v in r.items() if k != "split"})
        return out
    return {"": rows}


def _read_hub(source: str, option: str) -> dict[str, list[dict[str, Any]]]:
    """A hub dataset, `ID` or `ID:CONFIG` for datasets with several configurations (allenai/ai2_arc:ARC-Easy)."""
    import datasets

    dataset_id, _, name = source.partition(":")
    try:
        loaded = datasets.load_dataset(dataset_id, name or None)
    except Exception as e:  # network, missing dataset, auth, a missing configuration: all end the same way
        raise DataError(f"{option} {source}: cannot load it as a hub dataset ({type(e).__name__}: {e}). Check the "
                        f"id and your network, or pass a local file; a dataset with several configurations needs "
                        f"one as ID:CONFIG, e.g. allenai/ai2_arc:ARC-Easy or cais/mmlu:clinical_knowledge.") from None
    return {str(split): list(rows) for split, rows in loaded.items()}


# --------------------------------------------------------------------------- layouts


@dataclass(frozen=True, slots=True)
class Layout:
    """One row shape the loader reads, detected from the row itself (no --columns needed)."""

    name: str
    used_by: str
    example: Mapping[str, Any]


def _m(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


LAYOUTS: tuple[Layout, ...] = (
    Layout("standard, explicit prompt", "TRL's standard preference layout; most prompt/chosen/rejected files",
           {"prompt": "What color is the sky?", "chosen": "Blue.", "rejected": "Green."}),
    Layout("standard, implicit prompt", "TRL's standard layout with the prompt inside both texts: the shared "
           "beginning is the prompt (split at a space)",
           {"chosen": "What color is the sky? Blue.", "rejected": "What color is the sky? Green."}),
    Layout("hh-rlhf transcripts", "Anthropic/hh-rlhf: Human:/Assistant: turns, the last assistant turn is the answer",
           {"chosen": "\n\nHuman: What color is the sky?\n\nAssistant: Blue.",
            "rejected": "\n\nHuman: What color is the sky?\n\nAssistant: Green."}),
    Layout("conversational, explicit prompt", "TRL's conversational layout: prompt turns, one assistant turn each",
           {"prompt": [_m("user", "What color is the sky?")], "chosen": [_m("assistant", "Blue.")],
            "rejected": [_m("assistant", "Green.")]}),
    Layout("conversational, implicit prompt", "TRL's conversational layout with whole conversations: the shared "
           "turns are the prompt",
           {"chosen": [_m("user", "What color is the sky?"), _m("assistant", "Blue.")],
            "rejected": [_m("user", "What color is the sky?"), _m("assistant", "Green.")]}),
    Layout("binarized UltraFeedback", "HuggingFaceH4/ultrafeedback_binarized and trl-lib sets: a prompt string "
           "and whole conversations; the conversation's turns are the prompt",
           {"prompt": "What color is the sky?",
            "chosen": [_m("user", "What color is the sky?"), _m("assistant", "Blue.")],
            "rejected": [_m("user", "What color is the sky?"), _m("assistant", "Green.")]}),
    Layout("orca", "Intel/orca_dpo_pairs: system/question/chosen/rejected; the system text goes to the chat template",
           {"system": "You are a helpful assistant.", "question": "What color is the sky?", "chosen": "Blue.",
            "rejected": "Green."}),
    Layout("sharegpt", "LLaMA-Factory's ShareGPT ranking layout: conversations of from/value turns",
           {"conversations": [{"from": "human", "value": "What color is the sky?"}],
            "chosen": {"from": "gpt", "value": "Blue."}, "rejected": {"from": "gpt", "value": "Green."}}),
)
LAYOUT_NAMES = tuple(layout.name for layout in LAYOUTS)

DROP_REASONS: Mapping[str, str] = {
    "empty": "a field the layout needs is missing or blank",
    "not_text": "a field is neither text nor a list of chat turns",
    "bad_turns": "the prompt does not end with a user turn, or an answer is not one assistant turn",
    "no_shared_prompt": "chosen and rejected do not begin with the same prompt",
    "prompt_mismatch": "the prompt column is not a user turn of the chosen/rejected conversations",
    "identical": "chosen and rejected are the same text",
    "duplicate": "the same prompt, chosen and rejected again",
}

_ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "model": "assistant",
          "bot": "assistant", "system": "system"}


def _turn(value: Any) -> Message | None:
    """{'role', 'content'} or ShareGPT {'from', 'value'} -> (role, content); None when it is not a turn."""
    if not isinstance(value, Mapping):
        return None
    role, content = (value.get("role"), value.get("content")) if "role" in value else (value.get("from"),
                                                                                      value.get("value"))
    if not isinstance(role, str) or role.lower() not in _ROLES or "content" not in value and "value" not in value:
        return None
    return _ROLES[role.lower()], content


def as_turns(value: Any) -> tuple[Message, ...] | None:
    """A list of chat turns (or one turn) -> turns; None when `value` is not turns."""
    items = [value] if isinstance(value, Mapping) else value
    if not isinstance(items, list) or not items:
        return None
    turns = [_turn(v) for v in items]
    return None if any(t is None for t in turns) else tuple(turns)  # type: ignore[misc]


_HH_TURN = {"Human:": "user", "Assistant:": "assistant", "System:": "system"}


def parse_transcript(text: str) -> tuple[Message, ...]:
    """hh-rlhf transcript -> turns; () when the text has no turn markers or text before the first one."""
    turns: list[list[str]] = []
    for block in text.split("\n\n"):
        head = next((m for m in _HH_TURN if block.startswith(m)), None)
        if head is not None:
            turns.append([_HH_TURN[head], block[len(head):].strip()])
        elif turns:
            turns[-1][1] += "\n\n" + block
        elif block.strip():
            return ()
    return tuple((r, c.strip()) for r, c in turns)


def _shared_prefix(chosen: str, rejected: str) -> tuple[str, str, str] | None:
    """TRL's implicit prompt: the common beginning of both texts, cut back to the last space so no answer
    starts mid-word; None when they share no prompt."""
    n = next((i for i, (a, b) in enumerate(zip(chosen, rejected)) if a != b), min(len(chosen), len(rejected)))
    cut = max(chosen.rfind(" ", 0, n + 1), chosen.rfind("\n", 0, n + 1))
    if cut <= 0 or not chosen[:cut].strip():
        return None
    return chosen[:cut].strip(), chosen[cut:].strip(), rejected[cut:].strip()


def _explicit(columns: Iterable[str]) -> str:
    """The prompt column of an explicit-prompt dataset ('' when the prompt is inside chosen/rejected)."""
    cols = set(columns)
    return next((c for c in ("prompt", "question", "conversations") if c in cols), "")


def _answer(value: Any) -> str | Any:
    """A completion given as text or as one assistant turn -> its text; anything else unchanged."""
    turns = as_turns(value) if not isinstance(value, str) else None
    if turns is not None and len(turns) == 1 and turns[0][0] == "assistant":
        return turns[0][1]
    return value


def _row_to_pair(row: Mapping[str, Any], prompt_column: str) -> tuple[str, tuple[Message, ...], Any, Any] | str:
    """(layout name, prompt turns, chosen, rejected), or a drop reason (a key of DROP_REASONS)."""
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if chosen is None or rejected is None:
        return "empty"
    c_turns = None if isinstance(chosen, str) else as_turns(chosen)
    r_turns = None if isinstance(rejected, str) else as_turns(rejected)
    whole = (c_turns is not None and r_turns is not None
             and any(role != "assistant" for role, _ in c_turns + r_turns))  # conversations, prompt included
    if whole:
        if c_turns[-1][0] != "assistant" or r_turns[-1][0] != "assistant":  # type: ignore[index]
            return "bad_turns"
        if c_turns[:-1] != r_turns[:-1]:  # type: ignore[index]
            return "no_shared_prompt"
        messages, chosen, rejected = c_turns[:-1], c_turns[-1][1], r_turns[-1][1]  # type: ignore[index]
        if not prompt_column:
            return "conversational, implicit prompt", messages, chosen, rejected
        prompt = row.get(prompt_column)
        if prompt is None:
            return "empty"
        given = (("user", prompt),) if isinstance(prompt, str) else as_turns(prompt)
        if given is None:
            return "not_text"
        if given != messages and not (isinstance(prompt, str) and ("user", prompt) in messages):
            return "prompt_mismatch"
        return "binarized UltraFeedback", messages, chosen, rejected
    chosen, rejected = _answer(chosen), _answer(rejected)
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        return "bad_turns" if c_turns is not None or r_turns is not None else "not_text"
    if not prompt_column:
        c, r = parse_transcript(chosen), parse_transcript(rejected)
        if c or r:
            if not c or not r or c[-1][0] != "assistant" or r[-1][0] != "assistant":
                return "bad_turns"
            if c[:-1] != r[:-1]:
                return "no_shared_prompt"
            return "hh-rlhf transcripts", c[:-1], c[-1][1], r[-1][1]
        split = _shared_prefix(chosen, rejected)
        if split is None:
            return "no_shared_prompt"
        return "standard, implicit prompt", (("user", split[0]),), split[1], split[2]
    prompt = row.get(prompt_column)
    if prompt is None:
        return "empty"
    if prompt_column == "question":
        layout, messages = "orca", (("user", prompt),)
    elif isinstance(prompt, str):
        layout, messages = "standard, explicit prompt", (("user", prompt),)
    else:
        turns = as_turns(prompt)
        if turns is None:
            return "not_text"
        layout = "sharegpt" if prompt_column == "conversations" else "conversational, explicit prompt"
        messages = turns
    system = row.get("system")
    if isinstance(system, str) and system.strip() and messages[0][0] != "system":
        messages = (("system", system),) + messages
    elif system is not None and not isinstance(system, str):
        return "not_text"
    return layout, messages, chosen, rejected


def _check_pair(messages: Sequence[Message], chosen: Any, rejected: Any) -> str | None:
    texts = [c for _, c in messages] + [chosen, rejected]
    if any(t is None for t in texts):
        return "empty"
    if any(not isinstance(t, str) for t in texts):
        return "not_text"
    if any(not t.strip() for t in texts[-2:]) or not messages or not messages[-1][1].strip():
        return "empty"
    if messages[-1][0] != "user":
        return "bad_turns"
    if chosen.strip() == rejected.strip():
        return "identical"
    return None


def _shape(value: Any) -> str:
    """How a field looks, for error messages: 'str (23 chars)', 'list of 2 turns (user, assistant)'."""
    if isinstance(value, str):
        return f"str ({len(value)} chars)"
    turns = as_turns(value) if isinstance(value, (list, Mapping)) else None
    if turns is not None:
        return f"{'list of ' if isinstance(value, list) else ''}{len(turns)} turn{'s' * (len(turns) != 1)} " \
               f"({', '.join(r for r, _ in turns)})"
    if isinstance(value, list):
        return f"list of {len(value)} {', '.join(sorted({type(v).__name__ for v in value})) or 'items'}"
    return "missing" if value is None else type(value).__name__


def _row_shape(row: Mapping[str, Any]) -> str:
    return "; ".join(f"{k}: {_shape(v)}" for k, v in row.items())


def load_pairs(source: str | None, *, columns: Sequence[tuple[str, str]] = (), split_mode: str = "auto",
               valid_fraction: float = 0.2, seed: int = 0, max_samples: int | None = None) -> PairSet:
    """Read, normalise, de-duplicate and split preference pairs; raise DataError with a fix when unusable.

    The layout is detected row by row (LAYOUTS); `columns` only renames fields first."""
    if not source:
        raise DataError("--data is not set: give a .jsonl, .json, .csv or .parquet file or a hub dataset id (the "
                        "pytest plugin gates the bundled demo pairs when it is left out).")
    raw = read_rows(source)
    renames = dict(columns)
    named = {split: [{renames.get(k, k): v for k, v in row.items()} for row in rows] for split, rows in raw.items()}
    n_rows = sum(len(rows) for rows in named.values())
    if n_rows == 0:
        raise DataError(f"--data {source}: the dataset is empty (0 rows).")
    found = sorted({k for rows in named.values() for row in rows for k in row})
    if not {"chosen", "rejected"} <= set(found):
        raise DataError(f"--data {source}: no chosen/rejected columns. Found columns: {', '.join(found)}. "
                        f"Expected one of the layouts in docs/data.md (prompt/chosen/rejected strings or chat "
                        f"turns, chosen/rejected conversations or transcripts, system/question/chosen/rejected); "
                        f"rename yours with --columns, e.g. --columns {_columns_hint(found)}")
    prompt_column = _explicit(found)

    own = split_mode != "hash" and _own_splits(named)
    if split_mode == "own" and not own:
        raise DataError(f"--split own: {source} has no train and valid splits of its own "
                        f"(found: {', '.join(repr(s) for s in named) or 'none'}). Use --split hash.")
    dropped: Counter[str] = Counter({r: 0 for r in DROP_REASONS})
    layouts: Counter[str] = Counter()
    seen: set[str] = set()
    pairs: list[PreferencePair] = []
    for split_name, rows in named.items():
        if own and own[split_name] == "ignored":
            continue
        for row in rows:
            got = _row_to_pair(row, prompt_column)
            if isinstance(got, str):
                dropped[got] += 1
                continue
            layout, messages, chosen, rejected = got
            reason = _check_pair(messages, chosen, rejected)
            if reason:
                dropped[reason] += 1
                continue
            pair = PreferencePair(messages=messages, chosen=chosen, rejected=rejected, split="")
            if pair.pair_id in seen:
                dropped["duplicate"] += 1
                continue
            seen.add(pair.pair_id)
            layouts[layout] += 1
            split = own[split_name] if own else hash_split(pair.prompt_key, valid_fraction, seed)
            pairs.append(PreferencePair(messages, chosen, rejected, split))
    if not pairs:
        detail = "; ".join(f"{k}: {v} ({DROP_REASONS[k]})" for k, v in dropped.items() if v)
        first = next(row for rows in named.values() for row in rows)
        raise DataError(f"--data {source}: none of {n_rows} rows is a usable pair (dropped {detail}). The first "
                        f"row is {{{_row_shape(first)}}}. Give each row in one of the layouts of docs/data.md "
                        f"({', '.join(LAYOUT_NAMES)}), or map your column names with --columns.")
    layout = ", ".join(f"{name} ({n})" if len(layouts) > 1 else name for name, n in layouts.most_common())
    both = 0
    if own:
        train_keys = {p.prompt_key for p in pairs if p.split == "train"}
        both = len({p.prompt_key for p in pairs if p.split == "valid"} & train_keys)
    truncated: dict[str, int] = {}
    if max_samples is not None:
        kept: list[PreferencePair] = []
        for name in ("train", "valid"):
            part = sorted((p for p in pairs if p.split == name), key=lambda p: _hash(f"{seed}:{p.pair_id}"))
            truncated[name] = max(0, len(part) - max_samples)
            kept += part[:max_samples]
        pairs = kept
    return PairSet(pairs=tuple(pairs), source=source, layout=layout, n_rows=n_rows, dropped=dict(dropped),
                   split_mode="own" if own else "hash", prompts_in_both_splits=both,
                   truncated_by_max_samples=truncated)


def _own_splits(named: Mapping[str, list]) -> dict[str, str]:
    """Map the dataset's split names to train/valid when it has both, else {}."""
    names = {n.lower(): n for n in named if n}
    train = next((names[n] for n in ("train", "train_prefs") if n in names), None)
    valid = next((names[n] for n in (*VALID_SPLIT_NAMES, "test_prefs") if n in names), None)
    if train is None or valid is None:
        return {}
    return {train: "train", valid: "valid"} | {n: "ignored" for n in named if n not in (train, valid)}


PAIR_COLUMNS = ("prompt", "chosen", "rejected", "system", "question", "conversations")


def _columns_hint(found: Sequence[str]) -> str:
    """A --columns example built from the columns the file has: text-like names first as the prompt."""
    prompt = next((c for c in found if c.lower() in ("instruction", "input", "query", "text", "q", "context")),
                  found[0])
    rest = [c for c in found if c != prompt]
    good = next((c for c in rest if any(w in c.lower() for w in ("good", "pos", "win", "prefer", "better"))), None)
    bad = next((c for c in rest if any(w in c.lower() for w in ("bad", "neg", "los", "reject", "worse"))), None)
    return f"{prompt}=prompt,{good or 'GOOD'}=chosen,{bad or 'BAD'}=rejected"


def parse_columns(spec: str, option: str = "--columns", targets: tuple[str, ...] = PAIR_COLUMNS
                  ) -> tuple[tuple[str, str], ...]:
    """'q=prompt,good=chosen,bad=rejected' -> (('q','prompt'), ...); targets are checked."""
    example = "q=prompt,good=chosen,bad=rejected" if targets == PAIR_COLUMNS else "stem=question,label=answer"
    out = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        src, eq, dst = part.partition("=")
        if not eq or not src or dst not in targets:
            raise ConfigError(option, spec, "comma-separated SOURCE=TARGET with TARGET one of "
                              + ", ".join(sorted(targets)), f"Example: {option} {example}")
        out.append((src.strip(), dst.strip()))
    return tuple(out)
