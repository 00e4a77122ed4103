"""The serving parts alone: sliding-window rate limits (fake clock), key files, the query log, input decoding."""

from __future__ import annotations

import json
import math
import sqlite3

import pytest
import torch

from rfd.serve import KeyRing, QueryLog, ServeError, decode_images, encode_float32, encode_png, load_keys
from rfd.serve.keys import key_digest
from rfd.serve.ratelimit import RateLimiter, SlidingWindow

# -- rate limits ----------------------------------------------------------------------------------------------


def test_sliding_window_is_exact():
    w = SlidingWindow(5, 60.0)
    assert w.wait(3, 0.0) == 0.0
    w.add(3, 0.0)
    assert w.wait(3, 1.0) == pytest.approx(59.0)  # the 3 images of t=0 must leave first
    assert w.wait(2, 1.0) == 0.0
    w.add(2, 10.0)
    assert w.wait(1, 10.0) == pytest.approx(50.0)
    assert w.wait(3, 10.0) == pytest.approx(50.0)  # the t=0 request leaving (at 60) frees enough
    assert w.wait(4, 10.0) == pytest.approx(60.0)  # 4 need both requests gone: the t=10 one leaves at 70
    assert math.isinf(w.wait(6, 10.0))  # more than the window holds never fits
    assert w.wait(3, 60.0) == 0.0  # at t=60 the first request has left the window
    assert w.wait(4, 60.0) == pytest.approx(10.0)


def test_rate_limiter_uses_the_strictest_window_per_client():
    rl = RateLimiter()
    limits = {"per_second": 10, "per_minute": 12}
    assert rl.check("a", limits, 10, 0.0).wait == 0.0
    rl.add("a", limits, 10, 0.0)
    d = rl.check("a", limits, 5, 2.0)  # the second window is free again, the minute is not
    assert d.window == "per_minute" and d.limit == 12 and d.wait == pytest.approx(58.0)
    d = rl.check("a", limits, 5, 0.5)
    assert d.window == "per_minute"  # both refuse; the longer wait decides
    assert rl.check("b", limits, 10, 0.5).wait == 0.0  # other clients have their own windows
    assert rl.check("a", {"per_second": None, "per_minute": None}, 1000, 0.5).wait == 0.0


def test_a_reservation_taken_back_leaves_the_window():
    w = SlidingWindow(5, 60.0)
    w.add(3, 0.0)
    w.add(2, 1.0)
    assert w.wait(1, 2.0) > 0
    w.remove(2, 1.0)  # a reserved request that was never answered
    assert w.wait(2, 2.0) == 0.0 and w.wait(3, 2.0) > 0
    w.remove(3, 0.0)
    w.remove(3, 0.0)  # gone already: nothing more to take back
    assert w.wait(5, 2.0) == 0.0


# -- key files ------------------------------------------------------------------------------------------------


def test_key_file_yaml_and_json(tmp_path):
    spec = {"keys": {"sk-a": {"name": "alice", "budget": 10, "per_second": 2},
                     "sk-b": {"name": "bob", "budget": None, "per_minute": 60}}}
    (tmp_path / "k.json").write_text(json.dumps(spec))
    (tmp_path / "k.yaml").write_text("keys:\n  sk-a: {name: alice, budget: 10, per_second: 2}\n"
                                     "  sk-b:\n    name: bob\n    budget: null\n    per_minute: 60\n")
    for path in ("k.json", "k.yaml"):
        ring = load_keys(tmp_path / path)
        assert len(ring) == 2
        a = ring.lookup("sk-a")
        assert a is not None and a.name == "alice" and a.budget == 10 and a.limits() == {"per_second": 2,
                                                                                          "per_minute": None}
        assert a.digest == key_digest("sk-a") and "sk-a" not in a.digest
        assert ring.lookup("sk-b").budget is None  # type: ignore[union-attr]
        assert ring.lookup("sk-c") is None


