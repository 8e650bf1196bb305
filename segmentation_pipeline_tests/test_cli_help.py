"""The CLI explains itself: help with defaults for every command it documents, --version, demo-data's report."""

from __future__ import annotations

import argparse

import pytest

from segmentation_pipeline.cli import build_parser, main
from segmentation_pipeline_tests.helpers import write_config

COMMANDS = ["demo-data", "run", "score", "drift", "segments", "export", "report"]


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("segmentation ")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_has_help_and_shows_its_default(command):
    parser = build_parser()
    sub = next(a for a in parser._subparsers._group_actions if a.dest == "command").choices[command]
    # the global options (--config, --verbose, --log-file) are repeated hidden on each command
    shown = [a for a in sub._actions if a.dest != "help" and a.help != argparse.SUPPRESS]
    hidden = {a.dest for a in sub._actions if a.help == argparse.SUPPRESS}
    assert hidden == {"config", "verbose", "log_file"}, hidden
    for action in shown:
        assert action.help, f"{command} {action.option_strings} has no help"
    text = sub.format_help()
    for action in shown:
        if action.default not in (None, False):
            assert f"(default: {action.default})" in text, (command, action.dest)


def test_demo_data_says_what_it_replaced(tmp_path, capsys):
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'c.db'}", f"sqlite:///{tmp_path / 'm.db'}")
    assert main(["--config", str(config), "demo-data", "--rows", "300"]) == 0
    assert "(new table)" in capsys.readouterr().out
    assert main(["--config", str(config), "demo-data", "--rows", "200"]) == 0
    assert "wrote 200 demo customers" in (out := capsys.readouterr().out)
    assert "(replaced the previous 300 rows)" in out


def test_the_command_returns_mains_code_and_leaves_the_heap_to_the_os(monkeypatch):
    import gc

    from segmentation_pipeline import cli

    monkeypatch.setattr(cli, "main", lambda: 3)
    gc.unfreeze()
    try:
        assert cli.console_main() == 3
        assert gc.get_freeze_count() > 0  # the interpreter's final collections have nothing to walk
    finally:
        gc.unfreeze()
