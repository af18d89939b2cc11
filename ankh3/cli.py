"""Command lines of the library's `python -m` tools: argparse with the exit codes and one-line errors of ankh3.errors."""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from ankh3.errors import ERROR_PREFIX, EXIT_OK, EXIT_USAGE, UserError, one_line


class ArgumentParser(argparse.ArgumentParser):
    """Usage errors end as one `error: ...` line and exit EXIT_USAGE (argparse prints two lines)."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{ERROR_PREFIX}{message}; see {self.prog} --help\n")


def command_parser(prog: str, doc: str, examples: Sequence[str]) -> ArgumentParser:
    """A parser whose --help shows the flags, then the module's first paragraph, then `examples`."""
    return ArgumentParser(prog=prog, description=doc.strip().split("\n\n")[0],
                          epilog="examples:\n" + "\n".join(f"  {e}" for e in examples),
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def run_command(work: Callable[[], str]) -> int:
    """Runs `work` (which returns the line to print when done); a UserError is one line on stderr."""
    try:
        done = work()
    except UserError as e:
        print(f"{ERROR_PREFIX}{one_line(e)}", file=sys.stderr, flush=True)
        return e.exit_code
    print(done, flush=True)
    return EXIT_OK
