"""The HTTP server for real: uvicorn on 127.0.0.1 (free port) in a thread, hit with httpx.

Budgets, rate limits, restarts, fresh noise per request, every kind of bad input, and the `rfd serve` glue."""

from __future__ import annotations

import base64
import io
import json
import socket
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import torch

from rfd.defenses import DefenseSpec, defend
from rfd.serve import (
    BackgroundServer,
    KeyRing,
    ModelInfo,
    QueryLog,
    ServeConfig,
    create_app,
    encode_float32,
    encode_png,
)
from tests.helpers.models import SERVED_CLASSES as K
from tests.helpers.models import SERVED_SHAPE as SHAPE
from tests.helpers.models import served_mlp as tiny_model  # a small untrained MLP, 1x8x8 images, 4 classes

KEYS = {
    "key-alice": {"name": "alice", "budget": 20},
    "key-bob": {"name": "bob"},
    "key-slow": {"name": "slow", "per_minute": 5},
    "key-fast": {"name": "fast", "per_second": 1000, "per_minute": 4},
}
ALICE = {"X-API-Key": "key-alice"}
BOB = {"X-API-Key": "key-bob"}


def make_app(db: Path, *, spec: DefenseSpec | None = None, config: ServeConfig | None = None,
             keys: dict | None = None):  # type: ignore[no-untyped-def]
    spec = spec or DefenseSpec(family="none")
    model = defend(tiny_model(), spec)
    info = ModelInfo(name="tiny", input_shape=SHAPE, num_classes=K, classes=("a", "b", "c", "d"),
                     defense=spec.to_dict())
    return create_app(model, info=info, keys=KeyRing.from_mapping({"keys": keys or KEYS}), db=db,
                      config=config or ServeConfig(max_batch=16, max_body=64 * 1024))


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., tuple[BackgroundServer, httpx.Client]]]:
    """Start servers (all stopped at the end): serve(**make_app kwargs) -> (server, client)."""
    started: list[tuple[BackgroundServer, httpx.Client]] = []

    def start(db: Path | None = None, **kw) -> tuple[BackgroundServer, httpx.Client]:  # type: ignore[no-untyped-def]
        srv = BackgroundServer(make_app(db or tmp_path / "q.sqlite", **kw)).start()
        client = httpx.Client(base_url=srv.url, timeout=10)
        started.append((srv, client))
        return srv, client

    yield start
    for srv, client in started:
        client.close()
        srv.stop()


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed))


def f32(x: torch.Tensor) -> dict:
    return encode_float32(x)


def post(client: httpx.Client, body: object, headers: dict | None = None) -> httpx.Response:
    return client.post("/v1/predict", json=body, headers=ALICE if headers is None else headers)


