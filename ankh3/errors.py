"""The one base class of errors meant for the user, and the exit codes every command shares.

A library error whose message is written for the user (what was wrong, where, how to fix it)
subclasses UserError; a launch/ main prints it as one `error: ...` line and exits EXIT_USAGE.
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1     # the work itself failed (a store unreachable, a run that crashed)
EXIT_USAGE = 2      # bad input: a flag, a config key, a file; nothing was started
EXIT_NONFINITE = 3  # training diverged (a non-finite loss)
ERROR_PREFIX = "error: "  # how every one-line error starts on stderr


class UserError(Exception):
    """An error whose message is the whole story for the user: print it, no traceback."""

    exit_code = EXIT_USAGE


def one_line(error: BaseException) -> str:
    """The first line of an error's message, or its class name when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
