"""Fixtures of the `rfd` command tests."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from rfd.cli.main import main


@pytest.fixture
def run_json(capsys: pytest.CaptureFixture[str]) -> Callable[[list[str]], Any]:
    """``run(argv)``: run ``rfd argv`` (which must succeed) and return the one JSON object it printed."""

    def run(argv: list[str]) -> Any:
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert len(out.strip().splitlines()) == 1  # exactly one JSON object on stdout
        return json.loads(out)

    return run
