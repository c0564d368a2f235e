"""The words of `tumorseg --help` (issue #21): every option explained with its default, plain text, clear names."""

from __future__ import annotations

import argparse
import re

import pytest

from tumorseg_core import cli
from tumorseg_core.commands.demo import DEMO_SEED

# The commands whose options these tests hold to the rule (train's flags have their own owner and tests).
CHECKED_COMMANDS = ("segment", "demo", "evaluate", "models", "info", "import", "import-weights")
RST_MARKUP = re.compile(r"``|:(func|mod|class|data|meth|attr|ref):`|::$|\*\*", re.MULTILINE)


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """Every argument a user sees, without -h/--version and hidden aliases."""
    return [a for a in parser._actions
            if not isinstance(a, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction))
            and a.help is not argparse.SUPPRESS]


@pytest.mark.parametrize("command", (None,) + CHECKED_COMMANDS)
def test_every_option_has_help_that_shows_its_default(command):
    parser = cli.build_parser()
    if command is not None:
        parser = _subparsers(parser)[command]
    missing = []
    for action in _options(parser):
        name = "/".join(action.option_strings) or action.dest
        text = (action.help or "") % {"default": action.default, "prog": parser.prog}
        if not text.strip():
            missing.append(f"{name}: no help")
        elif action.option_strings and not action.required and not re.search("default|required", text):
            missing.append(f"{name}: default not shown in {text!r}")
        elif not action.option_strings and action.nargs == "?" and "default" not in text.lower():
            missing.append(f"{name}: default not shown in {text!r}")
    assert not missing, missing


@pytest.mark.parametrize("command", [None, *cli._commands()])
def test_help_is_plain_text(command, capsys):
    argv = ["--help"] if command is None else [command, "--help"]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert not RST_MARKUP.search(out), RST_MARKUP.search(out).group(0)
    assert "usage: tumorseg" in out


def test_plain_text_takes_off_restructuredtext():
    text = cli.plain_text('''``tumorseg x``: see :func:`~tumorseg_core.a.run` and :mod:`tumorseg_core.b`.

    Example::

        tumorseg x --y **now**
    ''')
    assert text == "tumorseg x: see run and tumorseg_core.b.\n\nExample:\n\n    tumorseg x --y now"


def test_evaluate_help_gives_each_mode_its_own_paragraph(capsys):
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--help"])
    out = capsys.readouterr().out
    paragraphs = [p for p in out.split("\n\n")]
    mode1 = [p for p in paragraphs if p.startswith("Mode 1")]
    mode2 = [p for p in paragraphs if p.startswith("Mode 2")]
    assert len(mode1) == 1 and len(mode2) == 1
    assert "--pred" in mode1[0] and "--model" not in mode1[0]
    assert "--model" in mode2[0] and "--data" in mode2[0] and "--pred" not in mode2[0]
    # the example command lines keep their own lines
    assert "\n  tumorseg evaluate --pred" in mode1[0] and "\n  tumorseg evaluate --model" in mode2[0]


def test_demo_phantom_seed_with_hidden_old_spelling(capsys):
    parser = cli.build_parser()
    assert parser.parse_args(["demo"]).phantom_seed == DEMO_SEED
    assert parser.parse_args(["demo", "--phantom-seed", "7"]).phantom_seed == 7
    assert parser.parse_args(["demo", "--seed", "8"]).phantom_seed == 8  # the old spelling still works
    with pytest.raises(SystemExit):
        cli.main(["demo", "--help"])
    out = capsys.readouterr().out
    assert "--phantom-seed" in out and "--seed" not in out.replace("--phantom-seed", "")
    # segment's --seed is a click, and its help says so
    with pytest.raises(SystemExit):
        cli.main(["segment", "--help"])
    segment_help = " ".join(capsys.readouterr().out.split())
    assert "--seed X,Y,Z a click inside the tumor" in segment_help and "Not a random seed" in segment_help
