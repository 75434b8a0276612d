"""Preference pairs from files or hub datasets, in any common layout, split without leakage.

Layouts (after --columns renames):
  prompt/chosen/rejected            strings, or message lists
  system/question/chosen/rejected   orca style; the system text is kept for the chat template
  chosen/rejected only              hh-rlhf transcripts ("\\n\\nHuman: ... \\n\\nAssistant: ...")
                                    or message lists; the shared prefix is the prompt
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .errors import ConfigError, DataError
from .locate import looks_local

Message = tuple[str, str]  # (role, content)
EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet")
VALID_SPLIT_NAMES = ("valid", "validation", "test", "eval", "dev")
DROP_REASONS = ("empty", "not_text", "identical", "duplicate")


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


def _read_hub(dataset_id: str, option: str) -> dict[str, list[dict[str, Any]]]:
    import datasets

    try:
        loaded = datasets.load_dataset(dataset_id)
    except Exception as e:  # network, missing dataset, auth: all end the same way for the user
        raise DataError(f"{option} {dataset_id}: cannot load it as a hub dataset ({type(e).__name__}: {e}). "
                        f"Check the id and your network, or pass a local file.") from None
    return {str(name): list(split) for name, split in loaded.items()}


# --------------------------------------------------------------------------- layouts


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(m, dict) and "role" in m and "content" in m for m in value)


def _to_messages(value: list[dict[str, Any]]) -> tuple[Message, ...]:
    return tuple((str(m["role"]), m["content"]) for m in value)


_HH_TURN = {"Human:": "user", "Assistant:": "assistant", "System:": "system"}


def _parse_transcript(text: str) -> tuple[Message, ...]:
    """hh-rlhf transcript -> turns. Text before the first marker belongs to no turn and is refused."""
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


def _layout(columns: Iterable[str]) -> str:
    cols = set(columns)
    if {"prompt", "chosen", "rejected"} <= cols:
        return "prompt/chosen/rejected"
    if {"question", "chosen", "rejected"} <= cols:
        return "system/question/chosen/rejected"
    if {"chosen", "rejected"} <= cols:
        return "chosen/rejected transcripts"
    return ""


def _row_to_pair(row: Mapping[str, Any], layout: str) -> tuple[tuple[Message, ...], Any, Any] | str:
    """(prompt messages, chosen, rejected), or a drop reason."""
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if layout == "chosen/rejected transcripts":
        if _is_messages(chosen) and _is_messages(rejected):
            c, r = _to_messages(chosen), _to_messages(rejected)
        elif isinstance(chosen, str) and isinstance(rejected, str):
            c, r = _parse_transcript(chosen), _parse_transcript(rejected)
        else:
            return "empty" if chosen is None or rejected is None else "not_text"
        if not c or not r or c[-1][0] != "assistant" or r[-1][0] != "assistant" or c[:-1] != r[:-1]:
            return "not_text"
        return c[:-1], c[-1][1], r[-1][1]
    if layout == "system/question/chosen/rejected":
        system, question = row.get("system"), row.get("question")
        if question is None or not isinstance(question, str):
            return "empty" if question is None else "not_text"
        if system is not None and not isinstance(system, str):
            return "not_text"
        messages: tuple[Message, ...] = (("user", question),)
        if isinstance(system, str) and system.strip():
            messages = (("system", system),) + messages
    else:
        prompt = row.get("prompt")
        if _is_messages(prompt):
            messages = _to_messages(prompt)
        elif isinstance(prompt, str):
            messages = (("user", prompt),)
            system = row.get("system")
            if isinstance(system, str) and system.strip():
                messages = (("system", system),) + messages
        else:
            return "empty" if prompt is None else "not_text"
    # completions may be a one-message list in conversational datasets
    if _is_messages(chosen) and len(chosen) == 1:
        chosen = chosen[0]["content"]
    if _is_messages(rejected) and len(rejected) == 1:
        rejected = rejected[0]["content"]
    return messages, chosen, rejected


def _check_pair(messages: Sequence[Message], chosen: Any, rejected: Any) -> str | None:
    texts = [c for _, c in messages] + [chosen, rejected]
    if any(t is None for t in texts):
        return "empty"
    if any(not isinstance(t, str) for t in texts) or any(isinstance(t, float) and math.isnan(t) for t in texts):
        return "not_text"
    if not messages or messages[-1][0] != "user" or any(not t.strip() for t in texts[-2:]) \
            or not messages[-1][1].strip():
        return "empty"
    if chosen.strip() == rejected.strip():
        return "identical"
    return None


def load_pairs(source: str | None, *, columns: Sequence[tuple[str, str]] = (), split_mode: str = "auto",
               valid_fraction: float = 0.2, seed: int = 0, max_samples: int | None = None) -> PairSet:
    """Read, normalise, de-duplicate and split preference pairs; raise DataError with a fix when unusable."""
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
    layout = _layout(found)
    if not layout:
        raise DataError(f"--data {source}: no preference columns. Found columns: {', '.join(found)}. "
                        f"Expected prompt/chosen/rejected, system/question/chosen/rejected, or chosen/rejected "
                        f"transcripts. Map yours with --columns, e.g. --columns {found[0]}=prompt,...")

    own = split_mode != "hash" and _own_splits(named)
    if split_mode == "own" and not own:
        raise DataError(f"--split own: {source} has no train and valid splits of its own "
                        f"(found: {', '.join(repr(s) for s in named) or 'none'}). Use --split hash.")
    dropped: Counter[str] = Counter({r: 0 for r in DROP_REASONS})
    seen: set[str] = set()
    pairs: list[PreferencePair] = []
    for split_name, rows in named.items():
        if own and own[split_name] == "ignored":
            continue
        for row in rows:
            got = _row_to_pair(row, layout)
            if isinstance(got, str):
                dropped[got] += 1
                continue
            messages, chosen, rejected = got
            reason = _check_pair(messages, chosen, rejected)
            if reason:
                dropped[reason] += 1
                continue
            pair = PreferencePair(messages=messages, chosen=chosen, rejected=rejected, split="")
            if pair.pair_id in seen:
                dropped["duplicate"] += 1
                continue
            seen.add(pair.pair_id)
            split = own[split_name] if own else hash_split(pair.prompt_key, valid_fraction, seed)
            pairs.append(PreferencePair(messages, chosen, rejected, split))
    if not pairs:
        detail = ", ".join(f"{k}: {v}" for k, v in dropped.items() if v)
        raise DataError(f"--data {source}: none of {n_rows} rows is a usable pair (dropped {detail}).")
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


PAIR_COLUMNS = ("prompt", "chosen", "rejected", "system", "question")


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
