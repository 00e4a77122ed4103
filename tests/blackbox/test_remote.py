"""RemoteBlackBox against a real server on 127.0.0.1: same answers as a local black box, attacks run unchanged,
and the server's per-key count equals what the attack reports (charged queries + verification forwards)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from rfd.attacks import make_attack
from rfd.blackbox import LocalBlackBox
from rfd.blackbox.remote import RemoteBlackBox, RemoteError
from rfd.defenses import DefenseSpec, defend
from rfd.serve import BackgroundServer, KeyRing, ModelInfo, ServeConfig, create_app
from tests.helpers.models import SERVED_CLASSES as K
from tests.helpers.models import SERVED_SHAPE as SHAPE
from tests.helpers.models import served_mlp as tiny_model  # a small untrained MLP, 1x8x8 images, 4 classes

KEYS = {
    "k-attacker": {"name": "attacker"},
    "k-evaluator": {"name": "evaluator"},
    "k-small": {"name": "small", "budget": 30},
    "k-limited": {"name": "limited", "per_second": 6},
    "k-minute": {"name": "minute", "per_minute": 6},
}


def data(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """n images with the labels the undefended tiny model gives them (so they start clean-correct)."""
    x = torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return x, tiny_model()(x).argmax(1)


class Served:
    def __init__(self, tmp: Path, spec: DefenseSpec, config: ServeConfig) -> None:
        self.spec = spec
        info = ModelInfo(name="tiny", input_shape=SHAPE, num_classes=K, defense=spec.to_dict())
        self.app = create_app(defend(tiny_model(), spec), info=info, keys=KeyRing.from_mapping({"keys": KEYS}),
                              db=tmp / f"q-{id(self)}.sqlite", config=config)
        self.server = BackgroundServer(self.app).start()
        self.url = self.server.url

    def used(self, name: str) -> int:
        return self.app.state.service._used[name]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator:  # type: ignore[type-arg]
    started: list[Served] = []

    def start(spec: DefenseSpec | None = None, **config) -> Served:  # type: ignore[no-untyped-def]
        s = Served(tmp_path, spec or DefenseSpec(family="none"), ServeConfig(**{"max_batch": 64, **config}))
        started.append(s)
        return s

    yield start
    for s in started:
        s.server.stop()


def test_answers_equal_a_local_black_box(serve):  # type: ignore[no-untyped-def]
    srv = serve(max_batch=4)  # 10 images travel as 3 requests
    x, _ = data(10)
    local = LocalBlackBox(tiny_model(), budget=5, max_batch=4)  # same chunks, so bit-identical float results
    with RemoteBlackBox(srv.url, "k-attacker", budget=5) as remote:
        assert remote.num_classes == K and remote.max_batch == 4 and remote.output == "logits"
        for bb in (local, remote):
            bb.start(10)
        idx = torch.arange(10)
        assert torch.equal(remote.scores(x, idx), local.scores(x, idx))
        assert torch.equal(remote.labels(x, idx), local.labels(x, idx))
        assert torch.equal(remote.queries, torch.full((10,), 2))
        assert remote.sent == {"attack": 20, "verify": 0} and srv.used("attacker") == 20
    with RemoteBlackBox(srv.url, "k-attacker", output="probs") as remote:  # softmax of the served logits
        remote.start(10)
        assert torch.allclose(remote.scores(x, idx), tiny_model()(x).softmax(1), atol=1e-6)


def test_square_attack_same_result_remote_and_local(serve):  # type: ignore[no-untyped-def]
    srv = serve()
    x, y = data()
    attack = make_attack("square", norm="linf", eps=0.1, budget=40, seed=0)
    local = attack.run(LocalBlackBox(tiny_model(), verify=3), x, y)
    with RemoteBlackBox(srv.url, "k-attacker", verify=3) as remote:
        res = attack.run(remote, x, y)
        assert torch.equal(res.success, local.success) and torch.equal(res.queries, local.queries)
        assert torch.equal(res.x_adv, local.x_adv)
        assert (res.verification_forwards + res.reevaluation_forwards) == (local.verification_forwards + local.reevaluation_forwards)
        assert srv.used("attacker") == int(remote.queries.sum()) + (remote.verification_forwards + remote.reevaluation_forwards)


@pytest.mark.parametrize("evaluator", [False, True], ids=["one-key", "evaluator-key"])
def test_server_count_equals_attack_accounting(serve, evaluator):  # type: ignore[no-untyped-def]
    srv = serve(spec=DefenseSpec(family="feature", sigma=0.3))
    x, y = data()
    attack = make_attack("square", norm="linf", eps=0.1, budget=30, seed=1, eot=2)
    with RemoteBlackBox(srv.url, "k-attacker", verify=5,
                        verify_api_key="k-evaluator" if evaluator else None) as bb:
        res = attack.run(bb, x, y)
        charged = int(bb.queries.sum())
        assert (res.verification_forwards + res.reevaluation_forwards) == (bb.verification_forwards + bb.reevaluation_forwards) > 0
        assert bb.sent == {"attack": charged, "verify": (bb.verification_forwards + bb.reevaluation_forwards)}
        if evaluator:  # the attacker's key pays exactly the attack's queries
            assert srv.used("attacker") == charged and srv.used("evaluator") == (res.verification_forwards + res.reevaluation_forwards)
            assert bb.usage()["used"] == charged and bb.usage("verify")["used"] == (res.verification_forwards + res.reevaluation_forwards)
        else:
            assert srv.used("attacker") == charged + (res.verification_forwards + res.reevaluation_forwards)
            assert srv.used("evaluator") == 0
    assert charged > 0 and int(res.queries.max()) <= 30
    assert bool((res.linf <= 0.1 + 1e-6).all())


def test_decision_attack_on_a_label_only_server(serve):  # type: ignore[no-untyped-def]
    srv = serve(spec=DefenseSpec(family="input", sigma=0.02), output="labels")
    x, y = data(4)
    with pytest.raises(ValueError, match="labels only"):
        RemoteBlackBox(srv.url, "k-attacker")
    with RemoteBlackBox(srv.url, "k-attacker", access="labels", verify=3) as bb:
        bb.start(1)
        with pytest.raises(PermissionError):  # the scores themselves are refused, not the start
            bb.scores(x[:1], torch.zeros(1, dtype=torch.int64))
        res = make_attack("rays", eps=0.1, budget=40, seed=0).run(bb, x, y)
        assert srv.used("attacker") == int(bb.queries.sum()) + (res.verification_forwards + res.reevaluation_forwards)
        assert int(bb.queries.max()) <= 40


def test_budget_exhausted_mid_attack_raises_the_server_message(serve):  # type: ignore[no-untyped-def]
    srv = serve()
    x, y = data()
    with RemoteBlackBox(srv.url, "k-small", verify=1) as bb:
        with pytest.raises(RemoteError, match="query budget exhausted") as err:
            make_attack("square", norm="linf", eps=0.1, budget=100, seed=0).run(bb, x, y)
        assert err.value.status == 403
        assert srv.used("small") == bb.sent["attack"] + bb.sent["verify"] <= 30


def test_rate_limited_key_waits_and_chunks(serve):  # type: ignore[no-untyped-def]
    srv = serve()
    x, _ = data(12)
    with RemoteBlackBox(srv.url, "k-limited", budget=2) as bb:
        assert bb.max_batch == 6  # a request never holds more than the key's per-second window
        bb.start(12)
        idx = torch.arange(12)
        s1 = bb.scores(x, idx)  # 2 requests of 6: the second waits for the first to leave the 1 s window
        s2 = bb.scores(x, idx)
        assert torch.equal(s1, s2) and srv.used("limited") == 24
    with RemoteBlackBox(srv.url, "k-minute", rate_limit_wait=5) as bb:  # ~60 s to wait: more than it accepts
        bb.start(12)
        bb.scores(x[:6], idx[:6])
        with pytest.raises(RemoteError, match="rate limit") as err:
            bb.scores(x[:6], idx[:6])
        assert err.value.status == 429 and srv.used("minute") == 6


def test_clear_errors_for_unreachable_server_and_bad_key(serve):  # type: ignore[no-untyped-def]
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RemoteError, match="cannot reach the rfd server") as err:
        RemoteBlackBox(f"http://127.0.0.1:{port}", "k-attacker", timeout=2)
    assert err.value.status is None
    srv = serve()
    with pytest.raises(RemoteError, match="unknown API key") as err:
        RemoteBlackBox(srv.url, "wrong-key")
    assert err.value.status == 401
    with pytest.raises(RemoteError, match="401.*unknown API key"):
        RemoteBlackBox(srv.url, "k-attacker", verify_api_key="wrong-key")
    srv2 = serve(output="probs")
    with pytest.raises(ValueError, match="answers probs; output logits cannot be computed"):
        RemoteBlackBox(srv2.url, "k-attacker", output="logits")


def test_rfd_attack_remote(tmp_path, capsys):  # type: ignore[no-untyped-def]
    """`rfd attack --remote URL --api-key K`: the attack runs through the server, whose count for the key equals
    the images the command reports sending (charged queries + success checks)."""
    import json

    from rfd.cli.main import main
    from rfd.models import create_model, save_checkpoint

    ckpt = tmp_path / "vgg.safetensors"
    torch.manual_seed(0)
    save_checkpoint(create_model("fmnist-vgg", pretrained=False), ckpt)
    spec = DefenseSpec(family="feature", sigma=0.05)
    model = create_model("fmnist-vgg", checkpoint=ckpt)
    app = create_app(defend(model, spec), info=ModelInfo(name="fmnist-vgg", input_shape=(1, 28, 28), num_classes=10,
                                                         defense=spec.to_dict()),
                     keys=KeyRing.from_mapping({"keys": KEYS}), db=tmp_path / "q.sqlite")
    common = ["attack", "--model", "fmnist-vgg", "--checkpoint", str(ckpt), "--attack", "square", "--budget", "12",
              "--n", "10", "--eps", "0.05", "--verify", "3", "--json", "-q"]
    with BackgroundServer(app) as srv:
        rc = main(common + ["--remote", srv.url, "--api-key", "k-attacker", "--verify-api-key", "k-evaluator"])
        assert rc == 0
        out = json.loads(capsys.readouterr().out)
        sent = out["remote"]["images_sent"]
        used = app.state.service._used
        assert out["remote"]["server"]["defense"] == {"family": "feature"}
        assert used["attacker"] == sent["attack"] > 0 and used["evaluator"] == sent["verify"]
        assert sent["verify"] == out["verification_forwards"] + out["reevaluation_forwards"]
        assert sent["attack"] <= 12 * 10
        # refusals end as one clear error line, not a traceback
        assert main(common + ["--remote", srv.url, "--api-key", "k-small"]) == 2
        assert "query budget exhausted" in capsys.readouterr().err
        assert main(common + ["--remote", srv.url, "--api-key", "nope"]) == 2
        assert "unknown API key" in capsys.readouterr().err
        assert main(common + ["--remote", srv.url, "--api-key", "k-attacker", "--defense", "input",
                              "--sigma", "0.1"]) == 2
        assert "lives in the server" in capsys.readouterr().err


def test_output_settings_over_http_match_the_local_black_box(serve):  # type: ignore[no-untyped-def]
    x, _ = data(5)
    idx = torch.arange(5)
    for served, wanted in (("topk:2", None), ("logits", "top1"), ("probs", "rounded:1"), ("rounded:1", None)):
        srv = serve(output=served)
        with RemoteBlackBox(srv.url, "k-attacker", output=wanted) as remote:
            local = LocalBlackBox(tiny_model(), output=wanted or served)
            assert remote.output == (wanted or served) and remote.server_output == served
            for bb in (local, remote):
                bb.start(5)
            got, want = remote.scores(x, idx), local.scores(x, idx)
            assert torch.equal(torch.isnan(got), torch.isnan(want))
            assert torch.allclose(got.nan_to_num(), want.nan_to_num(), atol=1e-6)
            assert torch.equal(remote.labels(x, idx), local.labels(x, idx))
    srv = serve(output="top1")
    with pytest.raises(ValueError, match="answers top1; output probs cannot be computed"):
        RemoteBlackBox(srv.url, "k-attacker", output="probs")