@pytest.mark.parametrize("data,message", [
    ({"keys": {"k": {"name": "a", "budgett": 1}}}, "unknown settings"),
    ({"keys": {"k": {"budget": 1}}}, "missing 'name'"),
    ({"keys": {"k": {"name": "a", "budget": 0}}}, "budget must be a positive integer"),
    ({"keys": {"k": {"name": "a", "budget": "10"}}}, "budget must be a positive integer"),
    ({"keys": {"k": {"name": "a", "per_second": True}}}, "per_second must be a positive integer"),
    ({"keys": {"k": {"name": "a"}, "k2": {"name": "a"}}}, "share the name"),
    ({"keys": {}}, "must map each API key"),
    ({"keys": {"k": "alice"}}, "settings must be a mapping"),
    ({"users": {}}, "single entry 'keys'"),
    ([1, 2], "single entry 'keys'"),
])
def test_key_file_errors(data, message):  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        KeyRing.from_mapping(data)


def test_key_file_not_found_or_unparsable(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_keys(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("keys: [unclosed")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_keys(tmp_path / "bad.yaml")


# -- query log ------------------------------------------------------------------------------------------------


def test_query_log_persists_totals_and_classes(tmp_path):
    db = tmp_path / "log.sqlite"
    log = QueryLog(db)
    log.record("alice", "abc", torch.tensor([3, 1, 4]), "scores", when=100.0)
    log.record("bob", "def", torch.tensor([0]), "label")
    log.record("alice", "abc", torch.tensor([9, 2]), "scores")
    log.close()
    log = QueryLog(db)
    assert log.totals() == {"alice": 5, "bob": 1}
    recs = log.records("alice")
    assert [r.classes for r in recs] == [(3, 1, 4), (9, 2)] and recs[0].time == 100.0
    assert [r.key_name for r in log.records()] == ["alice", "bob", "alice"]
    log.close()


def test_query_log_commits_a_batch_of_rows_all_or_nothing(tmp_path):
    from rfd.serve.querylog import LogEntry

    log = QueryLog(tmp_path / "log.sqlite")
    ids = log.record_many([LogEntry("alice", "abc", torch.tensor([1, 2]), "logits"),
                           LogEntry("bob", "def", torch.tensor([0]), "logits")], when=5.0)
    assert len(ids) == 2 and ids[1] == ids[0] + 1
    with pytest.raises(sqlite3.IntegrityError):  # the second row breaks a constraint (no images): neither is kept
        log.record_many([LogEntry("alice", "abc", torch.tensor([3]), "logits"),
                         LogEntry("bob", "def", torch.tensor([], dtype=torch.int64), "logits")])
    assert log.totals() == {"alice": 2, "bob": 1}
    assert [(r.key_name, r.classes, r.time) for r in log.records()] == [("alice", (1, 2), 5.0), ("bob", (0,), 5.0)]
    log.close()


def test_query_log_refuses_foreign_files(tmp_path):
    (tmp_path / "junk.sqlite").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ValueError, match="not a usable SQLite query log"):
        QueryLog(tmp_path / "junk.sqlite")
    con = sqlite3.connect(tmp_path / "future.sqlite")
    con.execute("PRAGMA user_version = 7")
    con.close()
    with pytest.raises(ValueError, match="schema version 7"):
        QueryLog(tmp_path / "future.sqlite")


# -- decoding -------------------------------------------------------------------------------------------------


def test_float32_and_png_round_trips():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 5, 6, generator=g)
    assert torch.equal(decode_images(json.dumps(encode_float32(x)).encode(), (1, 5, 6), 8), x)
    x8 = torch.randint(0, 256, (2, 3, 5, 6), generator=g).float() / 255  # exactly representable in 8 bits
    assert torch.equal(decode_images(json.dumps(encode_png(x8)).encode(), (3, 5, 6), 8), x8)
    with pytest.raises(ServeError) as err:
        decode_images(json.dumps(encode_png(x8)).encode(), (1, 5, 6), 8)
    assert err.value.status == 422 and "mode 'RGB'" in err.value.detail
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        encode_png(x8 + 1)
