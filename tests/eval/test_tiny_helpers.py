"""The tiny model and attack of tests/helpers/tiny_eval.py work: the eval tests' numbers rest on them."""

from __future__ import annotations

from pathlib import Path

import torch


def test_tiny_model_is_accurate_and_attack_runs(tiny_eval: tuple[Path, Path]) -> None:
    from rfd.blackbox.local import LocalBlackBox
    from rfd.data.bundled import load_bundled
    from rfd.models.checkpoints import load_checkpoint

    _, ckpt = tiny_eval
    import rfd_tiny  # type: ignore[import-not-found]  # importable by name: the fixture put it on sys.path

    model = load_checkpoint(rfd_tiny.build(), ckpt).eval()
    ev = load_bundled("eval")
    with torch.no_grad():
        acc = float((model(ev.images).argmax(1) == ev.labels).float().mean())
    assert acc > 0.7, acc
    atk = rfd_tiny.RandomSign(eps=0.1, budget=50, seed=0)
    res = atk.run(LocalBlackBox(model, verify=1), ev.images[:20], ev.labels[:20])
    assert 0 < int(res.success.sum()) <= int(res.clean_correct.sum())
    assert bool((res.linf <= 0.1 + 1e-5).all())
