"""Preference data: every layout, every format, drop accounting, errors with a fix, a leak-free split."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpo_eval_core.data import hash_split, load_pairs
from dpo_eval_core.errors import DataError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


ROWS = [{"prompt": f"Question {i}?", "chosen": f"Good answer {i}.", "rejected": f"Bad answer {i}."} for i in range(20)]


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet"])
def test_every_file_format_gives_the_same_pairs(tmp_path, fmt):
    path = tmp_path / f"d.{fmt}"
    if fmt == "jsonl":
        write_jsonl(path, ROWS)
    elif fmt == "json":
        path.write_text(json.dumps(ROWS))
    elif fmt == "csv":
        pd.DataFrame(ROWS).to_csv(path, index=False)
    else:
        pd.DataFrame(ROWS).to_parquet(path)
    ps = load_pairs(str(path))
    assert sorted((p.prompt, p.chosen, p.rejected) for p in ps.pairs) == sorted(
        (r["prompt"], r["chosen"], r["rejected"]) for r in ROWS)


def test_orca_layout_keeps_the_system_text(tmp_path):
    path = write_jsonl(tmp_path / "o.jsonl", [{"system": "Be terse.", "question": "Why?", "chosen": "Because.",
                                               "rejected": "Well, um."}])
    (pair,) = load_pairs(path).pairs
    assert pair.messages == (("system", "Be terse."), ("user", "Why?"))
    assert (pair.chosen, pair.rejected) == ("Because.", "Well, um.")


def test_hh_transcripts_split_at_the_last_assistant_turn(tmp_path):
    prefix = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: What is 2+2?"
    path = write_jsonl(tmp_path / "hh.jsonl", [{"chosen": prefix + "\n\nAssistant: 4.",
                                                "rejected": prefix + "\n\nAssistant: Five, probably."}])
    (pair,) = load_pairs(path).pairs
    assert pair.messages == (("user", "Hi there"), ("assistant", "Hello!"), ("user", "What is 2+2?"))
    assert (pair.chosen, pair.rejected) == ("4.", "Five, probably.")


def test_message_lists_share_their_prompt_prefix(tmp_path):
    prompt = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q?"}]
    path = write_jsonl(tmp_path / "m.jsonl", [{
        "chosen": prompt + [{"role": "assistant", "content": "A."}],
        "rejected": prompt + [{"role": "assistant", "content": "B."}]}])
    (pair,) = load_pairs(path).pairs
    assert pair.messages == (("system", "S"), ("user", "Q?")) and (pair.chosen, pair.rejected) == ("A.", "B.")


def test_prompt_as_messages_with_one_message_completions(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{
        "prompt": [{"role": "user", "content": "Q?"}],
        "chosen": [{"role": "assistant", "content": "A."}], "rejected": [{"role": "assistant", "content": "B."}]}])
    (pair,) = load_pairs(path).pairs
    assert (pair.prompt, pair.chosen, pair.rejected) == ("Q?", "A.", "B.")


def test_columns_option_maps_other_names(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"q": "Q?", "good": "A.", "bad": "B."}])
    (pair,) = load_pairs(path, columns=(("q", "prompt"), ("good", "chosen"), ("bad", "rejected"))).pairs
    assert (pair.prompt, pair.chosen, pair.rejected) == ("Q?", "A.", "B.")


def test_dropped_rows_are_counted_by_reason(tmp_path):
    rows = ROWS[:3] + [
        {"prompt": "", "chosen": "a", "rejected": "b"},          # empty
        {"prompt": "p", "chosen": None, "rejected": "b"},        # empty (null)
        {"prompt": "p", "chosen": 3, "rejected": "b"},           # not text
        {"prompt": "p", "chosen": "same", "rejected": "same"},   # identical
        ROWS[0],                                                 # duplicate
    ]
    ps = load_pairs(write_jsonl(tmp_path / "d.jsonl", rows))
    assert len(ps.pairs) == 3
    assert ps.dropped == {"empty": 2, "not_text": 1, "identical": 1, "duplicate": 1}


def test_dataset_own_split_is_used_and_leaks_are_reported(tmp_path):
    rows = [dict(r, split="train") for r in ROWS[:10]] + [dict(r, chosen=r["chosen"] + "!", split="test") for r in ROWS[8:12]]
    ps = load_pairs(write_jsonl(tmp_path / "s.jsonl", rows))
    assert ps.split_mode == "own" and ps.counts() == {"train": 10, "valid": 4}
    assert ps.prompts_in_both_splits == 2


def test_max_samples_caps_each_split_deterministically(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    a, b = load_pairs(path, max_samples=2), load_pairs(path, max_samples=2)
    assert a.pairs == b.pairs and all(n <= 2 for n in a.counts().values())


@pytest.mark.parametrize("name,rows,fragment", [
    ("missing-columns", [{"q": "x", "a": "y"}], "Found columns: a, q"),
    ("empty-dataset", [], "empty"),
    ("nothing-usable", [{"prompt": "p", "chosen": "s", "rejected": "s"}], "identical: 1"),
], ids=lambda x: x if isinstance(x, str) and "-" in x else "")
def test_unusable_data_names_the_problem(tmp_path, name, rows, fragment):
    with pytest.raises(DataError, match=fragment):
        load_pairs(write_jsonl(tmp_path / f"{name}.jsonl", rows))


def test_missing_columns_suggest_the_columns_option(tmp_path):
    with pytest.raises(DataError, match="--columns"):
        load_pairs(write_jsonl(tmp_path / "x.jsonl", [{"q": "x", "a": "y"}]))


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_pairs(str(tmp_path / "nope.jsonl"))
    (tmp_path / "d.txt").write_text("hi")
    with pytest.raises(DataError, match="unknown extension '.txt'"):
        load_pairs(str(tmp_path / "d.txt"))


def test_malformed_jsonl_line_is_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n{not json\n")
    with pytest.raises(DataError, match="line 2"):
        load_pairs(str(path))


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared/data is not beside this checkout")
@pytest.mark.parametrize("name", ["ultrafeedback_pairs.jsonl", "dpo_en_demo.jsonl"])
def test_shared_files_load_every_row(name):
    rows = [json.loads(line) for line in (SHARED / name).read_text(encoding="utf-8").splitlines()]
    ps = load_pairs(str(SHARED / name))
    got = {(p.prompt, p.chosen, p.rejected) for p in ps.pairs}
    assert got == {(r["prompt"], r["chosen"], r["rejected"]) for r in rows}
    assert len(ps.pairs) + ps.dropped["duplicate"] == len(rows)  # dpo_en_demo has 5 upstream duplicates


@settings(max_examples=200, deadline=None)
@given(prompts=st.lists(st.text(min_size=1, max_size=30), min_size=1, max_size=40),
       fraction=st.floats(0.05, 0.95), seed=st.integers(0, 2**31))
def test_hash_split_is_deterministic_and_a_function_of_the_prompt(prompts, fraction, seed):
    first = [hash_split(p, fraction, seed) for p in prompts]
    assert first == [hash_split(p, fraction, seed) for p in prompts]
    by_prompt: dict[str, set[str]] = {}
    for p, s in zip(prompts, first):
        by_prompt.setdefault(p, set()).add(s)
    assert all(len(s) == 1 for s in by_prompt.values())


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 15), repeats=st.integers(1, 3), seed=st.integers(0, 1000))
def test_no_prompt_lands_in_both_splits(tmp_path_factory, n, repeats, seed):
    rows = [{"prompt": f"P{i}", "chosen": f"c{i}-{k}", "rejected": f"r{i}-{k}"} for i in range(n)
            for k in range(repeats)]
    ps = load_pairs(write_jsonl(tmp_path_factory.mktemp("h") / "d.jsonl", rows), seed=seed, valid_fraction=0.3)
    train = {p.prompt for p in ps.split("train")}
    assert not train & {p.prompt for p in ps.split("valid")}
