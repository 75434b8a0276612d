"""Preference data: every layout, every format, drop accounting, errors with a fix, a leak-free split."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from dpo_eval_core.data import DROP_REASONS, LAYOUTS, hash_split, load_pairs
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
    assert {k: v for k, v in ps.dropped.items() if v} == {"empty": 2, "not_text": 1, "identical": 1, "duplicate": 1}
    assert set(ps.dropped) == set(DROP_REASONS)


def m(role, content):
    return {"role": role, "content": content}


@pytest.mark.parametrize("row,reason", [
    pytest.param({"chosen": [m("user", "Q"), m("assistant", "A")], "rejected": [m("user", "P"), m("assistant", "B")]},
                 "no_shared_prompt", id="conversations-with-different-prompts"),
    pytest.param({"prompt": "Q", "chosen": [m("user", "other"), m("assistant", "A")],
                  "rejected": [m("user", "other"), m("assistant", "B")]}, "prompt_mismatch", id="prompt-not-in-turns"),
    pytest.param({"prompt": [m("assistant", "Q")], "chosen": "A", "rejected": "B"}, "bad_turns",
                 id="prompt-ends-with-assistant"),
    pytest.param({"chosen": [m("user", "Q"), m("user", "A")], "rejected": [m("user", "Q"), m("user", "B")]},
                 "bad_turns", id="answer-not-an-assistant-turn"),
    pytest.param({"chosen": "Blue.", "rejected": "Green."}, "no_shared_prompt", id="implicit-without-a-prompt"),
    pytest.param({"prompt": "Q", "chosen": {"a": 1}, "rejected": "B"}, "not_text", id="dict-answer"),
])
def test_each_drop_reason_is_named(tmp_path, row, reason):
    with pytest.raises(DataError, match=f"{reason}: 1 \\({DROP_REASONS[reason]}\\)"):
        load_pairs(write_jsonl(tmp_path / "d.jsonl", [row]))


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda layout: layout.name.replace(", ", "-").replace(" ", "-"))
def test_every_layout_reads_its_first_row(tmp_path, layout):
    """docs/data.md prints these rows: each must load as the same pair, detected as its own layout."""
    ps = load_pairs(write_jsonl(tmp_path / "d.jsonl", [dict(layout.example)]))
    (pair,) = ps.pairs
    assert ps.layout == layout.name
    assert (pair.prompt, pair.chosen, pair.rejected) == ("What color is the sky?", "Blue.", "Green.")


def test_binarized_ultrafeedback_rows_load_without_columns(tmp_path):
    """The layout a new user's data was refused in: a prompt string and [user, assistant] conversations."""
    rows = [{"prompt": f"Q{i}?", "prompt_id": str(i), "score_chosen": 8.0, "score_rejected": 3.0,
             "chosen": [m("user", f"Q{i}?"), m("assistant", f"Good {i}.")],
             "rejected": [m("user", f"Q{i}?"), m("assistant", f"Bad {i}.")]} for i in range(40)]
    ps = load_pairs(write_jsonl(tmp_path / "uf.jsonl", rows))
    assert len(ps.pairs) == 40 and ps.layout == "binarized UltraFeedback"
    assert {(p.messages, p.chosen) for p in ps.pairs} == {((("user", f"Q{i}?"),), f"Good {i}.") for i in range(40)}


def test_mixed_layouts_are_counted(tmp_path):
    rows = [dict(LAYOUTS[0].example), {"prompt": "Q?", "chosen": [m("user", "Q?"), m("assistant", "A")],
                                       "rejected": [m("user", "Q?"), m("assistant", "B")]}]
    assert load_pairs(write_jsonl(tmp_path / "d.jsonl", rows)).layout == \
        "standard, explicit prompt (1), binarized UltraFeedback (1)"


