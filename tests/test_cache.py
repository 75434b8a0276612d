"""The cache: content-addressed, verified on read, atomic on write, safe with two writers."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpo_eval_core.cache import Cache, CacheWarning, make_key
from dpo_eval_core.errors import CacheError

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                           lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=5), c, max_size=4),
                           max_leaves=10)


@settings(max_examples=50, deadline=None)
@given(value=json_values)
def test_values_round_trip(tmp_path_factory, value):
    cache = Cache(tmp_path_factory.mktemp("c"))
    cache.put("ns", "k" * 64, value)
    assert cache.get("ns", "k" * 64) == value


def test_key_depends_on_every_field_and_not_on_order():
    assert make_key("g", {"a": 1, "b": 2}) == make_key("g", {"b": 2, "a": 1})
    assert make_key("g", {"a": 1, "b": 2}) != make_key("g", {"a": 1, "b": 3})
    assert make_key("g", {"a": 1}) != make_key("f", {"a": 1})


@pytest.mark.parametrize("damage", ["truncate", "garbage", "foreign-key", "bad-checksum"])
def test_damaged_entries_are_recomputed_with_one_warning(tmp_path, damage):
    cache = Cache(tmp_path)
    key = make_key("ns", {"x": 1})
    cache.put("ns", key, {"v": 1})
    path = next(Path(tmp_path).rglob(f"{key}.json"))
    raw = path.read_text()
    if damage == "truncate":
        path.write_text(raw[: len(raw) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00\xff" * 20)
    elif damage == "foreign-key":
        path.write_text(raw.replace(key, "0" * 64))
    else:
        entry = json.loads(raw)
        entry["value"] = {"v": 2}
        path.write_text(json.dumps(entry))
    with pytest.warns(CacheWarning, match="recomputing"):
        assert cache.get("ns", key) is None
    cache.put("ns", key, {"v": 1})
    assert cache.get("ns", key) == {"v": 1}


def test_failed_write_raises_and_keeps_existing_entries(tmp_path):
    cache = Cache(tmp_path)
    cache.put("ns", "a" * 64, 1)
    with mock.patch("os.replace", side_effect=OSError(28, "No space left on device")):
        with pytest.raises(CacheError, match="No space left on device"):
            cache.put("ns", "b" * 64, 2)
    assert cache.get("ns", "a" * 64) == 1 and cache.get("ns", "b" * 64) is None
    assert not list(Path(tmp_path).rglob("*.tmp"))


def _writer(root: str, n: int) -> None:
    cache = Cache(Path(root))
    for i in range(n):
        cache.put("ns", make_key("ns", {"i": i}), {"i": i, "text": "x" * 1000})


def test_two_processes_writing_the_same_keys_leave_a_readable_cache(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), 200)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    cache = Cache(tmp_path)
    assert all(cache.get("ns", make_key("ns", {"i": i})) == {"i": i, "text": "x" * 1000} for i in range(200))


def test_disabled_and_refresh_modes(tmp_path):
    Cache(tmp_path).put("ns", "a" * 64, 1)
    assert Cache(tmp_path, enabled=False).get("ns", "a" * 64) is None
    assert Cache(tmp_path, refresh=True).get("ns", "a" * 64) is None