def used(client: httpx.Client, headers: dict = ALICE) -> int:
    r = client.get("/v1/usage", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["used"]


# -- endpoints ------------------------------------------------------------------------------------------------

def test_health_info_and_openapi(serve, tmp_path):  # type: ignore[no-untyped-def]
    spec = DefenseSpec(family="feature", sigma=0.3)
    _, c = serve(spec=spec)
    assert c.get("/healthz").json() == {"status": "ok"}
    info = c.get("/v1/info").json()
    assert info["model"] == "tiny" and info["input_shape"] == [1, 8, 8] and info["num_classes"] == K
    assert info["classes"] == ["a", "b", "c", "d"] and info["output"] == "logits"
    assert info["defense"] == {"family": "feature"}  # sigma stays private unless the operator exposes it
    assert info["max_batch"] == 16 and info["max_body_bytes"] == 64 * 1024
    schema = c.get("/openapi.json").json()
    assert "/v1/predict" in schema["paths"] and "/v1/info" in schema["paths"]
    body = schema["paths"]["/v1/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {ref["$ref"].rsplit("/", 1)[1] for ref in body["oneOf"]} == {"JsonImages", "Float32Images", "PngImages"}
    assert {"JsonImages", "Float32Images", "PngImages", "PredictResponse"} <= set(schema["components"]["schemas"])

    _, c2 = serve(db=tmp_path / "other.sqlite", spec=spec,
                  config=ServeConfig(expose_defense_params=True, max_batch=16, max_body=64 * 1024))
    assert c2.get("/v1/info").json()["defense"]["sigma"] == pytest.approx(0.3)


def test_three_formats_answer_like_the_model(serve):  # type: ignore[no-untyped-def]
    _, c = serve()
    x = images(5)
    want = tiny_model()(x)
    for body in (f32(x), {"format": "json", "images": x.tolist()}):
        r = post(c, body)
        assert r.status_code == 200, r.text
        ans = r.json()
        assert ans["n"] == 5 and ans["output"] == "logits"
        got = torch.tensor(ans["scores"])
        assert torch.equal(got, want)  # float32 -> JSON -> float32 is exact
        assert ans["labels"] == want.argmax(1).tolist()
    x8 = (x * 255).round() / 255  # PNG carries 8-bit pixels
    r = post(c, encode_png(x))
    assert r.status_code == 200, r.text
    assert torch.allclose(torch.tensor(r.json()["scores"]), tiny_model()(x8), atol=1e-5)
    assert used(c) == 15 and r.json()["usage"] == {"name": "alice", "used": 15, "budget": 20, "remaining": 5}


@pytest.mark.parametrize("output", ["logits", "probs", "topk:2", "top1", "rounded:1", "labels"])
def test_output_settings_answer_exactly_what_they_promise(serve, output):  # type: ignore[no-untyped-def]
    _, c = serve(config=ServeConfig(output=output, max_batch=16, max_body=64 * 1024))
    assert c.get("/v1/info").json()["output"] == output
    x = images(3)
    ans = post(c, f32(x)).json()
    want = tiny_model()(x)
    p = want.softmax(1)
    fields = {"logits": "scores", "probs": "scores", "rounded:1": "scores", "topk:2": "top", "top1": "top"}
    # no other field: nothing about the hidden classes travels
    assert set(ans) == {"output", "n", "labels", "usage"} | ({fields[output]} if output in fields else set())
    assert ans["output"] == output and ans["labels"] == want.argmax(1).tolist()
    if output == "logits":
        assert torch.allclose(torch.tensor(ans["scores"]), want, atol=1e-5)
    elif output == "probs":
        assert torch.allclose(torch.tensor(ans["scores"]), p, atol=1e-6)
    elif output == "rounded:1":
        got = torch.tensor(ans["scores"])
        assert torch.allclose(got, torch.round(p, decimals=1), atol=1e-6) and torch.equal(got, torch.round(got, decimals=1))
    elif output in ("topk:2", "top1"):
        k = 2 if output == "topk:2" else 1
        top = p.topk(k, dim=1)
        assert [[c for c, _ in row] for row in ans["top"]] == top.indices.tolist()
        assert torch.allclose(torch.tensor([[v for _, v in row] for row in ans["top"]]), top.values, atol=1e-6)


def test_unknown_output_setting_is_refused_by_name() -> None:
    for bad, says in (("scores", "now called 'logits'"), ("topk", "needs a number"), ("topk:0", "K >= 1"),
                      ("softmax", "unknown output setting")):
        with pytest.raises(ValueError, match=says):
            ServeConfig(output=bad)


def test_fresh_noise_per_request_and_seeded_sequence(serve, tmp_path):  # type: ignore[no-untyped-def]
    spec = DefenseSpec(family="feature", sigma=0.5)
    x = images(2)
    answers = []
    for run in range(2):
        _, c = serve(db=tmp_path / f"run{run}.sqlite", spec=spec)
        answers.append([torch.tensor(post(c, f32(x)).json()["scores"]) for _ in range(3)])
    first = answers[0]
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[1], first[2])  # new noise every request
    assert not torch.equal(first[0], tiny_model()(x))
    for a, b in zip(answers[0], answers[1]):  # same seed, same request sequence: same answers
        assert torch.equal(a, b)


# -- budgets and the query log --------------------------------------------------------------------------------

def test_budget_is_enforced_per_key(serve):  # type: ignore[no-untyped-def]
    _, c = serve()
    assert post(c, f32(images(12))).status_code == 200
    assert post(c, f32(images(8))).status_code == 200
    r = post(c, f32(images(1)))
    assert r.status_code == 403
    assert "budget exhausted" in r.json()["detail"] and "20 of 20" in r.json()["detail"]
    assert r.json()["remaining"] == 0
    assert post(c, f32(images(3)), BOB).status_code == 200  # other keys keep being served
    assert used(c) == 20 and used(c, BOB) == 3


def test_budget_refuses_a_request_that_does_not_fit(serve):  # type: ignore[no-untyped-def]
    _, c = serve()
    assert post(c, f32(images(15))).status_code == 200
    r = post(c, f32(images(6)))
    assert r.status_code == 403 and "5 left" in r.json()["detail"]
    assert post(c, f32(images(5))).status_code == 200  # an exact fit passes; nothing was charged for the refusal
    assert used(c) == 20


def test_budget_survives_restart_and_log_records_answers(serve, tmp_path):  # type: ignore[no-untyped-def]
    db = tmp_path / "persist.sqlite"
    srv, c = serve(db=db)
    labels = []
    for n in (4, 3):
        labels += post(c, f32(images(n, seed=n))).json()["labels"]
    post(c, f32(images(2)), BOB)
    srv.stop()

    _, c = serve(db=db)
    assert used(c) == 7 and used(c, BOB) == 2
    assert post(c, f32(images(14))).status_code == 403
    assert post(c, f32(images(13))).status_code == 200
    assert used(c) == 20

    log = QueryLog(db)
    try:
        recs = log.records("alice")
        assert [r.n_images for r in recs] == [4, 3, 13]
        assert list(recs[0].classes + recs[1].classes) == labels
        assert all(r.output == "logits" and len(r.key_id) == 12 and "key-alice" not in r.key_id for r in recs)
        assert log.totals() == {"alice": 20, "bob": 2}
    finally:
        log.close()


# -- rate limits ----------------------------------------------------------------------------------------------

def test_rate_limit_answers_429_with_retry_after(serve):  # type: ignore[no-untyped-def]
    _, c = serve()
    slow = {"X-API-Key": "key-slow"}  # 5 images per minute
    assert post(c, f32(images(3)), slow).status_code == 200
    r = post(c, f32(images(3)), slow)
    assert r.status_code == 429
    assert int(r.headers["Retry-After"]) >= 50  # the first 3 images leave the window only after ~60 s
    assert r.json()["retry_after"] > 50 and "5 images per minute" in r.json()["detail"]
    assert post(c, f32(images(2)), slow).status_code == 200  # what still fits in the window passes
    assert post(c, f32(images(1)), slow).status_code == 429
    r = post(c, f32(images(6)), slow)  # can never fit in the window
    assert r.status_code == 413 and "smaller batches" in r.json()["detail"]
    assert post(c, f32(images(4)), BOB).status_code == 200  # others are not limited by it
    assert used(c, slow) == 5


def test_rate_limit_takes_the_strictest_window(serve):  # type: ignore[no-untyped-def]
    _, c = serve()
    fast = {"X-API-Key": "key-fast"}  # 1000 per second but only 4 per minute
    assert post(c, f32(images(4)), fast).status_code == 200
    r = post(c, f32(images(1)), fast)
    assert r.status_code == 429 and "per minute" in r.json()["detail"]


# -- bad input ------------------------------------------------------------------------------------------------

def _png(size: tuple[int, int], mode: str) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _f32_raw(values: list[float], shape: list[int]) -> dict:
    data = base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
    return {"format": "f32", "shape": shape, "data": data}


GOOD = images(1)[0].tolist()
BAD_BODIES: list[tuple[str, bytes, int, str]] = [
    ("malformed json", b'{"format": "json", "images": [', 400, "not valid JSON"),
    ("not utf-8", b"\xff\xfe\x00", 400, "not valid JSON"),
    ("empty body", b"", 400, "empty request body"),
    ("deep nesting", b"[" * 30000 + b"]" * 30000, 400, "not valid JSON"),
    ("not an object", b"[1, 2]", 422, "JSON object"),
    ("missing format", json.dumps({"images": [GOOD]}).encode(), 422, "'format' must be one of"),
    ("unknown format", json.dumps({"format": "jpeg", "images": []}).encode(), 422, "'format' must be one of"),
    ("unknown field", json.dumps({"format": "json", "images": [GOOD], "x": 1}).encode(), 422, "x: Extra inputs"),
    ("no images", json.dumps({"format": "json", "images": []}).encode(), 422, "no images"),
    ("wrong shape", json.dumps({"format": "json", "images": [[[[0.5] * 7] * 8]]}).encode(), 422,
     "shape (N, 1, 8, 8)"),
    ("ragged", json.dumps({"format": "json", "images": [[[[0.5] * 8] * 7 + [[0.5] * 3]]]}).encode(), 422,
     "equal lengths"),
    ("strings", json.dumps({"format": "json", "images": [[[["a"] * 8] * 8]]}).encode(), 422, "numbers"),
    ("booleans", json.dumps({"format": "json", "images": [[[[True] * 8] * 8]]}).encode(), 422, "torch.bool"),
    ("nan", json.dumps({"format": "json", "images": [[[[float("nan")] * 8] * 8]]}).encode(), 422, "NaN"),
    ("infinity", b'{"format": "json", "images": [[[' + b",".join([b"[" + b",".join([b"Infinity"] * 8) + b"]"] * 8)
     + b"]]]}", 422, "NaN or infinite"),
    ("above 1", json.dumps({"format": "json", "images": [[[[1.5] * 8] * 8]]}).encode(), 422, "[0, 1]"),
    ("negative", json.dumps({"format": "json", "images": [[[[-0.1] * 8] * 8]]}).encode(), 422, "[0, 1]"),
    ("huge int", json.dumps({"format": "json", "images": [[[[10**40] * 8] * 8]]}).encode(), 422, "Overflow"),
    ("f32 wrong dtype", json.dumps({**_f32_raw([0.5] * 64, [1, 1, 8, 8]), "dtype": "float64"}).encode(), 422,
     "float32"),
    ("f32 wrong shape", json.dumps(_f32_raw([0.5] * 192, [1, 3, 8, 8])).encode(), 422, "shape must be"),
    ("f32 3-d shape", json.dumps(_f32_raw([0.5] * 64, [1, 8, 8])).encode(), 422, "shape must be"),
    ("f32 short data", json.dumps(_f32_raw([0.5] * 63, [1, 1, 8, 8])).encode(), 422, "needs 256"),
    ("f32 bad base64", json.dumps({"format": "f32", "shape": [1, 1, 8, 8], "data": "!!!"}).encode(), 422,
     "base64"),
    ("f32 nan", json.dumps(_f32_raw([float("nan")] * 64, [1, 1, 8, 8])).encode(), 422, "NaN"),
    ("f32 inf", json.dumps(_f32_raw([float("inf")] * 64, [1, 1, 8, 8])).encode(), 422, "infinite"),
    ("f32 out of range", json.dumps(_f32_raw([2.0] * 64, [1, 1, 8, 8])).encode(), 422, "[0, 1]"),
    ("png wrong size", json.dumps({"format": "png", "images": [_png((9, 8), "L")]}).encode(), 422, "9x8"),
    ("png wrong mode", json.dumps({"format": "png", "images": [_png((8, 8), "RGB")]}).encode(), 422, "mode 'RGB'"),
    ("png 16-bit", json.dumps({"format": "png", "images": [_png((8, 8), "I;16")]}).encode(), 422, "mode"),
    ("png not png", json.dumps({"format": "png", "images": [base64.b64encode(b"GIF89a....").decode()]}).encode(),
     422, "not a readable"),
    ("png not a string", json.dumps({"format": "png", "images": [[1, 2]]}).encode(), 422, "images.0"),
    ("too many images", json.dumps(_f32_raw([0.5] * 64 * 17, [17, 1, 8, 8])).encode(), 413, "at most 16"),
    ("too many json images", json.dumps({"format": "json", "images": [0] * 17}).encode(), 413, "at most 16"),
]


@pytest.mark.parametrize("body,status,message", [b[1:] for b in BAD_BODIES], ids=[b[0] for b in BAD_BODIES])
def test_bad_input_gets_a_clear_4xx(serve, body, status, message):  # type: ignore[no-untyped-def]
    _, c = serve()
    r = c.post("/v1/predict", content=body, headers={**ALICE, "content-type": "application/json"})
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert message in r.json()["detail"]
    assert used(c) == 0  # a refused request costs nothing
    assert post(c, f32(images(2))).status_code == 200  # and the server keeps serving


def test_missing_or_unknown_key(serve):  # type: ignore[no-untyped-def]
    _, c = serve()
    for headers, message in (({}, "missing API key"), ({"X-API-Key": "nope"}, "unknown API key"),
                             ({"X-API-Key": ""}, "missing API key")):
        for r in (post(c, f32(images(1)), headers), c.get("/v1/usage", headers=headers)):
            assert r.status_code == 401 and message in r.json()["detail"]
    assert used(c) == 0


def test_too_large_body_is_refused_before_reading(serve):  # type: ignore[no-untyped-def]
    _, c = serve()
    big = b"x" * (64 * 1024 + 1)
    r = c.post("/v1/predict", content=big, headers=ALICE)
    assert r.status_code == 413 and "over this server's limit of 65536 bytes" in r.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the server counts as it reads
        for _ in range(100):
            yield b" " * 4096

    r = c.post("/v1/predict", content=chunks(), headers=ALICE)
    assert r.status_code == 413 and "limit of 65536 bytes" in r.json()["detail"]
    assert post(c, f32(images(1))).status_code == 200


def test_stalled_body_times_out_while_others_are_served(serve):  # type: ignore[no-untyped-def]
    srv, c = serve(config=ServeConfig(max_batch=16, max_body=64 * 1024, body_timeout=0.5))
    with socket.create_connection((srv.host, srv.port), timeout=10) as s:
        s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nX-API-Key: key-alice\r\n"
                  b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"format\": ")
        assert post(c, f32(images(2))).status_code == 200  # the stalled client blocks no one
        reply = s.recv(4096).decode()
    assert reply.startswith("HTTP/1.1 408") and "not received within 0.5 s" in reply


