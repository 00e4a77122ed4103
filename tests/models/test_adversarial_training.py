"""PGD adversarial training (Madry et al.): the inner maximisation, its effect on a task with robust and
non-robust features, the `rfd train --adv pgd` wiring, and (slow) the shipped fmnist-vgg-at checkpoint."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rfd.attacks.pgd import PGD
from rfd.blackbox import LocalBlackBox
from rfd.data.dataset import ImageDataset
from rfd.models.classifier import ImageClassifier
from rfd.models.training import TrainConfig, _pgd_linf_train, train_classifier


def _linear_classifier(seed: int = 0) -> ImageClassifier:
    torch.manual_seed(seed)
    return ImageClassifier(nn.Sequential(nn.Flatten(), nn.Linear(16, 2)), mean=(0.5,), std=(0.25,),
                           input_shape=(1, 4, 4), num_classes=2)


def _robust_vs_weak_features(n: int, seed: int) -> ImageDataset:
    """Tsipras et al.'s toy task on 1x4x4 images: pixel 0 = 0.5 +- 0.35 agrees with the label 90% of the time
    (robust: an l_inf budget of 0.12 cannot flip it); the 15 other pixels are N(0.5 +- 0.06, 0.1^2) (together
    ~99% accurate, but an l_inf shift of 0.12 turns every one of them to the other class)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    s = (2 * y - 1).float()
    agree = torch.where(torch.rand(n, generator=g) < 0.9, s, -s)
    x = torch.empty(n, 16)
    x[:, 0] = 0.5 + 0.35 * agree
    x[:, 1:] = 0.5 + 0.06 * s[:, None] + 0.1 * torch.randn(n, 15, generator=g)
    return ImageDataset(x.clamp(0, 1).view(n, 1, 4, 4), y, ("a", "b"), name="toy")


def test_pgd_train_inner_loop_in_ball_box_seeded_and_raises_loss() -> None:
    model = _linear_classifier().eval()
    data = _robust_vs_weak_features(64, 1)
    x, y = data.images, data.labels
    cfg = TrainConfig(adv_eps=0.1, adv_steps=5)
    xa = _pgd_linf_train(model, x, y, cfg, torch.Generator().manual_seed(3))
    xb = _pgd_linf_train(model, x, y, cfg, torch.Generator().manual_seed(3))
    assert torch.equal(xa, xb)
    assert (xa - x).abs().max() <= 0.1 + 1e-6
    assert xa.min() >= 0 and xa.max() <= 1
    assert not xa.requires_grad
    with torch.no_grad():
        assert F.cross_entropy(model(xa), y) > F.cross_entropy(model(x), y) + 0.05


def test_train_config_rejects_bad_adversarial_settings() -> None:
    with pytest.raises(ValueError, match="adv_eps"):
        TrainConfig(adv_eps=-0.1)
    with pytest.raises(ValueError, match="adv_steps"):
        TrainConfig(adv_eps=0.1, adv_steps=0)


def test_adversarial_training_buys_robustness_on_toy_task() -> None:
    train, test = _robust_vs_weak_features(2000, 0), _robust_vs_weak_features(500, 1)

    def fit(adv_eps: float) -> ImageClassifier:
        model = _linear_classifier(seed=0)
        cfg = TrainConfig(epochs=4, batch_size=100, lr=0.05, weight_decay=0.0, augment=False, seed=0,
                          adv_eps=adv_eps, adv_steps=4)
        train_classifier(model, train, test, cfg, progress=False)
        return model

    clean, robust = fit(0.0), fit(0.12)
    attack = PGD(norm="linf", eps=0.12, steps=10, seed=0)
    r_clean = attack.run(LocalBlackBox(clean), test.images, test.labels)
    r_at = attack.run(LocalBlackBox(robust), test.images, test.labels)
    assert r_clean.clean_accuracy > 0.95  # the weak features are worth using when nobody attacks
    assert r_clean.robust_accuracy() < 0.3
    assert r_at.robust_accuracy() > 0.8  # AT falls back on the robust pixel (90% accurate)
    assert r_at.robust_accuracy() > r_clean.robust_accuracy() + 0.5


def test_cli_train_adv_pgd_builds_the_config(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import rfd.cli.train as cli_train
    from rfd.cli.main import main
    from rfd.models.training import TrainResult

    seen: dict[str, object] = {}

    def fake_train_reference(name: str, out: str, config: TrainConfig, **kw: object) -> TrainResult:
        seen.update(name=name, out=out, config=config)
        return TrainResult(config={})

    monkeypatch.setattr(cli_train, "train_reference", fake_train_reference)
    out = str(tmp_path / "m.safetensors")
    assert main(["train", "fmnist-vgg-at", "--out", out, "--adv", "pgd", "--eps", "0.1", "--adv-steps", "3",
                 "--epochs", "3", "--quiet", "--json"]) == 0
    cfg = seen["config"]
    assert isinstance(cfg, TrainConfig)
    assert (cfg.adv_eps, cfg.adv_steps, cfg.epochs) == (0.1, 3, 3) and seen["name"] == "fmnist-vgg-at"
    assert main(["train", "fmnist-vgg", "--out", out, "--eps", "0.1", "--quiet", "--json"]) == 0
    assert seen["config"].adv_eps == 0.0  # type: ignore[attr-defined]  # --eps alone does not switch AT on


def test_fmnist_vgg_at_is_registered_with_the_vgg_architecture() -> None:
    from rfd.models.registry import create_model, get_entry, list_models

    assert "fmnist-vgg-at" in list_models("fmnist-*")
    entry = get_entry("fmnist-vgg-at")
    assert entry.checkpoint == "fmnist-vgg-at.safetensors" and entry.dataset == "fashion-mnist"
    at = create_model("fmnist-vgg-at", pretrained=False)
    ref = create_model("fmnist-vgg", pretrained=False)
    shapes = {k: v.shape for k, v in ref.state_dict().items()}
    assert {k: v.shape for k, v in at.state_dict().items()} == shapes


@pytest.mark.slow
def test_shipped_fmnist_vgg_at_checkpoint(bundled_eval, shipped_checkpoint) -> None:  # type: ignore[no-untyped-def]
    from rfd.models.checkpoints import read_checkpoint_meta
    from rfd.models.registry import create_model

    path = shipped_checkpoint("fmnist-vgg-at")
    assert path.stat().st_size < 5 * 2**20
    meta = read_checkpoint_meta(path)
    assert meta["model"] == "fmnist-vgg-at" and meta["config"]["adv_eps"] > 0
    model = create_model("fmnist-vgg-at")
    with torch.no_grad():
        acc = (model(bundled_eval.images).argmax(1) == bundled_eval.labels).float().mean()
    assert acc > 0.75
