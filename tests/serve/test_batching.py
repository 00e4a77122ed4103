"""Dynamic batching in the server: coalesced requests are answered, charged, refused and logged exactly as one
request at a time would be, with the detector in front, and batching off replays today's noise draw for draw.

No test depends on timing: a coalesced step is forced by a wait far longer than any test (60 s) and a
``batch_max_rows`` equal to the rows the test sends, so the step closes exactly when its last request arrives
(or when the service is closed, which runs what is queued at once)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import torch
from torch import nn

from rfd.defenses import DefenseSpec, defend
from rfd.detect.build import build_detector
from rfd.serve import (
    BackgroundServer,
    KeyRing,
    ModelInfo,
    PredictionService,
    QueryLog,
    ServeConfig,
    ServeError,
    create_app,
    encode_float32,
)
from tests.helpers.models import SERVED_CLASSES as K
from tests.helpers.models import SERVED_SHAPE as SHAPE
from tests.helpers.models import served_mlp

KEYS = {"key-alice": {"name": "alice", "budget": 10}, "key-bob": {"name": "bob"}, "key-carol": {"name": "carol"},
        "key-slow": {"name": "slow", "per_minute": 5}}
RING = KeyRing.from_mapping({"keys": KEYS})
ALICE, BOB, CAROL, SLOW = (RING.lookup(s) for s in ("key-alice", "key-bob", "key-carol", "key-slow"))
LONG_MS = 60_000.0  # longer than any test: a step closes on its row count, never on the clock
DETECTOR = "blacklight:window=8,match=20"  # as in test_detector: 8x8 images, one shared image flags
Make = Callable[..., PredictionService]


def images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Make]:
    """make(name, model=..., batching=..., max_rows=..., wait_ms=..., detector=...) -> a service on its own log;
    every one is closed at the end."""
    made: list[PredictionService] = []

    def build(name: str, *, model: nn.Module | None = None, batching: bool = True, max_rows: int = 256,
              wait_ms: float = LONG_MS, detector: str | None = None) -> PredictionService:
        spec = DefenseSpec(family="none")
        info = ModelInfo(name="tiny", input_shape=SHAPE, num_classes=K, defense=spec.to_dict())
        config = ServeConfig(max_batch=16, batching=batching, batch_wait_ms=wait_ms, batch_max_rows=max_rows)
        svc = PredictionService(model if model is not None else defend(served_mlp(), spec), info=info, keys=RING,
                                log=QueryLog(tmp_path / f"{name}.sqlite"), config=config, clock=lambda: 100.0,
                                detector=None if detector is None else build_detector(detector, seed=5))
        made.append(svc)
        return svc

    yield build
    for svc in made:
        svc.close()  # a second close (after a test's own) does nothing


def _log(svc: PredictionService) -> dict[str, list[tuple[int, tuple[int, ...]]]]:
    """{key name: [(n_images, classes), ...] in log order} read back from the service's file."""
    log = QueryLog(svc.log.path)
    try:
        out: dict[str, list[tuple[int, tuple[int, ...]]]] = {}
        for r in log.records():
            out.setdefault(r.key_name, []).append((r.n_images, r.classes))
        return out
    finally:
        log.close()


REQUESTS = [(ALICE, 3, 0), (BOB, 2, 1), (CAROL, 4, 2), (ALICE, 1, 3), (BOB, 5, 4)]  # 15 rows in all


