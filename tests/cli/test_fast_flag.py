"""`--fast`: parsed once (a bad option is a usage error naming the options), the same results as plain."""

from __future__ import annotations

import json

import pytest

import rfd.cli.attack as attack_cmd
from rfd.cli.main import main


@pytest.fixture
def use_ncm(monkeypatch, ncm):  # type: ignore[no-untyped-def]
    monkeypatch.setattr(attack_cmd, "model_from_args", lambda args, device="cpu": ncm)
    return ncm


def _attack(extra: list[str], capsys) -> dict:  # type: ignore[no-untyped-def,type-arg]
    assert main(["attack", "--model", "fmnist-vgg", "--attack", "square", "--budget", "30", "--n", "10",
                 "--json", "--quiet", *extra]) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def test_fast_attack_matches_plain(use_ncm, capsys) -> None:  # type: ignore[no-untyped-def]
    plain = _attack(["--fast", "plain"], capsys)
    for extra in ([], ["--fast", "inference,channels_last"]):  # [] is the CLI's default, heap
        fast = _attack(extra, capsys)
        for key in ("clean_accuracy", "robust_accuracy", "queries_mean", "queries_median"):
            assert fast[key] == plain[key], (extra, key)


@pytest.mark.parametrize("command", [
    ["attack", "--model", "fmnist-vgg", "--attack", "square", "--budget", "5", "--n", "2"],
    ["run", "s.yaml", "--db", "s.sqlite"], ["demo"], ["reproduce", "table2"],
    ["serve", "--model", "fmnist-vgg", "--keys", "keys.txt", "--db", "q.sqlite"],
])
def test_cli_default_is_heap_and_plain_turns_it_off(command: list[str]) -> None:
    from rfd.cli.common import fast_from_args
    from rfd.cli.main import build_parser
    from rfd.models.fast import FastSpec

    parser = build_parser()
    assert fast_from_args(parser.parse_args(command)) == FastSpec(heap=True)
    assert fast_from_args(parser.parse_args([*command, "--fast", "plain"])) == FastSpec()


@pytest.mark.parametrize("argv, match", [
    (["attack", "--model", "fmnist-vgg", "--attack", "square", "--fast", "jit"], "unknown fast-forward option"),
    (["run", "study.yaml", "--fast", "compile,fastest"], "choose from inference, channels_last, compile"),
])
def test_bad_fast_options_are_usage_errors(argv: list[str], match: str, capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert match in capsys.readouterr().err


def test_fast_with_remote_is_refused(use_ncm, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["attack", "--model", "fmnist-vgg", "--attack", "square", "--budget", "5", "--n", "2",
                 "--remote", "http://127.0.0.1:9", "--api-key", "k", "--fast", "compile", "--quiet"]) == 2
    assert "--fast applies to a local model" in capsys.readouterr().err


def test_remote_attack_without_fast_is_not_refused(use_ncm, capsys) -> None:  # type: ignore[no-untyped-def]
    # the CLI's default (heap) is for local forwards: left out, --remote must get as far as the server (none here)
    assert main(["attack", "--model", "fmnist-vgg", "--attack", "square", "--budget", "5", "--n", "2",
                 "--remote", "http://127.0.0.1:9", "--api-key", "k", "--quiet"]) != 0
    err = capsys.readouterr().err
    assert "--fast" not in err and "127.0.0.1:9" in err
