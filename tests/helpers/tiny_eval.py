"""Shared helpers of the eval tests: a tiny classifier (factory + checkpoint) and a tiny attack, written as an
importable module into a temporary folder, so studies (and `rfd run` subprocesses, and Ray workers) can name
them as ``rfd_tiny:build`` and ``rfd_tiny:RandomSign``.

Tests get the folder from the ``tiny_eval`` fixture (tests/conftest.py), which also puts it on ``sys.path`` for
the session (and takes it off again); tests/eval/test_tiny_helpers.py checks that the helpers work."""

from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

TINY_MODULE = textwrap.dedent('''
    """Tiny model and attack for rfd's eval tests (written by tests/helpers/tiny_eval.py)."""
    from dataclasses import dataclass

    import torch
    from torch import nn

    from rfd.attacks.base import Attack, AttackConfig
    from rfd.models.classifier import ImageClassifier


    class MLP(nn.Module):
        def __init__(self, hidden=32):
            super().__init__()
            self.fc1 = nn.Linear(784, hidden)
            self.act = nn.ReLU()
            self.fc2 = nn.Linear(hidden, 10)

        def forward(self, x):
            return self.fc2(self.act(self.fc1(x.flatten(1))))


    def build(hidden=32):
        return ImageClassifier(MLP(hidden), mean=(0.2860,), std=(0.3530,), input_shape=(1, 28, 28), num_classes=10,
                               head="fc2")


    @dataclass(frozen=True, kw_only=True)
    class RandomSignConfig(AttackConfig):
        step: float = 1.0  # proposals are x0 + step * eps * random signs


    class RandomSign(Attack):
        """Random vertices of the l_inf ball: keep the best margin, report any proposal that looks adversarial."""

        name = "randomsign"
        access = "scores"
        norms = ("linf",)
        config_class = RandomSignConfig

        def _run(self, state, gen):
            x0 = state.x0
            best = x0.clone()
            best_loss = torch.full((state.n,), float("inf"), device=x0.device)
            idx = state.active_idx(1)
            if idx.numel():
                best_loss[idx] = state.margin(x0[idx], idx)
            while True:
                idx = state.active_idx(1)
                if idx.numel() == 0:
                    return
                sign = torch.randint(0, 2, x0[idx].shape, generator=gen, device=x0.device).float() * 2 - 1
                cand = state.project(x0[idx] + self.config.step * self.config.eps * sign, idx)
                loss = state.margin(cand, idx)
                better = loss < best_loss[idx]
                best[idx[better]] = cand[better]
                best_loss[idx[better]] = loss[better]
                state.report(cand, idx, loss < 0)
                state.keep(best[idx], idx)


    class LabelFlip(Attack):
        """Label-only random search (decision-based), for tables of decision attacks."""

        name = "labelflip"
        access = "labels"
        norms = ("linf",)

        def _run(self, state, gen):
            x0 = state.x0
            while True:
                idx = state.active_idx(1)
                if idx.numel() == 0:
                    return
                sign = torch.randint(0, 2, x0[idx].shape, generator=gen, device=x0.device).float() * 2 - 1
                cand = state.project(x0[idx] + self.config.eps * sign, idx)
                lab = state.labels(cand, idx)
                state.report(cand, idx, lab != state.y[idx])
                state.keep(cand, idx)
''')


MODULE_NAME = "rfd_tiny"


def load_tiny_module(folder: Path) -> ModuleType:
    """``rfd_tiny`` loaded from ``folder`` as a private copy (neither ``sys.path`` nor ``sys.modules`` changes)."""
    spec = importlib.util.spec_from_file_location(f"_{MODULE_NAME}_private", folder / f"{MODULE_NAME}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_tiny(folder: Path) -> tuple[Path, Path]:
    """Write ``rfd_tiny.py`` and a trained checkpoint into ``folder``; returns (module folder, checkpoint path).

    The MLP is trained (seeded, full batch) on the bundled calib split, so it is ~80% accurate on the eval split
    and attacks have work to do. Studies import ``rfd_tiny`` by name: put ``folder`` on ``sys.path`` (the
    ``tiny_eval`` fixture does) or on ``PYTHONPATH`` of a subprocess."""
    from rfd.data.bundled import load_bundled
    from rfd.models.checkpoints import save_checkpoint

    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{MODULE_NAME}.py").write_text(TINY_MODULE)
    rfd_tiny = load_tiny_module(folder)

    torch.manual_seed(0)
    model = rfd_tiny.build()
    calib = load_bundled("calib")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(calib.images), calib.labels)
        loss.backward()
        opt.step()
    ckpt = folder / "tiny.safetensors"
    save_checkpoint(model.eval(), ckpt)
    return folder, ckpt


def tiny_study(ckpt: Path, **overrides: Any) -> dict[str, Any]:
    """A small study dict on the tiny model: none / feature / input noise x the tiny score attack."""
    d: dict[str, Any] = {
        "name": "tiny",
        "n": 40,
        "seed": 3,
        "budget": 60,
        "checkpoints": [10, 30, 60],
        "chunk_size": 10,
        "verify": 3,
        "models": [{"name": "tiny", "factory": "rfd_tiny:build", "checkpoint": str(ckpt)}],
        "defenses": ["none", {"family": "feature", "sigmas": [0.5]}, {"family": "input", "sigmas": [0.05]}],
        "attacks": [{"name": "rfd_tiny:RandomSign", "eps": 0.1, "label": "randomsign"}],
        "data": {"calib_images": 200},
        "calibration": {"draws": 2, "tol": 0.01},
    }
    d.update(overrides)
    return d
