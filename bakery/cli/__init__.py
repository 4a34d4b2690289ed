"""Glue between invoke tasks and the library: settings, errors, signals, output.

Every task body runs inside `command()`: a BakeryError becomes one line on stderr and
a non-zero exit; any other exception too, with the traceback only under
`invoke --debug` (or BAKERY_DEBUG=1).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import traceback
from pathlib import Path

from bakery.errors import BakeryError, ConfigError, Interrupted


def debug_enabled() -> bool:
    return logging.getLogger().isEnabledFor(logging.DEBUG) or os.environ.get("BAKERY_DEBUG") == "1"


def settings_from(ctx):
    from bakery.config.settings import Settings

    cfg = ctx.config.get("bakery", {}) or {}
    # the directory holding tasks.py: recipes/ and .bakery/ are found relative to it
    prefix = getattr(ctx.config, "_project_prefix", None)
    project = Path(prefix) if prefix else Path.cwd()
    return Settings.load(dict(cfg), project_dir=project)


def required(**flags) -> None:
    """Refuse a task's missing flags in one line. Tasks take no positional arguments (invoke
    would fill them with anything, `--help` included), so invoke passes None for a flag not given."""
    missing = [f"--{name.replace('_', '-')}" for name, value in flags.items() if value in (None, "")]
    if missing:
        raise ConfigError(f"missing {' and '.join(missing)} (see: invoke --help TASK)")


def parse_vars(pairs: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--var {pair!r}: expected KEY=VALUE")
        if key in out:
            raise ConfigError(f"--var {key}: given twice")
        out[key] = value
    return out


def parse_variables(pairs: list[str] | None, var_file: str | None) -> dict[str, str]:
    """`--var KEY=VALUE ...` over the values of `--var-file FILE` (YAML)."""
    from bakery.config.variables import given_variables

    return given_variables(Path(var_file) if var_file else None, parse_vars(pairs))


def parse_build_id(value: str) -> str:
    """A build id as bake prints it; refused when it is not one plain name (it names a key directory)."""
    from bakery.housekeeping.cleanup import PLAIN_ID

    if not PLAIN_ID.fullmatch(value):
        raise ConfigError(f"--build-id {value!r}: not a build id (like b-20260101120000-0a1b2c, as bake prints it)")
    return value


def parse_int(flag: str, value, minimum: int | None = None) -> int:
    """A whole-number flag (e.g. `--keep 3`), refused in one line when it is not one."""
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ConfigError(f"{flag} {value!r}: expected a whole number") from None
    if abs(number) > 1_000_000:
        raise ConfigError(f"{flag} {number}: out of range")
    if minimum is not None and number < minimum:
        raise ConfigError(f"{flag} {number}: at least {minimum}")
    return number


# C0 and C1 controls and the Unicode line and paragraph separators: what a terminal or a log
# reader (Python's splitlines too) may take for a line break
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


def one_line(message: str) -> str:
    """The message as one line: a control character in a name the user gave (a path or a value
    with a newline in it) is shown escaped, as Python writes it, never as a line break."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], message)


#: the progress sinks this command opened (`reporter`): closed when it ends, however it ends; a JSON
#: one also says how it ended
_sinks: list = []
LOG_FORMAT_HELP = "progress on stderr: text (lines, a live display on a terminal) or json (one event per line)"


def reporter(settings, prefix: str = "", kind: str = "recipe", log_format: str | None = None, live: bool = True):
    """The command's progress reporter, on stderr as the settings (or `--log-format`) ask: plain
    lines with heartbeats, a live display on a terminal (not when `live` is False: `--json`, whose
    reader is a machine), or JSON events."""
    from bakery.config.settings import checked_log_format
    from bakery.progress import Reporter, sink_for

    chosen = checked_log_format(log_format, "--log-format") if log_format else settings.log_format
    sink = sink_for(chosen, settings.heartbeat, live=live)
    _sinks.append(sink)
    return Reporter(prefix=prefix, sink=sink, kind=kind)


def _close_sinks() -> None:
    for sink in _sinks:
        try:
            sink.close()  # a live display gives the terminal back before the last lines
        except Exception:  # noqa: BLE001 - one that cannot close must not hide why the command ended
            pass


def _ended(message: str) -> str | None:
    """The command's one-line error, or None when its progress is JSON: then the error is an
    event too, and stderr stays one JSON object per line."""
    from bakery.progress import JsonSink

    said = [sink for sink in _sinks if isinstance(sink, JsonSink)]
    for sink in said:
        sink.error(message)
    return None if said else message


@contextlib.contextmanager
def command():
    from invoke.exceptions import Exit

    from bakery.signals import interruptible

    _sinks.clear()
    try:
        try:
            with interruptible():
                yield
        finally:
            _close_sinks()
    except KeyboardInterrupt:
        raise Exit(_ended("error: interrupted; cleaned up what this run created"),
                   code=Interrupted.exit_code) from None
    except BakeryError as exc:
        if debug_enabled():
            traceback.print_exc()
        raise Exit(_ended(f"error: {one_line(exc.message)}"), code=exc.exit_code) from None
    except Exit:
        raise
    except Exception as exc:  # noqa: BLE001 - the one place that turns bugs into one line
        if debug_enabled():
            traceback.print_exc()
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise Exit(_ended(f"error: internal error: {type(exc).__name__}: {first} "
                          "(run `invoke --debug ...` for the traceback)"), code=70) from None


def emit(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()


def exec_argv(argv: list[str]) -> None:
    """Become this program (`invoke ssh` hands the terminal to the OpenSSH client); its exit is ours."""
    from invoke.exceptions import Exit

    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        raise Exit(f"error: cannot run {argv[0]}: {exc.strerror or exc}", code=127) from None
