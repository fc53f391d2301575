"""`vidcap doctor`: versions, the machine and a self-test of decoding, to paste into a bug report."""

from __future__ import annotations

import argparse
import sys
import tempfile

HELP = "print versions, the machine and a decoding self-test (paste its output into a bug report)"
EXAMPLE = """
  vidcap doctor
  vidcap doctor > doctor.txt 2>&1     # the whole report, failed checks included, for an issue

Exit code 0 when every check passes, 1 when one fails (one line each on stderr).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options: the report is the same everywhere, so that reports compare."""


def run(args: argparse.Namespace) -> int:
    from vidcap.doctor import environment, missing_requirements, self_test

    rows = environment()
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    print("self-test:")
    with tempfile.TemporaryDirectory(prefix="vidcap-doctor-") as folder:
        checks = missing_requirements() + self_test(folder)
    for check in checks:
        if check.ok:
            print(f"  ok  {check.name}: {check.detail}")
    failed = [check for check in checks if not check.ok]
    for check in failed:
        print(f"vidcap doctor: {check.name}: {check.detail}", file=sys.stderr)
    return 1 if failed else 0
