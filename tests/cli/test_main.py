"""The `rfd` command: every planned command is present and `--help` is useful on its own."""

from __future__ import annotations

import importlib.util

import pytest

from rfd.cli.main import COMMANDS, build_parser, main


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_module_exists(command: str) -> None:
    assert importlib.util.find_spec(f"rfd.cli.{command.replace('-', '_')}") is not None, command


def test_top_level_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert command in out


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert f"rfd {command}" in out and len(out.splitlines()) >= 3


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    assert "COMMAND" in capsys.readouterr().out


def test_parser_builds_without_side_effects(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    build_parser()
    assert list(tmp_path.iterdir()) == []  # nothing written at import or parser construction