# -- the `rfd serve` command ----------------------------------------------------------------------------------

def test_cli_builds_a_defended_server(tmp_path):  # type: ignore[no-untyped-def]
    from rfd.cli.main import build_parser
    from rfd.cli.serve import build_app
    from rfd.models import create_model, save_checkpoint

    ckpt = tmp_path / "vgg.safetensors"
    save_checkpoint(create_model("fmnist-vgg", pretrained=False), ckpt)
    keys = tmp_path / "keys.yaml"
    keys.write_text("keys:\n  sk-test:\n    name: tester\n    budget: 100\n    per_second: 50\n")
    args = build_parser().parse_args([
        "serve", "--model", "fmnist-vgg", "--checkpoint", str(ckpt), "--defense", "feature", "--sigma", "0.2",
        "--output", "probs", "--keys", str(keys), "--db", str(tmp_path / "q.sqlite"), "--max-batch", "8", "-q",
    ])
    app = build_app(args)
    with BackgroundServer(app) as srv, httpx.Client(base_url=srv.url) as c:
        info = c.get("/v1/info").json()
        assert info["model"] == "fmnist-vgg" and info["input_shape"] == [1, 28, 28] and info["output"] == "probs"
        assert info["defense"] == {"family": "feature"} and info["classes"][0] == "T-shirt/top"
        x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
        r1, r2 = (c.post("/v1/predict", json=encode_float32(x), headers={"X-API-Key": "sk-test"}) for _ in range(2))
        p1, p2 = torch.tensor(r1.json()["scores"]), torch.tensor(r2.json()["scores"])
        assert torch.allclose(p1.sum(1), torch.ones(3), atol=1e-5)
        assert not torch.equal(p1, p2)  # the defense is on: fresh noise per request
        assert c.get("/v1/usage", headers={"X-API-Key": "sk-test"}).json() == {
            "name": "tester", "used": 6, "budget": 100, "remaining": 94, "per_second": 50, "per_minute": None}


def test_cli_refuses_bad_settings(tmp_path, capsys):  # type: ignore[no-untyped-def]
    from rfd.cli.main import main

    keys = tmp_path / "keys.yaml"
    keys.write_text("keys:\n  sk-test:\n    name: tester\n    budgett: 100\n")
    rc = main(["serve", "--model", "fmnist-vgg", "--keys", str(keys), "--db", str(tmp_path / "q.sqlite"), "-q"])
    assert rc == 2
    err = capsys.readouterr().err  # refused for the misspelt key setting, named with the allowed ones
    assert "unknown settings ['budgett']" in err and "budget" in err.split("allowed:", 1)[1]
