"""The options of `vidcap prepare NAME`: each dataset module declares its own (`add_arguments(parser)`), the ones
every dataset shares are added here, and `option_defaults` reads a module's defaults so that Python callers of
`vidcap.datasets.prepare` get the same values as the command line without repeating them."""

from __future__ import annotations

import argparse
from types import ModuleType
from typing import Any

from vidcap.errors import UsageError

# Options of every dataset; `prepare` takes them as its own keyword arguments.
COMMON_OPTIONS = ("out", "min_count", "max_vocab")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_prepare_arguments(parser: argparse.ArgumentParser, module: ModuleType) -> None:
    """The dataset's own options, then the ones every dataset shares."""
    module.add_arguments(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    parser.add_argument("--min-count", type=positive_int, default=2, metavar="N",
                        help="keep words seen at least N times in the train captions (default 2)")
    parser.add_argument("--max-vocab", type=int, default=None, metavar="V",
                        help="cap the vocabulary size V, special tokens included (default: no cap)")


def prepare_parser(module: ModuleType) -> argparse.ArgumentParser:
    """The parser of `vidcap prepare NAME` for one dataset module."""
    parser = argparse.ArgumentParser(prog=f"vidcap prepare {module.NAME}", description=module.HELP,
                                     epilog="example:\n" + module.EXAMPLE.strip("\n"),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_prepare_arguments(parser, module)
    return parser


def dataset_options(module: ModuleType, given: dict[str, Any]) -> dict[str, Any]:
    """The module's own options: `given` over the defaults its `add_arguments` declares. UsageError for an option
    it does not declare, or a required one left out (named as on the command line)."""
    parser = argparse.ArgumentParser(add_help=False)
    module.add_arguments(parser)
    actions = {action.dest: action for action in parser._actions}  # noqa: SLF001 (argparse has no public listing)
    unknown = sorted(set(given) - set(actions))
    if unknown:
        raise UsageError(f"{module.NAME}: unknown option(s) {', '.join(unknown)} "
                         f"(choose from {', '.join(actions)})")
    missing = [action.option_strings[0] for dest, action in actions.items() if action.required and dest not in given]
    if missing:
        raise UsageError(f"{module.NAME}: {', '.join(missing)} required")
    return {dest: given.get(dest, action.default) for dest, action in actions.items()}


def fractions(text: str) -> tuple[float, float, float]:
    """argparse type: "train,val,test" fractions (vidcap.datasets.splits.parse_fractions)."""
    from vidcap.datasets.splits import parse_fractions

    try:
        return parse_fractions(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
