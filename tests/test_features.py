"""Text features equal TextDescriptives' own, text by text, including edge cases."""

from __future__ import annotations

import math

import pytest

from dpo_eval_core.cache import Cache
from dpo_eval_core.features import (
    FEATURE_NAMES,
    PARALLEL_FROM,
    FeatureSettings,
    build_pipeline,
    extract,
    feature_rows,
    processes,
)

EDGE_CASES = {
    "empty": "",
    "one-word": "Hello",
    "no-sentence-end": "this sentence just keeps going and never really ends with any punctuation at all",
    "bulleted-list": "Steps:\n- Preheat the oven.\n- Mix the flour and water.\n- Bake for 20 minutes.\n",
    "non-english": "Der schnelle braune Fuchs springt über den faulen Hund. 日本語のテキストです。🙂",
    "20000-chars": ("The quick brown fox jumps over the lazy dog while the cat watches. " * 300)[:20000],
    "plain": "Photosynthesis turns light into sugar. It happens in chloroplasts.",
}


@pytest.fixture(scope="module")
def nlp():
    return build_pipeline()


@pytest.fixture(scope="module")
def reference(nlp):
    """TextDescriptives' documented path: one doc at a time through textdescriptives.extract_df."""
    import textdescriptives as td

    out = {}
    for name, text in EDGE_CASES.items():
        row = td.extract_df(nlp(text), include_text=False).iloc[0].to_dict()
        out[name] = {k: (math.nan if v is None else float(v)) for k, v in row.items()}
    return out


def assert_rows_equal(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for k in want:
        g, w = got[k], want[k]
        assert (math.isnan(g) and math.isnan(w)) or abs(g - w) <= 1e-9, (k, g, w)


def test_feature_names_are_textdescriptives_69_columns(reference):
    for row in reference.values():
        assert set(row) == set(FEATURE_NAMES)
    assert len(set(FEATURE_NAMES)) == 69


def test_a_few_hundred_texts_are_parsed_in_a_process_per_core_and_fewer_in_one(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda _: {0, 1}, raising=False)
    assert [processes(n) for n in (1, PARALLEL_FROM - 1, PARALLEL_FROM, 10_000)] == [1, 1, 2, 2]
    monkeypatch.setattr("os.sched_getaffinity", lambda _: set(range(64)), raising=False)
    assert processes(10_000) == 4  # each worker holds a pipeline: a few are enough


@pytest.mark.parametrize("n_process", [1, 2], ids=["one-process", "two-processes"])
def test_batched_pipeline_equals_textdescriptives_on_edge_cases(nlp, reference, n_process):
    rows = extract(list(EDGE_CASES.values()), nlp, FeatureSettings(batch_size=3, n_process=n_process))
    for name, row in zip(EDGE_CASES, rows):
        assert_rows_equal(row, reference[name])


def test_cached_rows_round_trip_nan_and_skip_the_pipeline(tmp_path, nlp, reference):
    cache = Cache(tmp_path)
    texts = list(EDGE_CASES.values())
    first, computed = feature_rows(texts, cache, nlp_factory=lambda: nlp)
    assert computed == len(texts)

    def no_pipeline():
        raise AssertionError("a warm cache must not build the spaCy pipeline")

    again, computed = feature_rows(texts, cache, nlp_factory=no_pipeline)
    assert computed == 0
    for name, row in zip(EDGE_CASES, again):
        assert_rows_equal(row, reference[name])
