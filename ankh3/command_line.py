"""What every command's main shares: absl flag parsing whose errors are one line, and `main_guard`,
which turns a UserError into `error: ...` on stderr and the documented exit code.

Exit codes (ankh3.errors): 0 done, 1 the work failed (a store unreachable), 2 bad input (nothing was
started), 3 training diverged; a run stopped by a signal exits 128 + the signal's number.
"""
from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Sequence

from ankh3.errors import ERROR_PREFIX, EXIT_USAGE, UserError, one_line


def fail(message: str, status: int = EXIT_USAGE):
    """One line on stderr and a non-zero exit: how every user error ends."""
    print(f"{ERROR_PREFIX}{message}", file=sys.stderr, flush=True)
    sys.exit(status)


@contextlib.contextmanager
def main_guard():
    """Runs a main's body: a UserError (or a config file that cannot be read) ends as one line."""
    try:
        yield
    except UserError as e:
        fail(one_line(e), e.exit_code)
    except KeyboardInterrupt:  # a second Ctrl-C / SIGTERM while a run was already stopping: the user means it
        fail("interrupted; what was written so far (checkpoints, metrics journal) is kept. Re-run the same "
             "command to resume", 128 + signal.SIGINT)
    except IOError as e:  # ml_collections' "Configuration is not available" for a bad --config path
        missing = find_cause(e, FileNotFoundError)
        if missing is None and "Configuration is not available" not in str(e):
            raise
        why = f"no such file {missing.filename}" if missing is not None else str(innermost(e)).splitlines()[-1].strip()
        fail(f"cannot load the config: {why}; pass --config=experiments/FAMILY.py[:ARG]")


def parse_flags(flag_values, argv: list[str]) -> list[str]:
    """absl parsing, with config errors (bad ARG, unknown --config.KEY) turned into one line."""
    try:
        return flag_values(argv)
    except Exception as e:  # noqa: BLE001 -- config files and overrides raise many kinds
        fail(config_error_message(e, argv))


def config_error_message(error: BaseException, argv: list[str]) -> str:
    from ankh3.config import ConfigError

    cause = find_cause(error, ConfigError)
    if cause is not None:
        return str(cause)
    unknown = unknown_override(argv)
    if unknown is not None:
        return unknown
    last = innermost(error)
    text = str(last).strip().splitlines()
    why = text[-1] if text else ""
    return bad_value(argv, why) or f"{type(last).__name__}: {why} (in {' '.join(argv[1:])})"


def _overrides(argv: list[str]) -> list[tuple[str, str]]:
    """(KEY, VALUE) of each --config.KEY=VALUE."""
    return [tuple(a[len("--config."):].split("=", 1)) for a in argv if a.startswith("--config.") and "=" in a]


def bad_value(argv: list[str], why: str) -> str | None:
    """'--config.KEY=VALUE: ...' for the override whose value the parser could not convert (it quotes the
    value in its message, e.g. "invalid literal for int() with base 10: 'abc'"), with the expected type."""
    for key, value in _overrides(argv):
        if f"'{value}'" not in why:
            continue
        config = _load_config(argv)
        default = _lookup(config, key) if config is not None else None
        expected = f"; expected a {type(default).__name__}, e.g. {default!r}" if default is not None else ""
        return f"--config.{key}={value}: {why}{expected}"
    return None


def _lookup(config, key: str):
    for part in key.split("."):
        if not hasattr(config, "keys") or part not in config:
            return None
        config = config[part]
    return config


def _load_config(argv: list[str]):
    """The --config file's ConfigDict before overrides, or None when it cannot be loaded."""
    spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if spec is None:
        return None
    from ml_collections.config_flags.config_flags import ConfigFileFlagParser

    try:
        return ConfigFileFlagParser("config").parse(spec)
    except Exception:  # noqa: BLE001 -- the config itself is broken; reported by the caller
        return None


def find_cause(error: BaseException | None, kind):
    """The innermost exception of `kind` in the chain (config_flags re-raises a config's
    ValueError as a new one of the same type whose message is the whole traceback)."""
    found, seen = None, set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kind):
            found = error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return found


def innermost(error: BaseException) -> BaseException:
    while (error.__cause__ or error.__context__) is not None:
        error = error.__cause__ or error.__context__
    return error


def unknown_override(argv: list[str]) -> str | None:
    """'unknown config key ...' for the first --config.KEY that the config does not have."""
    from ankh3.config import unknown_key

    config = _load_config(argv)
    if config is None:
        return None
    for arg in argv:
        if not arg.startswith("--config."):
            continue
        key = arg.split("=", 1)[0][len("--config."):]
        why = unknown_key(config, key)
        if why:
            return f"unknown config key '{key}' in {arg.split('=', 1)[0]}: {why}"
    return None


# ---- argparse, for the library's `python -m` converters ----------------------------------------------
class ArgumentParser(argparse.ArgumentParser):
    """Usage errors end as one `error: ...` line and exit EXIT_USAGE (argparse prints two lines)."""

    def error(self, message: str):
        fail(f"{message}; see {self.prog} --help")


def command_parser(prog: str, doc: str, examples: Sequence[str]) -> ArgumentParser:
    """A parser whose --help shows the flags, then the module docstring's first paragraph, then `examples`."""
    return ArgumentParser(prog=prog, description=doc.strip().split("\n\n")[0],
                          epilog="examples:\n" + "\n".join(f"  {e}" for e in examples),
                          formatter_class=argparse.RawDescriptionHelpFormatter)