def test_nothing_usable_names_the_rows_shape_and_the_layouts(tmp_path):
    rows = [{"prompt": "Q", "chosen": [1, 2], "rejected": [3]}]
    with pytest.raises(DataError) as info:
        load_pairs(write_jsonl(tmp_path / "d.jsonl", rows))
    text = str(info.value)
    assert "prompt: str (1 chars); chosen: list of 2 int; rejected: list of 1 int" in text
    assert all(layout.name in text for layout in LAYOUTS)


# Texts every layout can carry exactly: stripped, no blank lines, no turn markers.
_text = st.text(st.characters(whitelist_categories=("Lu", "Ll", "Nd"), whitelist_characters=" .?"),
                min_size=1, max_size=20).map(str.strip).filter(bool)


def _render(layout: str, system, history, user, chosen, rejected):
    """One pair in one layout, or None when the layout cannot carry it."""
    turns = ([m("system", system)] if system else []) + [m(r, c) for r, c in history] + [m("user", user)]
    single = not history
    if layout == "standard, explicit prompt" and single:
        return {"prompt": user, "chosen": chosen, "rejected": rejected} | ({"system": system} if system else {})
    if layout == "standard, implicit prompt" and single and not system and chosen[0] != rejected[0]:
        return {"chosen": f"{user} {chosen}", "rejected": f"{user} {rejected}"}
    if layout == "hh-rlhf transcripts":
        names = {"system": "System", "user": "Human", "assistant": "Assistant"}
        text = "".join(f"\n\n{names[t['role']]}: {t['content']}" for t in turns)
        return {"chosen": f"{text}\n\nAssistant: {chosen}", "rejected": f"{text}\n\nAssistant: {rejected}"}
    if layout == "conversational, explicit prompt":
        return {"prompt": turns, "chosen": [m("assistant", chosen)], "rejected": [m("assistant", rejected)]}
    if layout == "conversational, implicit prompt":
        return {"chosen": turns + [m("assistant", chosen)], "rejected": turns + [m("assistant", rejected)]}
    if layout == "binarized UltraFeedback":
        return {"prompt": user, "chosen": turns + [m("assistant", chosen)],
                "rejected": turns + [m("assistant", rejected)]}
    if layout == "orca" and single:
        return {"system": system or "", "question": user, "chosen": chosen, "rejected": rejected}
    if layout == "sharegpt":
        names = {"system": "system", "user": "human", "assistant": "gpt"}
        return {"conversations": [{"from": names[t["role"]], "value": t["content"]} for t in turns],
                "chosen": {"from": "gpt", "value": chosen}, "rejected": {"from": "gpt", "value": rejected}}
    return None


@settings(max_examples=60, deadline=None)
@given(system=st.none() | _text, history=st.lists(st.tuples(_text, _text), max_size=2), user=_text,
       chosen=_text, rejected=_text)
def test_every_layout_of_the_same_pair_yields_the_same_pair(tmp_path_factory, system, history, user, chosen,
                                                           rejected):
    assume(chosen != rejected)
    history = [(r, c) for q, a in history for r, c in (("user", q), ("assistant", a))]
    expected = (((("system", system),) if system else ()) + tuple(history) + (("user", user),), chosen, rejected)
    folder = tmp_path_factory.mktemp("layouts")
    read = 0
    for layout in LAYOUTS:
        row = _render(layout.name, system, history, user, chosen, rejected)
        if row is None:
            continue
        ps = load_pairs(write_jsonl(folder / f"{read}.jsonl", [row]))
        assert ps.layout == layout.name
        assert (ps.pairs[0].messages, ps.pairs[0].chosen, ps.pairs[0].rejected) == expected, layout.name
        read += 1
    assert read >= 4  # the conversational, hh-rlhf, UltraFeedback and ShareGPT layouts carry every pair


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


def test_a_hub_id_may_name_its_configuration(monkeypatch):
    """cais/mmlu and allenai/ai2_arc have several configurations: ID:CONFIG picks one (no hub at test time)."""
    import datasets

    asked = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *args: asked.append(args) or {"train": [ROWS[0]]})
    load_pairs("org/prefs:clean")
    load_pairs("org/prefs")
    assert asked == [("org/prefs", "clean"), ("org/prefs", None)]
