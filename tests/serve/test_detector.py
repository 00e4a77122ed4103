"""A stateful detector in `rfd serve`: per key, flagged images charged and unanswered, bans, state that survives a
restart, /v1/info, and the remote black box reading refusals."""

from __future__ import annotations

from pathlib import Path

import httpx
import torch

from rfd.blackbox import RemoteBlackBox
from rfd.defenses import DefenseSpec, defend
from rfd.serve import BackgroundServer, KeyRing, ModelInfo, QueryLog, ServeConfig, create_app, encode_float32
from tests.helpers.models import SERVED_CLASSES as K
from tests.helpers.models import SERVED_SHAPE as SHAPE
from tests.helpers.models import served_mlp as tiny_model

KEYS = {"key-alice": {"name": "alice", "budget": 50}, "key-bob": {"name": "bob"}}
ALICE = {"X-API-Key": "key-alice"}
BOB = {"X-API-Key": "key-bob"}
# 8x8 images: windows of 8 values, at least 20 of the kept hashes shared with one past image flag it
DETECTOR = "blacklight:window=8,match=20"


def _server(db: Path, detector: str = DETECTOR, seed: int | None = 5) -> tuple[BackgroundServer, httpx.Client]:
    spec = DefenseSpec(family="none")
    info = ModelInfo(name="tiny", input_shape=SHAPE, num_classes=K, defense=spec.to_dict())
    app = create_app(defend(tiny_model(), spec), info=info, keys=KeyRing.from_mapping({"keys": KEYS}), db=db,
                     config=ServeConfig(max_batch=16, max_body=64 * 1024), detector=detector, detector_seed=seed)
    srv = BackgroundServer(app).start()
    return srv, httpx.Client(base_url=srv.url, timeout=10)


def _imgs(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed))


def _post(client: httpx.Client, x: torch.Tensor, headers: dict) -> httpx.Response:
    return client.post("/v1/predict", json=encode_float32(x), headers=headers)


def test_flagged_images_are_charged_logged_and_unanswered(tmp_path: Path) -> None:
    srv, c = _server(tmp_path / "q.sqlite")
    try:
        a, b = _imgs(1, 0), _imgs(1, 1)
        first = _post(c, a, ALICE).json()
        assert first["rejected"] == [False] and first["labels"][0] >= 0
        both = _post(c, torch.cat([a, b]), ALICE).json()  # a again: flagged, refused; b is new
        assert both["flagged"] == [True, False] and both["rejected"] == [True, False]
        assert both["labels"][0] == -1 and both["scores"][0] is None and len(both["scores"][1]) == K
        assert both["usage"]["used"] == 3 and both["usage"]["flagged"] == 1  # the refused image is charged
        assert _post(c, a, BOB).json()["flagged"] == [False]  # another key, another history
        info = c.get("/v1/info").json()["detector"]
        assert info["kind"] == "blacklight" and info["window"] == 8 and not any("salt" in k for k in info)
    finally:
        c.close()
        srv.stop()
    log = QueryLog(tmp_path / "q.sqlite")
    assert [r.classes[0] for r in log.records("alice")][1] == -1
    assert log.flag_totals()["alice"] == 1
    log.close()


def test_history_and_bans_survive_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "q.sqlite"
    a = _imgs(1, 3)
    srv, c = _server(db, seed=None)  # the salt seed is stored in the log the first time
    _post(c, a, ALICE)
    c.close()
    srv.stop()
    srv, c = _server(db, seed=None)
    try:
        assert _post(c, a, ALICE).json()["flagged"] == [True]  # its pre-restart history is back
    finally:
        c.close()
        srv.stop()
    srv, c = _server(db, detector=DETECTOR + ",action=ban")
    try:
        r = _post(c, torch.cat([a, _imgs(1, 9)]), BOB)
        assert r.json()["rejected"] == [False, False]
        r = _post(c, torch.cat([a, _imgs(1, 10)]), BOB)  # a flagged: it and everything after it refused, ban
        assert r.status_code == 200 and r.json()["rejected"] == [True, True]
        r = _post(c, _imgs(1, 11), BOB)
        assert r.status_code == 403 and r.json()["banned"] is True
        assert _post(c, _imgs(1, 12), ALICE).status_code == 200  # only bob is banned
    finally:
        c.close()
        srv.stop()
    srv, c = _server(db, detector=DETECTOR + ",action=ban")
    try:
        assert _post(c, _imgs(1, 13), BOB).status_code == 403  # the ban survives the restart too
        assert c.get("/v1/usage", headers=BOB).json()["banned"] is True
    finally:
        c.close()
        srv.stop()


def test_remote_black_box_reads_refusals(tmp_path: Path) -> None:
    srv, c = _server(tmp_path / "q.sqlite")
    try:
        bb = RemoteBlackBox(srv.url, "key-bob", budget=10)
        bb.start(2)
        x = _imgs(2, 20)
        bb.scores(x, torch.tensor([0, 1]))
        s = bb.scores(x[:1], torch.tensor([0]))
        assert torch.isnan(s).all() and bb.last_rejected.tolist() == [True]
        bb.close()
    finally:
        c.close()
        srv.stop()


def test_a_schema_1_query_log_is_migrated(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "old.sqlite"
    con = sqlite3.connect(db)
    con.executescript("""
        CREATE TABLE queries (id INTEGER PRIMARY KEY, time REAL NOT NULL, key_name TEXT NOT NULL,
            key_id TEXT NOT NULL, n_images INTEGER NOT NULL CHECK (n_images > 0), output TEXT NOT NULL,
            classes TEXT NOT NULL);
        INSERT INTO queries (time, key_name, key_id, n_images, output, classes) VALUES (1.0, 'alice', 'x', 2,
            'logits', '1,2');
        PRAGMA user_version = 1;
    """)
    con.close()
    log = QueryLog(db)
    assert log.totals() == {"alice": 2} and log.flag_totals() == {"alice": 0} and log.bans() == set()
    assert log.records("alice")[0].classes == (1, 2)
    log.close()
