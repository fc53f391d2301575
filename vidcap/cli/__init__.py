"""The `vidcap` command line: one module per subcommand, each thin over the library functions.

Every subcommand module defines `HELP` (one line), `EXAMPLE` (shown at the end of its --help),
`add_arguments(parser)` and `run(args) -> int` (the exit code). Modules are imported lazily so that
`vidcap --help` does not pay for torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from vidcap.errors import VidcapError, disk_error

# name -> (module, one-line help). The order is the order of the pipeline.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("vidcap.cli.prepare", "annotations + videos -> captions.csv, videos.csv, vocab.json"),
    "extract": ("vidcap.cli.extract", "videos -> feature store (global 2-D and local 3-D CNN features)"),
    "verify": ("vidcap.cli.verify", "check a feature store's files against their checksums; list bad and missing"),
    "fit": ("vidcap.cli.train", "train a captioner (LightningCLI; --config YAML files from configs/)"),
    "validate": ("vidcap.cli.train", "run validation of a checkpoint (LightningCLI)"),
    "test": ("vidcap.cli.train", "run the test loop of a checkpoint (LightningCLI)"),
    "evaluate": ("vidcap.cli.evaluate", "decode a split with a checkpoint; BLEU-4/METEOR/CIDEr/perplexity"),
    "score": ("vidcap.cli.score", "score predictions against references with the coco-caption metrics"),
    "caption": ("vidcap.cli.caption", "caption video files with a checkpoint, optionally explain them"),
    "app": ("vidcap.cli.app", "serve a checkpoint: a browser page and an HTTP API to caption videos"),
    "demo": ("vidcap.cli.demo", "the whole pipeline on the built-in synthetic dataset"),
    "ablate": ("vidcap.cli.ablate", "train and evaluate Table 1's variants, print the table"),
    "doctor": ("vidcap.cli.doctor", "versions, the machine and a decoding self-test, for bug reports"),
}

# Subcommands that hand their arguments to LightningCLI untouched.
LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vidcap",
        description="Video description with temporal soft attention (Yao et al., ICCV 2015).",
        epilog="Run `vidcap SUBCOMMAND --help` for the options and an example of each.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")
    for name, (_, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _subcommand_parser(name: str, module) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"vidcap {name}",
        description=module.HELP,
        epilog="example:\n" + module.EXAMPLE.strip("\n"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    module.add_arguments(parser)
    return parser


def _flush_stdout() -> None:
    try:
        sys.stdout.flush()
    except OSError as error:
        if error.filename is None:
            error.filename = "<standard output>"
        raise


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _build_parser()
    # Split "vidcap [-v] SUBCOMMAND rest..." by hand so each subcommand owns its own parser.
    verbose = False
    while argv and argv[0] in ("-v", "--verbose"):
        verbose = True
        argv.pop(0)
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        top.print_usage(sys.stderr)
        print(f"vidcap: error: unknown subcommand {name!r} (choose from {', '.join(SUBCOMMANDS)})", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    module = importlib.import_module(SUBCOMMANDS[name][0])
    try:
        if name in LIGHTNING_SUBCOMMANDS:
            code = module.run_lightning(name, rest)
        else:
            code = module.run(_subcommand_parser(name, module).parse_args(rest))
        _flush_stdout()  # now, so that a full disk under `> out.json` is reported here, not at exit
        return code
    except VidcapError as error:
        print(f"vidcap {name}: error: {error}", file=sys.stderr)
        return error.exit_code
    except OSError as error:  # a full disk, a read-only folder: one line naming the path (vidcap.errors.disk_error)
        disk = disk_error(error)
        if disk is None:
            raise
        print(f"vidcap {name}: error: {disk}", file=sys.stderr)
        return disk.exit_code
    except KeyboardInterrupt:
        print(f"vidcap {name}: interrupted", file=sys.stderr)
        return 130
