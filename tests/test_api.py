"""The flat public API: ``import rfd`` reaches every building block, and the README's example runs verbatim."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import rfd

ROOT = Path(__file__).resolve().parents[1]


def test_flat_api_exports_the_building_blocks() -> None:
    for name in ("defend", "calibrate", "load_model", "load_dataset", "select_data", "DataSpec", "DefenseSpec",
                 "LocalBlackBox", "RemoteBlackBox", "make_attack", "randomized_accuracy", "FAMILIES"):
        assert name in rfd.__all__ and hasattr(rfd, name), name
    from rfd import attacks

    # every registered attack is exported by class name from rfd.attacks, with its config
    for name in rfd.list_attacks():
        cls = attacks.ATTACKS[name]
        assert getattr(attacks, cls.__name__) is cls and cls.__name__ in attacks.__all__, name
        assert getattr(attacks, cls.config_class.__name__) is cls.config_class, name
    assert len(rfd.list_attacks()) == 17


def _readme_api_example() -> str:
    text = (ROOT / "README.md").read_text()
    block = text.split("## The Python API", 1)[1]
    return re.findall(r"```python\n(.*?)\n```", block, flags=re.DOTALL)[0]


def test_readme_example_uses_the_flat_api_only() -> None:
    imports = [line for line in _readme_api_example().splitlines() if line.startswith(("import ", "from "))]
    assert imports and all(line.startswith("from rfd import ") for line in imports), imports
    assert len(imports) <= 3


@pytest.mark.slow
def test_readme_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    exec(compile(_readme_api_example(), "README.md", "exec"), {})  # noqa: S102 - the project's own README
    out = capsys.readouterr().out
    assert "paper" in out and "strict" in out and "broken images passed the 9-vote check by luck" in out
