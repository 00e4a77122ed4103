"""Seeded training of reference models on Fashion-MNIST (clean, or PGD adversarial training)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rfd.data.dataset import ImageDataset
from rfd.models.classifier import ImageClassifier

__all__ = ["EpochStats", "TrainConfig", "TrainResult", "evaluate_accuracy", "random_shift_flip", "train_classifier"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Hyper-parameters of :func:`train_classifier`."""

    epochs: int = 15  # passes over the training set
    batch_size: int = 128
    lr: float = 2e-3  # peak AdamW learning rate (linear warm-up for one epoch, then cosine decay)
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    augment: bool = True  # random +-2 pixel shifts and horizontal flips
    seed: int = 0
    adv_eps: float = 0.0  # > 0: PGD adversarial training (Madry et al.) in the l_inf ball of this radius
    adv_steps: int = 7  # PGD steps per training batch
    adv_step_size: float | None = None  # default 2.5 * eps / steps

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"epochs, batch_size and lr must be positive, got {self.epochs}, {self.batch_size}, {self.lr}")
        if self.adv_eps < 0 or self.adv_steps < 1:
            raise ValueError(f"adv_eps must be >= 0 and adv_steps >= 1, got {self.adv_eps}, {self.adv_steps}")


@dataclass
class EpochStats:
    epoch: int
    train_loss: float
    train_accuracy: float
    test_accuracy: float
    seconds: float


@dataclass
class TrainResult:
    config: dict[str, object]
    epochs: list[EpochStats] = field(default_factory=list)

    @property
    def test_accuracy(self) -> float:
        return self.epochs[-1].test_accuracy if self.epochs else float("nan")


def random_shift_flip(x: torch.Tensor, gen: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Per-image random translation by up to ``pad`` pixels (zero fill) and horizontal flip, batched.

    x: (N, C, H, W) -> (N, C, H, W). Draws come from ``gen`` (on x's device)."""
    n, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=x.device)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device)).view(n, 1, h, 1).expand(n, c, h, w)
    cols = (ox[:, None] + torch.arange(w, device=x.device)).view(n, 1, 1, w).expand(n, c, h, w)
    out = xp[torch.arange(n, device=x.device).view(n, 1, 1, 1), torch.arange(c, device=x.device).view(1, c, 1, 1), rows, cols]
    flip = torch.rand(n, generator=gen, device=x.device) < 0.5
    return torch.where(flip.view(n, 1, 1, 1), out.flip(3), out)


@torch.no_grad()
def evaluate_accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``model`` on images (N, C, H, W) in [0, 1] with labels (N,), in [0, 1]."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    correct = 0
    for i in range(0, images.shape[0], batch_size):
        pred = model(images[i: i + batch_size].to(dev)).argmax(1).cpu()
        correct += int((pred == labels[i: i + batch_size]).sum())
    model.train(was_training)
    return correct / images.shape[0]


def _pgd_linf_train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """Inner maximisation of PGD adversarial training: random start, ``adv_steps`` signed-gradient steps."""
    eps = cfg.adv_eps
    step = cfg.adv_step_size if cfg.adv_step_size is not None else 2.5 * eps / cfg.adv_steps
    delta = (torch.rand(x.shape, generator=gen, device=x.device) * 2 - 1) * eps
    xa = (x + delta).clamp(0, 1)
    for _ in range(cfg.adv_steps):
        xa.requires_grad_(True)
        loss = F.cross_entropy(model(xa), y)
        (g,) = torch.autograd.grad(loss, xa)
        xa = torch.min(torch.max(xa.detach() + step * g.sign(), x - eps), x + eps).clamp(0, 1)
    return xa.detach()


def train_classifier(
    model: ImageClassifier,
    train: ImageDataset,
    test: ImageDataset,
    config: TrainConfig,
    *,
    device: str | torch.device = "cpu",
    progress: bool = True,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``train``; report test accuracy after every epoch.

    Deterministic for ``config.seed`` on a given device and thread count (weights init and data order both
    come from the seed)."""
    torch.manual_seed(config.seed)  # weight init of any lazily created params; data order uses `gen` below
    gen = torch.Generator(device=device).manual_seed(config.seed)
    cpu_gen = torch.Generator().manual_seed(config.seed)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    n = len(train)
    steps_per_epoch = math.ceil(n / config.batch_size)
    total = steps_per_epoch * config.epochs

    def lr_at(step: int) -> float:
        if step < steps_per_epoch:
            return config.lr * (step + 1) / steps_per_epoch
        t = (step - steps_per_epoch) / max(1, total - steps_per_epoch)
        return config.lr * 0.5 * (1 + math.cos(math.pi * t))

    result = TrainResult(config=asdict(config))
    step = 0
    for epoch in range(1, config.epochs + 1):
        t0 = time.perf_counter()
        order = torch.randperm(n, generator=cpu_gen)
        loss_sum, correct = 0.0, 0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}/{config.epochs}", disable=not progress, leave=False)
        for b in bar:
            idx = order[b * config.batch_size: (b + 1) * config.batch_size]
            x = train.images[idx].to(device)
            y = train.labels[idx].to(device)
            if config.augment:
                x = random_shift_flip(x, gen)
            if config.adv_eps > 0:
                model.eval()  # BN statistics of the clean pass, as in Madry et al.'s reference code
                x = _pgd_linf_train(model, x, y, config, gen)
                model.train()
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            loss_sum += float(loss.detach()) * y.shape[0]
            correct += int((logits.argmax(1) == y).sum())
            if b % 50 == 0:
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        acc = evaluate_accuracy(model, test.images, test.labels)
        model.train()
        stats = EpochStats(epoch, loss_sum / n, correct / n, acc, time.perf_counter() - t0)
        result.epochs.append(stats)
        log.info("epoch %d: loss %.4f train acc %.4f test acc %.4f (%.0fs)", epoch, stats.train_loss,
                 stats.train_accuracy, acc, stats.seconds)
        if on_epoch is not None:
            on_epoch(stats)
    model.eval()
    return result


def train_reference(
    name: str,
    out: str,
    config: TrainConfig,
    *,
    data_dir: str | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> TrainResult:
    """Train registry model ``name`` from scratch on the full Fashion-MNIST training set (60k images), evaluate
    on the full test set (10k) after each epoch, and save the weights with their history to ``out``."""
    from rfd import __version__
    from rfd.data.fashion_mnist import load_fashion_mnist
    from rfd.models.checkpoints import save_checkpoint
    from rfd.models.registry import get_entry

    entry = get_entry(name)
    if entry.members:
        raise ValueError(f"{name!r} is a model set of {', '.join(entry.members)}: train its members one by one")
    torch.manual_seed(config.seed)
    model = entry.build()
    train = load_fashion_mnist("train", data_dir)
    test = load_fashion_mnist("test", data_dir)
    result = train_classifier(model, train, test, config, device=device, progress=progress, on_epoch=on_epoch)
    save_checkpoint(model, out, meta={
        "model": name, "rfd_version": __version__, "config": result.config,
        "test_accuracy": result.test_accuracy, "history": [asdict(e) for e in result.epochs],
    })
    return result
