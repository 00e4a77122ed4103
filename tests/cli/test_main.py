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


def test_a_missing_extra_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path,  # type: ignore[no-untyped-def]
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    for mod in [m for m in sys.modules if m == "rfd.serve" or m.startswith("rfd.serve.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if `pip install .` without the serve extra
    assert main(["serve", "--model", "fmnist-vgg", "--keys", str(tmp_path / "k.yaml"),
                 "--db", str(tmp_path / "q.sqlite")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "rfd serve: error: rfd.serve needs fastapi, from the serve extra: pip install 'rfd[serve]'"


def test_a_file_that_is_not_a_store_is_a_one_line_error(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "notes.txt"
    bad.write_text("not a database")
    assert main(["report", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rfd report: error:") and "not a SQLite results store" in err and "Traceback" not in err