def test_coalesced_requests_from_several_keys_are_answered_as_one_at_a_time(make: Make) -> None:
    batched = make("batched", max_rows=15)
    alone = make("alone", batching=False)
    model = served_mlp()
    answers: dict[int, dict] = {}
    barrier = threading.Barrier(len(REQUESTS))

    def client(i: int) -> None:
        key, n, seed = REQUESTS[i]
        barrier.wait()  # all at once: they share one step whatever their order
        answers[i] = batched.render(batched.submit(key, images(n, seed)).result(timeout=30))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(REQUESTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(answers) == len(REQUESTS)
    stats = batched.stats()
    assert stats["forwards"] == 1 and stats["rows"] == 15 and stats["requests"] == 5  # one coalesced forward
    for i, (key, n, seed) in enumerate(REQUESTS):
        x = images(n, seed)
        ref = alone.predict(key, x)
        got = answers[i]
        assert got["n"] == n and got["labels"] == ref["labels"] == model(x).argmax(1).tolist()
        # the same rows up to float rounding (a batch of 15 may block its matmuls differently from one of n)
        assert torch.allclose(torch.tensor(got["scores"]), torch.tensor(ref["scores"]), atol=1e-6)
    for key in (ALICE, BOB, CAROL):
        assert batched.usage(key) == alone.usage(key)  # same charges
    assert batched.usage(ALICE)["used"] == 4 and batched.usage(BOB)["used"] == 7
    got_log, ref_log = _log(batched), _log(alone)
    assert {k: sorted(v) for k, v in got_log.items()} == {k: sorted(v) for k, v in ref_log.items()}
    assert sum(len(v) for v in got_log.values()) == 5  # one row per request


def test_a_request_refused_for_budget_or_rate_is_not_in_the_forward_nor_charged(make: Make) -> None:
    svc = make("budget", max_rows=10)
    first = svc.submit(ALICE, images(6, 0))  # admitted: 6 of alice's 10 reserved
    with pytest.raises(ServeError) as err:
        svc.submit(ALICE, images(6, 1))  # the 6 in flight count: 6 + 6 > 10
    assert err.value.status == 403 and "6 of 10 images used, 4 left" in err.value.detail
    slow = svc.submit(SLOW, images(3, 2))  # 3 of 5 per minute reserved
    with pytest.raises(ServeError) as err:
        svc.submit(SLOW, images(3, 3))
    assert err.value.status == 429
    assert svc.usage(ALICE)["used"] == 0  # nothing charged before the forward
    last = svc.submit(BOB, images(1, 4))  # 6 + 3 + 1 = 10 rows: the step runs now
    assert len(first.result(timeout=30).logits) == 6 and len(slow.result(timeout=30).logits) == 3
    assert len(last.result(timeout=30).logits) == 1
    stats = svc.stats()
    assert stats["forwards"] == 1 and stats["rows"] == 10  # the refused requests' 9 images were never forwarded
    assert svc.usage(ALICE)["used"] == 6 and svc.usage(SLOW)["used"] == 3 and svc.usage(BOB)["used"] == 1
    log = _log(svc)
    assert [n for n, _ in log["alice"]] == [6] and [n for n, _ in log["slow"]] == [3]  # refusals are not logged
    fits = svc.submit(ALICE, images(4, 5))  # exactly what is left passes
    svc.close()  # runs what is queued at once
    assert fits.result(timeout=30).usage["used"] == 10


class Broken(nn.Module):
    """A model whose forward fails (a bug in the served model)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("broken model")


def test_a_failed_step_charges_nothing_and_gives_the_reservations_back(make: Make) -> None:
    svc = make("broken", model=Broken(), max_rows=11)
    a, s = svc.submit(ALICE, images(6, 0)), svc.submit(SLOW, images(5, 1))
    for f in (a, s):
        with pytest.raises(RuntimeError, match="broken model"):
            f.result(timeout=30)
    assert svc.usage(ALICE)["used"] == 0 and svc.usage(SLOW)["used"] == 0
    assert _log(svc) == {}
    # unanswered, so not held against the key: 6 more of alice's 10 and 5 more of slow's 5 per minute pass again
    again = (svc.submit(ALICE, images(6, 2)), svc.submit(SLOW, images(5, 3)))
    for f in again:
        with pytest.raises(RuntimeError):
            f.result(timeout=30)


def test_detector_screens_each_keys_images_in_order_within_a_step(make: Make) -> None:
    a, b = images(1, 10), images(1, 11)
    sequence = [(ALICE, a), (ALICE, torch.cat([a, b])), (BOB, a)]  # 4 rows: one step
    batched = make("det-batched", max_rows=4, detector=DETECTOR)
    alone = make("det-alone", batching=False, detector=DETECTOR)
    futures = [batched.submit(k, x) for k, x in sequence]
    got = [batched.render(f.result(timeout=30)) for f in futures]
    ref = [alone.predict(k, x) for k, x in sequence]
    assert [g["flagged"] for g in got] == [r["flagged"] for r in ref] == [[False], [True, False], [False]]
    assert got[1]["rejected"] == [True, False] and got[1]["labels"][0] == -1 and got[1]["scores"][0] is None
    assert [g["labels"] for g in got] == [r["labels"] for r in ref]
    assert batched.stats()["rows"] == 3  # the refused image was not forwarded
    assert batched.usage(ALICE) == alone.usage(ALICE) and batched.usage(ALICE)["flagged"] == 1
    assert batched.usage(ALICE)["used"] == 3  # the refused image is charged, as without batching
    assert _log(batched) == _log(alone)


def test_a_ban_inside_a_step_refuses_the_keys_later_requests_uncharged(make: Make) -> None:
    a, b, c, d = (images(1, s) for s in (20, 21, 22, 23))
    svc = make("ban", max_rows=5, detector=DETECTOR + ",action=ban")
    futures = [svc.submit(ALICE, a), svc.submit(ALICE, torch.cat([a, b])), svc.submit(ALICE, c),
               svc.submit(BOB, d)]  # 1 + 2 + 1 + 1 rows
    assert futures[0].result(timeout=30).refused.tolist() == [False]
    banned_by = futures[1].result(timeout=30)
    assert banned_by.refused.tolist() == [True, True] and banned_by.usage["banned"] is True
    with pytest.raises(ServeError) as err:  # queued behind the ban in the same step
        futures[2].result(timeout=30)
    assert err.value.status == 403 and err.value.extra["banned"] is True
    assert futures[3].result(timeout=30).answered.tolist() == [True]  # other keys are served
    assert svc.usage(ALICE)["used"] == 3 and svc.stats()["rows"] == 2  # a and d forwarded; c neither nor charged
    with pytest.raises(ServeError) as err:
        svc.submit(ALICE, d)
    assert err.value.status == 403
    log = _log(svc)
    assert [n for n, _ in log["alice"]] == [1, 2] and [n for n, _ in log["bob"]] == [1]
    reread = QueryLog(svc.log.path)
    assert reread.bans() == {"alice"} and reread.history("alice") is None  # the ban went in with its log row
    reread.close()


def test_batching_off_replays_the_seeded_noise_draw_for_draw(make: Make) -> None:
    spec = DefenseSpec(family="feature", sigma=0.5)
    xs = [images(n, seed) for seed, n in enumerate((3, 1, 4, 2))]
    reference = defend(served_mlp(), spec)  # the server before batching: the k-th request gets the k-th draws
    with torch.no_grad():
        want = [reference(x) for x in xs]
    off = make("off", model=defend(served_mlp(), spec), batching=False)
    one_by_one = make("one-by-one", model=defend(served_mlp(), spec), wait_ms=0.0)  # each alone in its step
    for svc in (off, one_by_one):
        for x, w in zip(xs, want):
            assert torch.equal(torch.tensor(svc.predict(BOB, x)["scores"]), w)
    assert not torch.equal(want[0][:1], want[1])  # fresh noise per request


def test_rows_of_one_coalesced_forward_share_one_draw(make: Make) -> None:
    spec = DefenseSpec(family="feature", sigma=0.5)
    xs = [images(n, seed) for seed, n in enumerate((3, 1, 4))]
    reference = defend(served_mlp(), spec)
    with torch.no_grad():
        want = reference(torch.cat(xs)).split([3, 1, 4])
    svc = make("coalesced", model=defend(served_mlp(), spec), max_rows=8)
    futures = [svc.submit(k, x) for k, x in zip((ALICE, BOB, ALICE), xs)]
    for f, w in zip(futures, want):
        assert torch.equal(f.result(timeout=30).logits, w)


def test_http_clients_at_once_share_a_forward_and_stats_are_off_by_default(tmp_path: Path) -> None:
    spec = DefenseSpec(family="none")
    info = ModelInfo(name="tiny", input_shape=SHAPE, num_classes=K, defense=spec.to_dict())
    secrets = ["key-alice", "key-bob", "key-carol", "key-bob"]
    config = ServeConfig(max_batch=16, max_body=64 * 1024, batch_wait_ms=LONG_MS, batch_max_rows=2 * len(secrets),
                         expose_stats=True)
    app = create_app(defend(served_mlp(), spec), info=info, keys=RING, db=tmp_path / "q.sqlite", config=config)
    results: dict[int, httpx.Response] = {}
    barrier = threading.Barrier(len(secrets))

    def client(i: int) -> None:
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            barrier.wait()
            results[i] = c.post("/v1/predict", json=encode_float32(images(2, i)), headers={"X-API-Key": secrets[i]})

    with BackgroundServer(app) as srv:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(secrets))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with httpx.Client(base_url=srv.url, timeout=10) as c:
            assert c.get("/v1/stats").status_code == 401
            stats = c.get("/v1/stats", headers={"X-API-Key": "key-bob"}).json()
            assert c.get("/v1/usage", headers={"X-API-Key": "key-bob"}).json()["used"] == 4
    assert len(results) == len(secrets)
    for i, r in results.items():
        assert r.status_code == 200, r.text
        assert r.json()["labels"] == served_mlp()(images(2, i)).argmax(1).tolist()
    assert stats["forwards"] == 1 and stats["rows"] == 8 and stats["mean_rows_per_forward"] == 8.0
    assert stats["stages"]["forward"]["count"] == 1 and stats["stages"]["encode"]["count"] == 4
    assert "alice" not in str(stats)  # nothing per key

    off = create_app(defend(served_mlp(), spec), info=info, keys=RING, db=tmp_path / "q2.sqlite",
                     config=ServeConfig(max_batch=16))
    with BackgroundServer(off) as srv, httpx.Client(base_url=srv.url, timeout=10) as c:
        assert c.get("/v1/stats", headers={"X-API-Key": "key-bob"}).status_code == 404


@pytest.mark.parametrize("kw,says", [({"batch_wait_ms": -1.0}, "batch_wait_ms"),
                                     ({"batch_wait_ms": float("nan")}, "batch_wait_ms"),
                                     ({"batch_wait_ms": float("inf")}, "batch_wait_ms"),
                                     ({"batch_max_rows": 0}, "batch_max_rows")])
def test_bad_batching_settings_are_refused(kw, says) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=says):
        ServeConfig(**kw)


def test_cli_batching_flags(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from rfd.cli.main import build_parser, main

    keys = tmp_path / "keys.yaml"
    keys.write_text("keys:\n  sk-test:\n    name: tester\n")
    base = ["serve", "--model", "fmnist-vgg", "--keys", str(keys), "--db", str(tmp_path / "q.sqlite"), "-q"]
    args = build_parser().parse_args(base)
    assert args.batching is True and args.batch_wait_ms == 0.0 and args.batch_max_rows == 256
    args = build_parser().parse_args(base + ["--no-batching", "--batch-wait-ms", "0.5", "--batch-max-rows", "64"])
    assert args.batching is False and args.batch_wait_ms == 0.5 and args.batch_max_rows == 64
    for flags, says in ((["--batch-wait-ms", "-1"], "--batch-wait-ms must be"),
                        (["--batch-wait-ms", "nan"], "--batch-wait-ms must be"),
                        (["--batch-wait-ms", "20000"], "0..10000"),
                        (["--batch-max-rows", "0"], "--batch-max-rows must be >= 1")):
        assert main(base + flags) == 2
        assert says in capsys.readouterr().err


def test_steps_on_new_threads_forward_as_the_calling_thread_does(make: Make) -> None:
    # a new thread does not start with torch.set_num_threads' setting (OpenMP keeps it per thread): unless the
    # service applies it, forwards on the batcher thread or an HTTP worker thread run on the machine's default
    # thread count, with other float rounding
    model = served_mlp()
    xs = [images(6, seed) for seed in range(4)]
    with torch.no_grad():
        want = [model(x) for x in xs]
    batched = make("threads-batched", model=model, wait_ms=0.0)
    for x, w in zip(xs, want):
        assert torch.equal(batched.submit(BOB, x).result(timeout=30).logits, w)
    unbatched = make("threads-unbatched", model=model, batching=False)
    got: list[torch.Tensor] = []
    worker = threading.Thread(target=lambda: got.extend(unbatched.submit(BOB, x).result().logits for x in xs))
    worker.start()
    worker.join(timeout=30)
    assert len(got) == len(want) and all(torch.equal(g, w) for g, w in zip(got, want))
