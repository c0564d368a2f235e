"""The ``tumorseg`` command line: dispatches to ``tumorseg_core/commands/<name>.py``.

User errors print one line, ``error: <what is wrong and what to do>``, on stderr and
exit with code 2; nothing is written. Bugs keep their traceback.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import re
import sys
from types import ModuleType
from typing import Optional, Sequence

from tumorseg_core import __version__
from tumorseg_core.errors import CancelledError, TumorSegError

logger = logging.getLogger("tumorseg_core")

# Options whose value may start with '-' (negative LPS coordinates such as -48,43,6).
_NEGATIVE_VALUE_OPTIONS = ("--seed", "--background")
# Commands that run a network: they set torch's thread count once, here at the front door.
_MODEL_COMMANDS = ("segment", "demo", "train", "evaluate", "quantize")
_NUMBER_LIST = re.compile(r"^-?\d*\.?\d+(,-?\d*\.?\d+)*$")
# reStructuredText in the command modules' docstrings, which --help shows as plain text.
_RST_ROLE = re.compile(r":[a-z]+:`(~?)([^`]*)`")
_RST_LITERAL = re.compile(r"``(.+?)``")
_RST_EMPHASIS = re.compile(r"\*\*(.+?)\*\*|(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])|`([^`]+)`")


def plain_text(docstring: Optional[str]) -> str:
    """A docstring as --help shows it: dedented, reStructuredText markup taken off, paragraphs kept.

    ``code`` -> code; :func:`~a.b.name` -> name; :mod:`a.b` -> a.b; **bold** / *emphasis* /
    `title` -> their text; a paragraph ending in ``::`` ends in ``:``.
    """
    text = inspect.cleandoc(docstring or "")

    def role(match: re.Match) -> str:
        tilde, content = match.groups()
        if "<" in content:  # :ref:`title <target>`
            return content.split("<", 1)[0].strip()
        return content.rsplit(".", 1)[-1] if tilde else content

    text = _RST_ROLE.sub(role, text)
    text = _RST_LITERAL.sub(r"\1", text)
    text = _RST_EMPHASIS.sub(lambda m: next(g for g in m.groups() if g is not None), text)
    text = re.sub(r"(\S)::$", r"\1:", text, flags=re.MULTILINE)
    text = re.sub(r"^\s*::$\n?", "", text, flags=re.MULTILINE)
    return text


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions keep their paragraphs and indented examples; option help is wrapped as usual."""


class _OneLineErrorParser(argparse.ArgumentParser):
    """argparse prints usage plus an error; we promise one ``error:`` line and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(2)


def _commands() -> dict[str, ModuleType]:
    # An explicit table, not names resolved from strings at run time.
    from tumorseg_core.commands import (
        demo,
        evaluate,
        import_model,
        import_weights,
        info,
        measure,
        models,
        prune,
        quantize,
        segment,
        train,
    )

    return {
        "segment": segment,
        "demo": demo,
        "models": models,
        "info": info,
        "train": train,
        "evaluate": evaluate,
        "measure": measure,
        "prune": prune,
        "quantize": quantize,
        "import": import_model,
        "import-weights": import_weights,  # alias of "import" for state dicts, original interface
    }


def _join_negative_values(argv: Sequence[str]) -> list[str]:
    """Turn ``--seed -48,43,6`` into ``--seed=-48,43,6`` so argparse does not take it for an option."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if token in _NEGATIVE_VALUE_OPTIONS and i + 1 < len(argv) and _NUMBER_LIST.match(argv[i + 1]):
            out.append(f"{token}={argv[i + 1]}")
            i += 2
            continue
        out.append(token)
        i += 1
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineErrorParser(prog="tumorseg", description="TumorSeg: tumor segmentation for 3D medical images.",
                                 formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"tumorseg {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output: -v for steps, -vv for debug (default: warnings and errors only)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for the network (default: OMP_NUM_THREADS if set, else every core this process may use)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_OneLineErrorParser)
    sub.required = True
    for name, module in _commands().items():
        description = plain_text(module.__doc__)
        summary = description.splitlines()[0] if description else ""
        command_parser = sub.add_parser(name, help=summary, description=description, formatter_class=_HelpFormatter)
        module.add_arguments(command_parser)
        command_parser.set_defaults(_run=module.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(_join_negative_values(argv))
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        if args.command in _MODEL_COMMANDS:
            from tumorseg_core.inference.devices import configure_threads

            configure_threads(args.threads)
        return int(args._run(args) or 0)
    except CancelledError as error:
        sys.stderr.write(f"error: {error}\n")
        return 130
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted; nothing was written\n")
        return 130
    except TumorSegError as error:
        message = " ".join(str(error).split())  # one line, whatever the message held
        sys.stderr.write(f"error: {message}\n")
        return 2
